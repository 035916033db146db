import BlockDevice
import Foundation
import NIOCore
import Testing

/// Runs `readAsync` and waits for its completion; nil when the device declined.
private func readViaCallback(
    _ device: some BlockDevice, offset: UInt64, length: Int
) async -> Result<ByteBuffer, BlockDeviceError>? {
    await withCheckedContinuation { (continuation: CheckedContinuation<Result<ByteBuffer, BlockDeviceError>?, Never>) in
        let started = device.readAsync(offset: offset, length: length) { result in
            continuation.resume(returning: result)
        }
        if !started { continuation.resume(returning: nil) }
    }
}

@Suite("AIOFileDevice.readAsync")
struct ReadAsyncTests {
    @Test("readAsync returns the same bytes as read, aligned or not, split or not", arguments: [true, false])
    func sameBytes(direct: Bool) async throws {
        let file = try TemporaryFile(size: 4 << 20, directory: FileManager.default.temporaryDirectory.path)
        defer { file.remove() }
        let device = try AIOFileDevice.open(path: file.path, direct: direct, blockSize: 512)
        let data = pattern(seed: 11, count: 4 << 20)
        try await device.write(offset: 0, data: ByteBuffer(bytes: data), fua: false)

        let ranges: [(UInt64, Int)] = [
            (0, 4096), (512, 512), (3 * 512, 7 * 512), (4096 + 512, 4096), (65536 - 512, 3 * 4096),
            (512, AIOFileDevice.maximumIOSize + 3 * 512),  // more than one iocb, unaligned
            ((4 << 20) - 1024, 1024),  // the last blocks
        ]
        for (offset, length) in ranges {
            let viaRead = try await device.read(offset: offset, length: length)
            let result = try #require(await readViaCallback(device, offset: offset, length: length))
            let bytes = try result.get()
            #expect(bytes.bytes == viaRead.bytes, "offset \(offset) length \(length)")
            #expect(bytes.bytes == Array(data[Int(offset)..<Int(offset) + length]))
        }
        await device.close()
    }

    @Test("many concurrent readAsync calls each get their own bytes")
    func concurrent() async throws {
        let file = try TemporaryFile(size: 1 << 20, directory: FileManager.default.temporaryDirectory.path)
        defer { file.remove() }
        let device = try AIOFileDevice.open(path: file.path, direct: true, blockSize: 4096)
        let data = pattern(seed: 12, count: 1 << 20)
        try await device.write(offset: 0, data: ByteBuffer(bytes: data), fua: false)
        let results = await withTaskGroup(of: (Int, [UInt8]?).self) { group in
            for block in 0..<256 {
                group.addTask {
                    let result = await readViaCallback(device, offset: UInt64(block * 4096), length: 4096)
                    return (block, try? result?.get().bytes)
                }
            }
            var all: [Int: [UInt8]?] = [:]
            for await (block, bytes) in group { all[block] = bytes }
            return all
        }
        for block in 0..<256 {
            #expect(results[block] == Array(data[block * 4096..<(block + 1) * 4096]))
        }
        await device.close()
    }

    @Test("readAsync declines out-of-range, empty and after-close reads, which read reports")
    func declines() async throws {
        let file = try TemporaryFile(size: 1 << 20, directory: FileManager.default.temporaryDirectory.path)
        defer { file.remove() }
        let device = try AIOFileDevice.open(path: file.path, direct: true, blockSize: 512)
        #expect(await readViaCallback(device, offset: (1 << 20) - 512, length: 1024) == nil)
        #expect(await readViaCallback(device, offset: 0, length: 0) == nil)
        #expect(await readViaCallback(device, offset: 0, length: 512) != nil)
        await device.close()
        #expect(await readViaCallback(device, offset: 0, length: 512) == nil)
        let error = await blockDeviceError { _ = try await device.read(offset: 0, length: 512) }
        #expect(error?.code == .notReady)
    }

    @Test("a device without a callback path declines readAsync")
    func memoryDeviceDeclines() async {
        let device = MemoryBlockDevice(blockSize: 512, blockCount: 16)
        #expect(await readViaCallback(device, offset: 0, length: 512) == nil)
    }
}
