import NIOCore
import Synchronization

/// A sparse, thread-safe block device held in memory, for SCSI and transport tests.
///
/// Data lives in chunks of `MemoryBlockDevice.chunkBlocks` blocks, created on
/// first write; each chunk keeps a bitmap of the blocks that are mapped, so
/// `allocationStatus` is exact at block granularity: a block is mapped from its
/// first write until it is unmapped. Unmapped blocks read as zeros (LBPRZ).
///
/// A fault hook lets a test make chosen requests fail (MEDIUM ERROR on a range,
/// no space left) without a real device.
public final class MemoryBlockDevice: BlockDevice {
    /// Blocks per chunk (one bit of a chunk's `UInt64` bitmap each).
    public static let chunkBlocks = 64

    /// A request as the fault hook sees it (byte offsets and lengths).
    public enum Request: Sendable, Equatable {
        case read(offset: UInt64, length: Int)
        case write(offset: UInt64, length: Int, fua: Bool)
        case flush
        case unmap(offset: UInt64, length: Int)
    }

    /// Returns the error a request should fail with, or nil to let it run.
    public typealias FaultHook = @Sendable (Request) -> BlockDeviceError?

    /// Counts of the requests served, for tests that check what reached the device.
    public struct Statistics: Sendable, Equatable {
        public var reads = 0
        public var writes = 0
        public var fuaWrites = 0
        public var flushes = 0
        public var unmaps = 0
        public init() {}
    }

    public let blockSize: Int
    public let blockCount: UInt64
    public let isReadOnly: Bool
    public var supportsUnmap: Bool { true }

    private struct Chunk {
        var bytes: [UInt8]
        var mapped: UInt64
    }

    private struct State {
        var chunks: [UInt64: Chunk] = [:]
        var faultHook: FaultHook?
        var statistics = Statistics()
        var closed = false
    }

    private let state = Mutex(State())

    /// Creates an all-zero, fully deallocated device.
    public init(blockSize: Int = 512, blockCount: UInt64, readOnly: Bool = false) {
        precondition(blockSize > 0 && blockSize & (blockSize - 1) == 0, "block size must be a power of two")
        self.blockSize = blockSize
        self.blockCount = blockCount
        self.isReadOnly = readOnly
    }

    /// Creates a device holding `contents` (padded with zeros to whole blocks);
    /// every block of `contents` is mapped. Handy for read-only fixtures.
    public convenience init(blockSize: Int = 512, contents: [UInt8], readOnly: Bool = false) {
        let blocks = (UInt64(contents.count) + UInt64(blockSize) - 1) / UInt64(blockSize)
        self.init(blockSize: blockSize, blockCount: blocks, readOnly: readOnly)
        state.withLock { state in
            self.store(contents[...], at: 0, in: &state)
        }
    }

    // MARK: - Test hooks

    /// Installs (or with nil removes) the fault hook consulted before every request.
    public func setFaultHook(_ hook: FaultHook?) {
        state.withLock { $0.faultHook = hook }
    }

    /// Makes reads that overlap `range` (bytes) fail with `readFailed` (MEDIUM ERROR).
    public func failReads(in range: Range<UInt64>) {
        setFaultHook { request in
            guard case .read(let offset, let length) = request,
                offset < range.upperBound, offset + UInt64(length) > range.lowerBound
            else { return nil }
            return .readFailed("injected read failure")
        }
    }

    /// Makes every write and unmap fail with `noSpace`, as a full thin pool would.
    public func simulateNoSpace() {
        setFaultHook { request in
            switch request {
            case .write, .unmap: return .noSpace("injected: no space left")
            case .read, .flush: return nil
            }
        }
    }

    /// The requests served so far.
    public var statistics: Statistics { state.withLock { $0.statistics } }

    /// Reads bytes synchronously (for test assertions).
    public func contents(offset: UInt64, length: Int) -> [UInt8] {
        state.withLock { state in load(offset: offset, length: length, from: state) }
    }

    // MARK: - BlockDevice

    public func read(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer {
        let bytes = try state.withLock { state throws(BlockDeviceError) -> [UInt8] in
            try admit(.read(offset: offset, length: length), state: &state)
            state.statistics.reads += 1
            return load(offset: offset, length: length, from: state)
        }
        return ByteBuffer(bytes: bytes)
    }

    /// Memory is always ready, unless a fault hook refuses the read (then the
    /// async `read` reports the error).
    public func readIfReady(offset: UInt64, length: Int) -> ByteBuffer? {
        let bytes = state.withLock { state -> [UInt8]? in
            guard (try? admit(.read(offset: offset, length: length), state: &state)) != nil else { return nil }
            state.statistics.reads += 1
            return load(offset: offset, length: length, from: state)
        }
        return bytes.map { ByteBuffer(bytes: $0) }
    }

    public func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(BlockDeviceError) {
        let bytes = data.readableBytesView
        try state.withLock { state throws(BlockDeviceError) in
            guard !isReadOnly else { throw .writeProtected("memory device is read-only") }
            try admit(.write(offset: offset, length: bytes.count, fua: fua), state: &state)
            state.statistics.writes += 1
            if fua { state.statistics.fuaWrites += 1 }
            store(bytes, at: offset, in: &state)
        }
    }

    public func flush() async throws(BlockDeviceError) {
        try state.withLock { state throws(BlockDeviceError) in
            try admit(.flush, state: &state)
            state.statistics.flushes += 1
        }
    }

    public func unmap(offset: UInt64, length: Int) async throws(BlockDeviceError) {
        try state.withLock { state throws(BlockDeviceError) in
            guard !isReadOnly else { throw .writeProtected("memory device is read-only") }
            try admit(.unmap(offset: offset, length: length), state: &state)
            state.statistics.unmaps += 1
            deallocate(offset: offset, length: length, in: &state)
        }
    }

    public func allocationStatus(offset: UInt64, length: Int) async throws(BlockDeviceError) -> [AllocationExtent] {
        try state.withLock { state throws(BlockDeviceError) -> [AllocationExtent] in
            try checkOpenAndRange(offset: offset, length: length, state: state)
            var extents: [AllocationExtent] = []
            let block = UInt64(blockSize)
            var position = offset
            let end = offset + UInt64(length)
            while position < end {
                let lba = position / block
                let blockEnd = min((lba + 1) * block, end)
                let mapped = isMapped(lba: lba, in: state)
                let status: AllocationExtent.Status = mapped ? .mapped : .deallocated
                if let last = extents.last, last.status == status {
                    extents[extents.count - 1].length += blockEnd - position
                } else {
                    extents.append(AllocationExtent(offset: position, length: blockEnd - position, status: status))
                }
                position = blockEnd
            }
            return extents
        }
    }

    public func close() async {
        state.withLock { $0.closed = true }
    }

    // MARK: - Storage

    private var chunkBytes: Int { Self.chunkBlocks * blockSize }

    private func checkOpenAndRange(offset: UInt64, length: Int, state: State) throws(BlockDeviceError) {
        guard !state.closed else { throw .notReady("memory device is closed") }
        guard length >= 0, offset <= capacity, UInt64(length) <= capacity - offset else {
            throw .outOfRange("offset \(offset) length \(length) outside \(capacity) bytes")
        }
    }

    /// Checks state and range, then asks the fault hook.
    private func admit(_ request: Request, state: inout State) throws(BlockDeviceError) {
        switch request {
        case .read(let offset, let length), .write(let offset, let length, _), .unmap(let offset, let length):
            try checkOpenAndRange(offset: offset, length: length, state: state)
        case .flush:
            try checkOpenAndRange(offset: 0, length: 0, state: state)
        }
        if let hook = state.faultHook, let error = hook(request) { throw error }
    }

    private func isMapped(lba: UInt64, in state: State) -> Bool {
        let chunkIndex = lba / UInt64(Self.chunkBlocks)
        guard let chunk = state.chunks[chunkIndex] else { return false }
        return chunk.mapped & (1 << (lba % UInt64(Self.chunkBlocks))) != 0
    }

    private func load(offset: UInt64, length: Int, from state: State) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: length)
        let chunkSize = UInt64(chunkBytes)
        var position = offset
        let end = offset + UInt64(length)
        while position < end {
            let chunkIndex = position / chunkSize
            let within = Int(position % chunkSize)
            let count = Int(min(chunkSize - UInt64(within), end - position))
            if let chunk = state.chunks[chunkIndex] {
                let destination = Int(position - offset)
                result.replaceSubrange(destination..<destination + count, with: chunk.bytes[within..<within + count])
            }
            position += UInt64(count)
        }
        return result
    }

    private func store<Bytes: Collection<UInt8>>(_ bytes: Bytes, at offset: UInt64, in state: inout State) {
        let chunkSize = UInt64(chunkBytes)
        let block = UInt64(blockSize)
        var position = offset
        var source = bytes.startIndex
        let end = offset + UInt64(bytes.count)
        while position < end {
            let chunkIndex = position / chunkSize
            let within = Int(position % chunkSize)
            let count = Int(min(chunkSize - UInt64(within), end - position))
            let sourceEnd = bytes.index(source, offsetBy: count)
            let size = chunkBytes
            state.chunks[chunkIndex, default: Chunk(bytes: [UInt8](repeating: 0, count: size), mapped: 0)]
                .bytes.replaceSubrange(within..<within + count, with: bytes[source..<sourceEnd])
            let firstBlock = UInt64(within) / block
            let lastBlock = (UInt64(within + count) - 1) / block
            for bit in firstBlock...lastBlock {
                state.chunks[chunkIndex]?.mapped |= 1 << bit
            }
            position += UInt64(count)
            source = sourceEnd
        }
    }

    /// Zeros the range and clears the mapped bit of every block wholly inside it;
    /// a chunk with no mapped block left is dropped.
    private func deallocate(offset: UInt64, length: Int, in state: inout State) {
        let chunkSize = UInt64(chunkBytes)
        let block = UInt64(blockSize)
        var position = offset
        let end = offset + UInt64(length)
        while position < end {
            let chunkIndex = position / chunkSize
            let within = Int(position % chunkSize)
            let count = Int(min(chunkSize - UInt64(within), end - position))
            if state.chunks[chunkIndex] != nil {
                state.chunks[chunkIndex]?.bytes.replaceSubrange(
                    within..<within + count, with: repeatElement(0, count: count))
                let firstWhole = (UInt64(within) + block - 1) / block
                let endWhole = UInt64(within + count) / block
                if endWhole > firstWhole {
                    for bit in firstWhole..<endWhole {
                        state.chunks[chunkIndex]?.mapped &= ~(1 << bit)
                    }
                }
                if state.chunks[chunkIndex]?.mapped == 0 { state.chunks[chunkIndex] = nil }
            }
            position += UInt64(count)
        }
    }
}
