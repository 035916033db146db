import BlockDevice
import NIOCore
import Synchronization

/// An in-memory `BlockDevice` for the SCSI layer's tests: a byte array behind
/// a mutex, with switches to make reads or writes fail.
final class CopyTestDevice: BlockDevice {
    let blockSize: Int
    let blockCount: UInt64
    let isReadOnly: Bool
    let supportsUnmap = false

    private struct State {
        var bytes: [UInt8]
        var failReads = false
        var failWrites = false
        var readCalls = 0
        var writeCalls = 0
    }

    private let state: Mutex<State>

    init(blockSize: Int = 512, blockCount: UInt64, readOnly: Bool = false) {
        self.blockSize = blockSize
        self.blockCount = blockCount
        self.isReadOnly = readOnly
        self.state = Mutex(State(bytes: [UInt8](repeating: 0, count: blockSize * Int(blockCount))))
    }

    /// Fills blocks `lba..<lba+count` with `byte`.
    func fill(lba: UInt64, count: Int, with byte: UInt8) {
        state.withLock { s in
            let start = Int(lba) * blockSize
            for i in start..<(start + count * blockSize) { s.bytes[i] = byte }
        }
    }

    /// The bytes of blocks `lba..<lba+count`.
    func contents(lba: UInt64, count: Int) -> [UInt8] {
        state.withLock { s in
            let start = Int(lba) * blockSize
            return Array(s.bytes[start..<(start + count * blockSize)])
        }
    }

    func setFailures(reads: Bool, writes: Bool) {
        state.withLock {
            $0.failReads = reads
            $0.failWrites = writes
        }
    }

    var callCounts: (reads: Int, writes: Int) { state.withLock { ($0.readCalls, $0.writeCalls) } }

    func read(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer {
        let result: Result<[UInt8], BlockDeviceError> = state.withLock { s in
            s.readCalls += 1
            if s.failReads { return .failure(.readFailed("injected")) }
            guard offset + UInt64(length) <= UInt64(s.bytes.count) else {
                return .failure(BlockDeviceError(.outOfRange))
            }
            return .success(Array(s.bytes[Int(offset)..<(Int(offset) + length)]))
        }
        return ByteBuffer(bytes: try result.get())
    }

    func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(BlockDeviceError) {
        let bytes = data.getBytes(at: data.readerIndex, length: data.readableBytes) ?? []
        let result: Result<Void, BlockDeviceError> = state.withLock { s in
            s.writeCalls += 1
            if s.failWrites { return .failure(.writeFailed("injected")) }
            if isReadOnly { return .failure(BlockDeviceError(.writeProtected)) }
            guard offset + UInt64(bytes.count) <= UInt64(s.bytes.count) else {
                return .failure(BlockDeviceError(.outOfRange))
            }
            s.bytes.replaceSubrange(Int(offset)..<(Int(offset) + bytes.count), with: bytes)
            return .success(())
        }
        try result.get()
    }

    func flush() async throws(BlockDeviceError) {}

    func unmap(offset: UInt64, length: Int) async throws(BlockDeviceError) {}

    func close() async {}
}
