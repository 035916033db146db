import BlockDevice
import Cache
import Foundation
import LiveMount
import NIOCore
import Relocation
import Synchronization
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

    @Test("damage done to the destination after a region's copy is found by the verify pass and copied again")
    func verifyAfterCopy() async throws {
        let fixture = try await Fixture.make()
        let (record, device) = try await fixture.manager.mount(
            target: "t", lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false, origin: .api)
        let settings = Self.settings(maxRateMiB: 8)
        let service = RelocationService(mounts: fixture.manager, settings: settings, logger: quietLogger)
        let destination = fixture.scratch.path + "/primary.img"
        _ = try await service.start(record: record, device: device, to: destination)
        for _ in 0..<200 {
            if try service.status(mountID: record.id).bytesDone >= UInt64(2 * settings.regionBytes) { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        let paused = try await service.pause(mountID: record.id)
        #expect(paused.phase == .paused)
        #expect(paused.bytesDone >= UInt64(2 * settings.regionBytes) && paused.bytesDone < paused.bytesTotal)
        // Region 0 is copied (and, before this design, was already read back). Scribble on it, durably.
        let handle = try #require(FileHandle(forUpdatingAtPath: destination))
        try handle.seek(toOffset: 1000)
        try handle.write(contentsOf: Data(repeating: 0x5A, count: 3000))
        try handle.synchronize()
        try handle.close()
        #expect(try service.resume(mountID: record.id).phase == .copying)
        #expect(await service.waitForStop(mountID: record.id) == .completed)
        #expect(try service.status(mountID: record.id).verifyMismatches >= 1)
        #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: destination))) == fixture.disk)
        #expect(try await Self.readAll(device, size: fixture.disk.count) == fixture.disk)
        await device.close()
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

    @Test("between checkpoints, every region the pump may have written is below the recorded position or dirty")
    func reservationCoversCopies() async throws {
        let fixture = try await Fixture.make()
        let (record, device) = try await fixture.manager.mount(
            target: "t", lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false, origin: .api)
        var settings = Self.settings(maxRateMiB: 4)
        settings.regionBytes = 64 << 10
        settings.checkpointSeconds = 3600
        let service = RelocationService(mounts: fixture.manager, settings: settings, logger: quietLogger)
        _ = try await service.start(record: record, device: device, to: fixture.scratch.path + "/primary.img")
        var started = 0
        for _ in 0..<100 where started < 8 {
            try await Task.sleep(for: .milliseconds(50))
            started = Int(try service.status(mountID: record.id).bytesDone / UInt64(settings.regionBytes))
        }
        let stored = try #require(try fixture.manager.relocations.record(mountID: record.id))
        let dirty = try fixture.manager.relocations.regions(mountID: record.id).dirty
        #expect(started >= 8)
        #expect(stored.nextSequential < started, "no checkpoint was due")
        for region in 0..<started {
            #expect(region < stored.nextSequential || dirty.contains(region), "region \(region) is not recorded")
        }
        _ = try await service.cancel(mountID: record.id)
        await device.close()
    }

    @Test("a guest that never stops writing does not keep the pump from converging and switching over")
    func convergesUnderContinuousWrites() async throws {
        let fixture = try await Fixture.make()
        let (record, device) = try await fixture.manager.mount(
            target: "t", lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false, origin: .api)
        var settings = Self.settings()
        settings.regionBytes = 64 << 10
        let service = RelocationService(mounts: fixture.manager, settings: settings, logger: quietLogger)
        let destination = fixture.scratch.path + "/primary.img"
        _ = try await service.start(record: record, device: device, to: destination)
        // The guest writes 4 KiB all over the disk until the LUN is switched over, then a little more.
        var expected = fixture.disk
        var random: UInt64 = 0x9E37_79B9_7F4A_7C15
        var writes = 0
        var after = 0
        // A guard against a pump that never converges, in time rather than writes: the pump's threads run at
        // nice +10, so on a loaded machine (CI runs every suite at once on two cores) the guest out-writes it
        // for longer before the rounds stop shrinking.
        let deadline = ContinuousClock.now + .seconds(300)
        while after < 20 {
            if device.isRelocated { after += 1 }
            random ^= random << 13
            random ^= random >> 7
            random ^= random << 17
            let offset = Int(random % UInt64(expected.count / 4096)) * 4096
            let bytes = pattern(4096, seed: random)
            try await device.write(offset: UInt64(offset), data: ByteBuffer(bytes: bytes), fua: false)
            expected.replaceSubrange(offset..<offset + 4096, with: bytes)
            writes += 1
            if writes % 16 == 0 { try await device.flush() }
            if writes % 1024 == 0 {
                try #require(ContinuousClock.now < deadline, "no switchover after \(writes) writes")
            }
        }
        try await device.flush()
        #expect(await service.waitForStop(mountID: record.id) == .completed)
        #expect(try await Self.readAll(device, size: expected.count) == expected)
        #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: destination))) == expected)
        await device.close()
    }

    @Test("a reopened mount with an unfinished relocation holds guest writes until the pump is attached")
    func writesWaitForResume() async throws {
        let fixture = try await Fixture.make()
        let (record, device) = try await fixture.manager.mount(
            target: "t", lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false, origin: .api)
        let service = RelocationService(mounts: fixture.manager, settings: Self.settings(maxRateMiB: 8), logger: quietLogger)
        let destination = fixture.scratch.path + "/primary.img"
        var expected = fixture.disk
        _ = try await service.start(record: record, device: device, to: destination)
        try await Self.guestWrites(device, count: 20, seed: 8, expected: &expected)
        try await Task.sleep(for: .milliseconds(100))
        #expect(try service.status(mountID: record.id).bytesDone > 4096)
        await service.shutdown()
        await device.close()

        let reopened = try await Fixture.reopen(
            scratch: fixture.scratch, repository: fixture.repository, disk: fixture.disk)
        let (record2, device2) = try #require(await reopened.manager.restoreAPIMounts().first)
        // A write to a region the pump has already copied, before the relocation resumes: it must wait.
        let bytes = pattern(4096, seed: 77)
        expected.replaceSubrange(0..<4096, with: bytes)
        let done = Mutex(false)
        let written = Task {
            try await device2.write(offset: 0, data: ByteBuffer(bytes: bytes), fua: true)
            done.withLock { $0 = true }
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(!done.withLock { $0 }, "the write went through before the relocation resumed")
        let service2 = RelocationService(mounts: reopened.manager, settings: Self.settings(), logger: quietLogger)
        #expect(try service2.status(mountID: record2.id).phase == .copying)
        await service2.resume(record: record2, device: device2)
        try await written.value
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
