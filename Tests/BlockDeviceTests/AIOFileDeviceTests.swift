import BlockDevice
import Foundation
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("AIOFileDevice")
struct AIOFileDeviceTests {
    @Test("write, read, flush round trip", arguments: [true, false])
    func roundTrip(direct: Bool) async throws {
        let file = try TemporaryFile(size: 4 << 20)
        defer { file.remove() }
        let device = try AIOFileDevice.open(path: file.path, direct: direct, blockSize: 512)
        #expect(device.blockCount == 8192)
        #expect(device.isDirect == direct)

        let data = pattern(seed: 1, count: 8192)
        try await device.write(offset: 65536, data: ByteBuffer(bytes: data), fua: false)
        try await device.write(offset: 1 << 20, data: ByteBuffer(bytes: data), fua: true)
        try await device.flush()
        #expect(try await device.read(offset: 65536, length: 8192).bytes == data)
        #expect(try await device.read(offset: 1 << 20, length: 4096).bytes == Array(data[0..<4096]))
        #expect(try await device.read(offset: 0, length: 4096).bytes == [UInt8](repeating: 0, count: 4096))
        await device.close()
        #expect(file.contents(offset: 65536, length: 8192) == data)
    }

    @Test("requests larger than the maximum I/O size are split and complete together", arguments: [true, false])
    func largeRequests(direct: Bool) async throws {
        let size = 3 * AIOFileDevice.maximumIOSize + 8192
        let file = try TemporaryFile(size: 8 << 20)
        defer { file.remove() }
        let device = try AIOFileDevice.open(path: file.path, direct: direct, blockSize: 4096)
        let data = pattern(seed: 2, count: size)
        try await device.write(offset: 4096, data: ByteBuffer(bytes: data), fua: false)
        #expect(try await device.read(offset: 4096, length: size).bytes == data)
        await device.close()
        #expect(file.contents(offset: 4096, length: size) == data)
    }

    @Test("unmap punches a hole that reads as zeros and shows in allocation status", arguments: [true, false])
    func unmapAndAllocationStatus(direct: Bool) async throws {
        let file = try TemporaryFile(size: 1 << 20)
        defer { file.remove() }
        let device = try AIOFileDevice.open(path: file.path, direct: direct, blockSize: 4096)
        #expect(device.supportsUnmap)

        let initial = try await device.allocationStatus(offset: 0, length: 1 << 20)
        #expect(initial == [AllocationExtent(offset: 0, length: 1 << 20, status: .deallocated)])

        try await device.write(offset: 0, data: ByteBuffer(bytes: pattern(seed: 3, count: 256 << 10)), fua: false)
        try await device.flush()
        #expect(
            try await device.allocationStatus(offset: 0, length: 1 << 20) == [
                AllocationExtent(offset: 0, length: 256 << 10, status: .mapped),
                AllocationExtent(offset: 256 << 10, length: 768 << 10, status: .deallocated),
            ])

        try await device.unmap(offset: 64 << 10, length: 64 << 10)
        #expect(
            try await device.read(offset: 64 << 10, length: 64 << 10).bytes == [UInt8](repeating: 0, count: 64 << 10))
        #expect(
            try await device.allocationStatus(offset: 0, length: 256 << 10) == [
                AllocationExtent(offset: 0, length: 64 << 10, status: .mapped),
                AllocationExtent(offset: 64 << 10, length: 64 << 10, status: .deallocated),
                AllocationExtent(offset: 128 << 10, length: 128 << 10, status: .mapped),
            ])
        await device.close()
    }

    @Test("1000 random 4 KiB reads and writes from 32 tasks match a model", arguments: [true, false])
    func concurrentRandomIO(direct: Bool) async throws {
        let tasks = 32
        let blocksPerTask = 64
        let block = 4096
        let file = try TemporaryFile(size: tasks * blocksPerTask * block)
        defer { file.remove() }
        let device = try AIOFileDevice.open(path: file.path, direct: direct, blockSize: 4096)

        // Each task owns the blocks with index % tasks == task, so its own model
        // is exact while all tasks run at once.
        let mismatches = try await withThrowingTaskGroup(of: Int.self) { group in
            for task in 0..<tasks {
                group.addTask {
                    var generator = SeededGenerator(seed: UInt64(task + 1))
                    var model: [Int: [UInt8]] = [:]
                    var mismatches = 0
                    for operation in 0..<32 {
                        let blockIndex = Int.random(in: 0..<blocksPerTask, using: &generator) * tasks + task
                        let offset = UInt64(blockIndex * block)
                        if Bool.random(using: &generator) {
                            let data = pattern(seed: UInt64(task * 1000 + operation), count: block)
                            try await device.write(offset: offset, data: ByteBuffer(bytes: data), fua: false)
                            model[blockIndex] = data
                        } else {
                            let read = try await device.read(offset: offset, length: block).bytes
                            let expected = model[blockIndex] ?? [UInt8](repeating: 0, count: block)
                            if read != expected { mismatches += 1 }
                        }
                    }
                    // Read back everything this task wrote.
                    for (blockIndex, data) in model {
                        let read = try await device.read(offset: UInt64(blockIndex * block), length: block).bytes
                        if read != data { mismatches += 1 }
                    }
                    return mismatches
                }
            }
            return try await group.reduce(0, +)
        }
        #expect(mismatches == 0)
        await device.close()
    }

    @Test("unaligned 512-byte requests on an O_DIRECT file system keep their data")
    func unalignedRequests() async throws {
        let file = try TemporaryFile(size: 1 << 20)
        defer { file.remove() }
        let device = try AIOFileDevice.open(path: file.path, direct: true, blockSize: 512)
        var model = [UInt8](repeating: 0, count: 64 << 10)

        // Interleave aligned (O_DIRECT) and unaligned (buffered) writes over the same 4 KiB blocks.
        let writes: [(offset: Int, length: Int)] = [
            (512, 512), (0, 4096), (1024, 1536), (4096 - 512, 1024), (8192, 8192), (9216, 512), (12800, 3584),
        ]
        for (index, write) in writes.enumerated() {
            let data = pattern(seed: UInt64(100 + index), count: write.length)
            try await device.write(offset: UInt64(write.offset), data: ByteBuffer(bytes: data), fua: index % 2 == 0)
            model.replaceSubrange(write.offset..<write.offset + write.length, with: data)
        }
        for (offset, length) in [(512, 512), (0, 16384), (1536, 2560), (4608, 512), (9216, 7680), (126 * 512, 1024)] {
            #expect(
                try await device.read(offset: UInt64(offset), length: length).bytes
                    == Array(model[offset..<offset + length]))
        }
        try await device.flush()
        await device.close()
        #expect(file.contents(offset: 0, length: 16384) == Array(model[0..<16384]))
    }

    @Test("opening a missing file names the path")
    func missingFile() throws {
        let path = "/tmp/livemount-does-not-exist-\(getpid())/disk.img"
        #expect {
            _ = try AIOFileDevice.open(path: path)
        } throws: { error in
            guard let error = error as? BlockDeviceOpenError else { return false }
            return error.code == .notFound && error.description.contains(path)
        }
    }

    @Test("a bad block size is refused")
    func badBlockSize() throws {
        let file = try TemporaryFile(size: 4096)
        defer { file.remove() }
        #expect(throws: BlockDeviceOpenError.self) { _ = try AIOFileDevice.open(path: file.path, blockSize: 1000) }
    }

    @Test("a read-only device refuses writes and unmaps but reads")
    func readOnly() async throws {
        let file = try TemporaryFile(size: 64 << 10)
        defer { file.remove() }
        let device = try AIOFileDevice.open(path: file.path, readOnly: true)
        #expect(device.isReadOnly)
        let writeError = await blockDeviceError {
            try await device.write(offset: 0, data: ByteBuffer(bytes: [UInt8](repeating: 1, count: 512)), fua: false)
        }
        #expect(writeError?.code == .writeProtected)
        let unmapError = await blockDeviceError { try await device.unmap(offset: 0, length: 512) }
        #expect(unmapError?.code == .writeProtected)
        #expect(try await device.read(offset: 0, length: 512).bytes == [UInt8](repeating: 0, count: 512))
        await device.close()
    }

    @Test("requests outside the device fail with outOfRange; a closed device is not ready")
    func rangeAndClose() async throws {
        let file = try TemporaryFile(size: 64 << 10)
        defer { file.remove() }
        let device = try AIOFileDevice.open(path: file.path)
        let rangeError = await blockDeviceError { _ = try await device.read(offset: 63 << 10, length: 2048) }
        #expect(rangeError?.code == .outOfRange)
        await device.close()
        let closedError = await blockDeviceError { _ = try await device.read(offset: 0, length: 512) }
        #expect(closedError?.code == .notReady)
        await device.close()
    }

    @Test("a read past a file truncated underneath is a short read error")
    func shortRead() async throws {
        let file = try TemporaryFile(size: 64 << 10)
        defer { file.remove() }
        let device = try AIOFileDevice.open(path: file.path, direct: false)
        #expect(truncate(file.path, 8192) == 0)
        let error = await blockDeviceError { _ = try await device.read(offset: 16384, length: 4096) }
        #expect(error?.code == .readFailed)
        await device.close()
    }

    @Test("a full file system reports noSpace", .enabled(if: getuid() == 0, "needs root to mount a tiny tmpfs"))
    func noSpace() async throws {
        let mountPoint = "/tmp/livemount-bd-enospc-\(getpid())"
        #expect(mkdir(mountPoint, 0o700) == 0)
        defer { rmdir(mountPoint) }
        try #require(mount("tmpfs", mountPoint, "tmpfs", 0, "size=256k") == 0, "mount tmpfs: errno \(errno)")
        defer { umount(mountPoint) }
        let file = try TemporaryFile(size: 4 << 20, directory: mountPoint)
        defer { file.remove() }
        let device = try AIOFileDevice.open(path: file.path, blockSize: 4096)
        let error = await blockDeviceError {
            try await device.write(offset: 0, data: ByteBuffer(bytes: pattern(seed: 9, count: 1 << 20)), fua: false)
        }
        #expect(error?.code == .noSpace)
        await device.close()
    }

    @Test(
        "a block device (loop) is sized by ioctl and serves I/O and unmap",
        .enabled(
            if: getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/loop-control"),
            "needs root and loop devices")
    )
    func loopBlockDevice() async throws {
        let file = try TemporaryFile(size: 8 << 20)
        defer { file.remove() }
        let seed = pattern(seed: 21, count: 64 << 10)
        let fd = open(file.path, O_WRONLY)
        _ = seed.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        close(fd)
        let loop = try #require(runProgram("/usr/sbin/losetup", ["-f", "--show", file.path]), "losetup failed")
        defer { _ = runProgram("/usr/sbin/losetup", ["-d", loop]) }

        let device = try AIOFileDevice.open(path: loop, direct: true, blockSize: 512)
        #expect(device.isBlockDevice)
        #expect(device.blockCount == (8 << 20) / 512)
        #expect(device.directAlignment == 512)
        #expect(try await device.read(offset: 0, length: seed.count).bytes == seed)

        let data = pattern(seed: 22, count: 4096)
        try await device.write(offset: 1 << 20, data: ByteBuffer(bytes: data), fua: true)
        #expect(try await device.read(offset: 1 << 20, length: 4096).bytes == data)
        try await device.flush()

        #expect(device.supportsUnmap)
        try await device.unmap(offset: 0, length: 8192)
        #expect(try await device.read(offset: 0, length: 8192).bytes == [UInt8](repeating: 0, count: 8192))
        #expect(try await device.read(offset: 8192, length: 512).bytes == Array(seed[8192..<8704]))
        #expect(
            try await device.allocationStatus(offset: 0, length: 8192)
                == [AllocationExtent(offset: 0, length: 8192, status: .mapped)])
        await device.close()
    }
}
