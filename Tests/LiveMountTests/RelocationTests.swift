import BlockDevice
import Cache
import Foundation
import LiveMount
import NIOCore
import Relocation
import Testing

/// The relocation pump on a live mount, in process: copy while the guest writes, verify, switch over, resume
/// from a checkpoint, pause, cancel, and refuse a destination that is too small.
@Suite("Relocation of live mounts", .serialized)
struct RelocationTests {
    static func settings(maxRateMiB: Int = 0) -> RelocationSettings {
        var settings = RelocationSettings()
        settings.regionBytes = 256 << 10
        settings.maxRateMiB = maxRateMiB
        settings.checkpointSeconds = 0.2
        return settings
    }

    /// Random guest writes through the device, applied to `expected` once acknowledged; a flush every few.
    static func guestWrites(
        _ device: LiveMountDevice, count: Int, seed: UInt64, expected: inout [UInt8]
    ) async throws {
        var random = seed | 1
        func next() -> UInt64 {
            random ^= random << 13
            random ^= random >> 7
            random ^= random << 17
            return random
        }
        let blocks = UInt64(expected.count / 512)
        for index in 0..<count {
            let length = Int(next() % 128 + 1) * 512
            let offset = (next() % (blocks - UInt64(length / 512))) * 512
            let bytes = pattern(length, seed: next())
            if index % 7 == 3 {
                try await device.unmap(offset: offset, length: length)
                expected.replaceSubrange(Int(offset)..<Int(offset) + length, with: repeatElement(0, count: length))
            } else {
                try await device.write(offset: offset, data: ByteBuffer(bytes: bytes), fua: index % 5 == 0)
                expected.replaceSubrange(Int(offset)..<Int(offset) + length, with: bytes)
            }
            if index % 10 == 9 { try await device.flush() }
            try await Task.sleep(for: .milliseconds(2))
        }
        try await device.flush()
    }

    static func readAll(_ device: any BlockDevice, size: Int) async throws -> [UInt8] {
        var result: [UInt8] = []
        var offset = 0
        while offset < size {
            let length = min(1 << 20, size - offset)
            var buffer = try await device.read(offset: UInt64(offset), length: length)
            result += buffer.readBytes(length: buffer.readableBytes) ?? []
            offset += length
        }
        return result
    }

    @Test("relocates to a file while the guest writes, verifies, switches over, and keeps serving the file")
    func relocateToFile() async throws {
        let fixture = try await Fixture.make()
        let chunksBefore = try fixture.chunkFiles()
        let (record, device) = try await fixture.manager.mount(
            target: "t", lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false, origin: .api)
        let service = RelocationService(mounts: fixture.manager, settings: Self.settings(maxRateMiB: 24), logger: quietLogger)
        let destination = fixture.scratch.path + "/primary.img"
        var expected = fixture.disk
        let started = try await service.start(record: record, device: device, to: destination)
        #expect(started.phase == .copying)
        #expect(started.bytesTotal == UInt64(expected.count))
        try await Self.guestWrites(device, count: 150, seed: 7, expected: &expected)
        #expect(await service.waitForStop(mountID: record.id) == .completed)
        let status = try service.status(mountID: record.id)
        #expect(status.phase == .completed)
        #expect(status.bytesLeft == 0)
        #expect(device.isRelocated)

        #expect(try await Self.readAll(device, size: expected.count) == expected)
        #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: destination))) == expected)
        // Writes now go to the primary.
        let late = pattern(4096, seed: 99)
        try await device.write(offset: 8192, data: ByteBuffer(bytes: late), fua: true)
        expected.replaceSubrange(8192..<(8192 + 4096), with: late)
        #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: destination))) == expected)
        // The overlay is gone, the backup untouched.
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: fixture.scratch.path + "/state")
            .filter { $0.hasPrefix("mount-") }
        #expect(leftovers.isEmpty)
        #expect(try fixture.chunkFiles() == chunksBefore)
        await device.close()

        // After a restart the mount is served by the primary alone.
        let reopened = try await Fixture.reopen(
            scratch: fixture.scratch, repository: fixture.repository, disk: fixture.disk)
        let restored = await reopened.manager.restoreAPIMounts()
        #expect(restored.count == 1)
        if let (_, again) = restored.first {
            #expect(again.isRelocated)
            #expect(try await Self.readAll(again, size: expected.count) == expected)
            await again.close()
        }
    }

    @Test("resumes from its checkpoint after a stop and a reopen, and ends identical")
    func resumeFromCheckpoint() async throws {
        let fixture = try await Fixture.make()
        let (record, device) = try await fixture.manager.mount(
            target: "t", lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false, origin: .api)
        let service = RelocationService(mounts: fixture.manager, settings: Self.settings(maxRateMiB: 8), logger: quietLogger)
        let destination = fixture.scratch.path + "/primary.img"
        var expected = fixture.disk
        _ = try await service.start(record: record, device: device, to: destination)
        try await Self.guestWrites(device, count: 40, seed: 3, expected: &expected)
        let mid = try service.status(mountID: record.id)
        #expect(mid.phase == .copying)
        #expect(mid.bytesDone > 0 && mid.bytesDone < mid.bytesTotal)
        await service.shutdown()
        // Writes after the pump stopped are still recorded by the commit hook.
        try await Self.guestWrites(device, count: 20, seed: 4, expected: &expected)
        await device.close()

        let reopened = try await Fixture.reopen(
            scratch: fixture.scratch, repository: fixture.repository, disk: fixture.disk)
        let restored = await reopened.manager.restoreAPIMounts()
        let (record2, device2) = try #require(restored.first)
        #expect(!device2.isRelocated)
        let service2 = RelocationService(mounts: reopened.manager, settings: Self.settings(), logger: quietLogger)
        await service2.resume(record: record2, device: device2)
        let resumed = try service2.status(mountID: record2.id)
        #expect(resumed.resumes == 1)
        #expect(resumed.bytesDone >= mid.bytesDone)
        try await Self.guestWrites(device2, count: 20, seed: 5, expected: &expected)
        #expect(await service2.waitForStop(mountID: record2.id) == .completed)
        #expect(try await Self.readAll(device2, size: expected.count) == expected)
        #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: destination))) == expected)
        await device2.close()
    }

    @Test("pause holds the pump where it is, resume goes on, cancel leaves a live mount")
    func pauseResumeCancel() async throws {
        let fixture = try await Fixture.make()
        let (record, device) = try await fixture.manager.mount(
            target: "t", lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false, origin: .api)
        let service = RelocationService(mounts: fixture.manager, settings: Self.settings(maxRateMiB: 4), logger: quietLogger)
        _ = try await service.start(record: record, device: device, to: fixture.scratch.path + "/primary.img")
        try await Task.sleep(for: .milliseconds(300))
        let paused = try await service.pause(mountID: record.id)
        #expect(paused.phase == .paused)
        try await Task.sleep(for: .milliseconds(300))
        #expect(try service.status(mountID: record.id).bytesDone == paused.bytesDone)
        await #expect(throws: RelocationServiceError.self) { _ = try await service.pause(mountID: record.id) }
        #expect(try service.resume(mountID: record.id).phase == .copying)
        try await Task.sleep(for: .milliseconds(300))
        #expect(try service.status(mountID: record.id).bytesDone > paused.bytesDone)
        let cancelled = try await service.cancel(mountID: record.id)
        #expect(cancelled.phase == .cancelled)
        #expect(!device.isRelocated)
        // Still a live mount: writes go to the overlay and read back.
        let bytes = pattern(4096, seed: 5)
        try await device.write(offset: 0, data: ByteBuffer(bytes: bytes), fua: false)
        var back = try await device.read(offset: 0, length: 4096)
        #expect(back.readBytes(length: 4096) == bytes)
        // A new relocation may start after a cancel.
        let again = try await service.start(record: record, device: device, to: fixture.scratch.path + "/other.img")
        #expect(again.phase == .copying)
        await service.shutdown()
        await device.close()
    }

    @Test("a destination smaller than the disk is refused before anything is written")
    func tooSmall() async throws {
        let fixture = try await Fixture.make()
        let (record, device) = try await fixture.manager.mount(
            target: "t", lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false, origin: .api)
        let service = RelocationService(mounts: fixture.manager, settings: Self.settings(), logger: quietLogger)
        let small = fixture.scratch.path + "/small.img"
        let filler = Data(repeating: 0xAB, count: 1 << 20)
        _ = FileManager.default.createFile(atPath: small, contents: filler)
        do {
            _ = try await service.start(record: record, device: device, to: small)
            Issue.record("a 1 MiB destination was accepted for a 16 MiB disk")
        } catch {
            #expect(error.code == .invalid)
            #expect(error.description.contains("1048576"))
            #expect(error.description.contains("16777216"))
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: small)) == filler)
        #expect(throws: RelocationServiceError.self) { _ = try service.status(mountID: record.id) }
        await #expect(throws: RelocationServiceError.self) {
            _ = try await service.start(record: record, device: device, to: "relative/path.img")
        }
        await device.close()
    }
}
