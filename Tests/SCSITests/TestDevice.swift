import BlockDevice
import NIOCore
import Synchronization

/// An in-memory `BlockDevice` for the SCSI tests: tracks deallocated blocks,
/// FUA writes and flushes, can fail reads or writes on demand, and yields
/// inside each operation so that concurrent commands interleave.
final class TestDevice: BlockDevice, Sendable {
    struct State {
        var bytes: [UInt8]
        var deallocated: Set<UInt64> = []
        var fuaWrites = 0
        var flushes = 0
        var failReads = false
        var failWrites: BlockDeviceError.Code?
        var blockCount: UInt64
    }

    let blockSize: Int
    let isReadOnly: Bool
    let supportsUnmap: Bool
    let state: Mutex<State>

    init(blocks: UInt64, blockSize: Int = 512, readOnly: Bool = false, supportsUnmap: Bool = true) {
        self.blockSize = blockSize
        self.isReadOnly = readOnly
        self.supportsUnmap = supportsUnmap
        self.state = Mutex(State(bytes: [UInt8](repeating: 0, count: Int(blocks) * blockSize), blockCount: blocks))
    }

    var blockCount: UInt64 { state.withLock { $0.blockCount } }

    /// Grows or shrinks the store (for CAPACITY DATA HAS CHANGED tests).
    func resize(blocks: UInt64) {
        state.withLock { s in
            s.blockCount = blocks
            let n = Int(blocks) * blockSize
            if n > s.bytes.count { s.bytes += [UInt8](repeating: 0, count: n - s.bytes.count) } else { s.bytes.removeLast(s.bytes.count - n) }
        }
    }

    func bytes(at offset: Int, count: Int) -> [UInt8] { state.withLock { Array($0.bytes[offset..<(offset + count)]) } }
    func fill(at offset: Int, with bytes: [UInt8]) { state.withLock { $0.bytes.replaceSubrange(offset..<(offset + bytes.count), with: bytes) } }

    func read(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer {
        await Task.yield()
        let result: [UInt8]? = state.withLock { s in
            s.failReads ? nil : Array(s.bytes[Int(offset)..<(Int(offset) + length)])
        }
        guard let result else { throw BlockDeviceError.readFailed("injected") }
        return ByteBuffer(bytes: result)
    }

    /// Ready unless reads are failing (then `read` reports the error).
    func readIfReady(offset: UInt64, length: Int) -> ByteBuffer? {
        let result: [UInt8]? = state.withLock { s in
            s.failReads ? nil : Array(s.bytes[Int(offset)..<(Int(offset) + length)])
        }
        return result.map { ByteBuffer(bytes: $0) }
    }

    func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(BlockDeviceError) {
        await Task.yield()
        let bytes = data.getBytes(at: data.readerIndex, length: data.readableBytes) ?? []
        let failure: BlockDeviceError.Code? = state.withLock { s in
            if let f = s.failWrites { return f }
            s.bytes.replaceSubrange(Int(offset)..<(Int(offset) + bytes.count), with: bytes)
            let bs = UInt64(blockSize)
            for b in (offset / bs)..<((offset + UInt64(bytes.count)) / bs) { s.deallocated.remove(b) }
            if fua { s.fuaWrites += 1 }
            return nil
        }
        if let failure { throw BlockDeviceError(failure) }
    }

    func flush() async throws(BlockDeviceError) { state.withLock { $0.flushes += 1 } }

    func unmap(offset: UInt64, length: Int) async throws(BlockDeviceError) {
        state.withLock { s in
            s.bytes.replaceSubrange(Int(offset)..<(Int(offset) + length), with: [UInt8](repeating: 0, count: length))
            let bs = UInt64(blockSize)
            for b in (offset / bs)..<((offset + UInt64(length)) / bs) { s.deallocated.insert(b) }
        }
    }

    func allocationStatus(offset: UInt64, length: Int) async throws(BlockDeviceError) -> [AllocationExtent] {
        let bs = UInt64(blockSize)
        let deallocated = state.withLock { $0.deallocated }
        var extents: [AllocationExtent] = []
        for b in (offset / bs)..<((offset + UInt64(length)) / bs) {
            let status: AllocationExtent.Status = deallocated.contains(b) ? .deallocated : .mapped
            if let last = extents.last, last.status == status {
                extents[extents.count - 1].length += bs
            } else {
                extents.append(AllocationExtent(offset: b * bs, length: bs, status: status))
            }
        }
        return extents
    }

    func close() async {}
}
