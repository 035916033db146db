import BlockDevice
import NIOCore
import Testing

@Suite("MemoryBlockDevice")
struct MemoryBlockDeviceTests {
    @Test("unwritten blocks read as zeros; written data reads back across chunk boundaries")
    func roundTrip() async throws {
        let device = MemoryBlockDevice(blockSize: 512, blockCount: 1024)
        #expect(device.capacity == 512 * 1024)
        #expect(try await device.read(offset: 0, length: 1024).bytes == [UInt8](repeating: 0, count: 1024))
        let chunk = MemoryBlockDevice.chunkBlocks * 512
        let data = pattern(seed: 7, count: 3 * chunk)
        try await device.write(offset: UInt64(chunk - 1024), data: ByteBuffer(bytes: data), fua: false)
        #expect(try await device.read(offset: UInt64(chunk - 1024), length: data.count).bytes == data)
        #expect(device.contents(offset: UInt64(chunk), length: 512) == Array(data[1024..<1536]))
    }

    @Test("allocation status follows writes and unmaps at block granularity")
    func allocationStatus() async throws {
        let device = MemoryBlockDevice(blockSize: 512, blockCount: 256)
        #expect(device.supportsUnmap)
        #expect(
            try await device.allocationStatus(offset: 0, length: 256 * 512)
                == [AllocationExtent(offset: 0, length: 256 * 512, status: .deallocated)])
        try await device.write(offset: 1024, data: ByteBuffer(bytes: pattern(seed: 1, count: 4096)), fua: false)
        #expect(
            try await device.allocationStatus(offset: 0, length: 8192) == [
                AllocationExtent(offset: 0, length: 1024, status: .deallocated),
                AllocationExtent(offset: 1024, length: 4096, status: .mapped),
                AllocationExtent(offset: 5120, length: 3072, status: .deallocated),
            ])
        // Unmapping the middle blocks zeros them and deallocates them.
        try await device.unmap(offset: 2048, length: 1024)
        #expect(try await device.read(offset: 2048, length: 1024).bytes == [UInt8](repeating: 0, count: 1024))
        #expect(
            try await device.allocationStatus(offset: 1024, length: 4096) == [
                AllocationExtent(offset: 1024, length: 1024, status: .mapped),
                AllocationExtent(offset: 2048, length: 1024, status: .deallocated),
                AllocationExtent(offset: 3072, length: 2048, status: .mapped),
            ])
        // Unmapping everything leaves the device fully deallocated.
        try await device.unmap(offset: 0, length: 256 * 512)
        #expect(
            try await device.allocationStatus(offset: 0, length: 256 * 512)
                == [AllocationExtent(offset: 0, length: 256 * 512, status: .deallocated)])
    }

    @Test("a read-only device refuses writes and unmaps")
    func readOnly() async throws {
        let device = MemoryBlockDevice(blockSize: 512, contents: pattern(seed: 2, count: 2048), readOnly: true)
        #expect(device.blockCount == 4)
        #expect(try await device.read(offset: 0, length: 2048).bytes == pattern(seed: 2, count: 2048))
        let writeError = await blockDeviceError {
            try await device.write(offset: 0, data: ByteBuffer(bytes: [1]), fua: false)
        }
        #expect(writeError?.code == .writeProtected)
        let unmapError = await blockDeviceError { try await device.unmap(offset: 0, length: 512) }
        #expect(unmapError?.code == .writeProtected)
    }

    @Test("injected faults fail only the chosen requests")
    func faultInjection() async throws {
        let device = MemoryBlockDevice(blockSize: 512, blockCount: 64)
        device.failReads(in: 4096..<8192)
        let failed = await blockDeviceError { _ = try await device.read(offset: 3584, length: 1024) }
        #expect(failed?.code == .readFailed)
        #expect(try await device.read(offset: 0, length: 4096).readableBytes == 4096)

        device.simulateNoSpace()
        let full = await blockDeviceError {
            try await device.write(offset: 0, data: ByteBuffer(bytes: [UInt8](repeating: 1, count: 512)), fua: true)
        }
        #expect(full?.code == .noSpace)
        #expect(device.contents(offset: 0, length: 512) == [UInt8](repeating: 0, count: 512))

        device.setFaultHook(nil)
        try await device.write(offset: 0, data: ByteBuffer(bytes: [UInt8](repeating: 1, count: 512)), fua: true)
        try await device.flush()
        #expect(device.statistics.fuaWrites == 1)
        #expect(device.statistics.flushes == 1)
    }

    @Test("out-of-range requests fail and a closed device is not ready")
    func rangeAndClose() async throws {
        let device = MemoryBlockDevice(blockSize: 4096, blockCount: 4)
        let rangeError = await blockDeviceError { _ = try await device.read(offset: 12288, length: 8192) }
        #expect(rangeError?.code == .outOfRange)
        await device.close()
        let closedError = await blockDeviceError { try await device.flush() }
        #expect(closedError?.code == .notReady)
    }

    @Test("concurrent writers to distinct blocks all land")
    func concurrentWriters() async throws {
        let device = MemoryBlockDevice(blockSize: 512, blockCount: 1024)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<16 {
                group.addTask {
                    for index in 0..<64 {
                        let block = UInt64(index * 16 + task)
                        try await device.write(
                            offset: block * 512, data: ByteBuffer(bytes: pattern(seed: block, count: 512)), fua: false)
                    }
                }
            }
            try await group.waitForAll()
        }
        for block in UInt64(0)..<1024 {
            #expect(device.contents(offset: block * 512, length: 512) == pattern(seed: block, count: 512))
        }
    }
}
