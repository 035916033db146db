import BlockDevice
import Cache
import Foundation
import LiveMount
import NIOCore
import Repository
import SCSI
import Synchronization
import Testing

@Suite("Live mounts through iSCSI", .serialized)
struct LiveMountTests {
    // MARK: - Acceptance 1: byte-identical, across a restart, backup untouched

    @Test("a live-mounted backup reads back byte-identical through libiscsi, writes land in the overlay only, and all of it survives a restart")
    func byteIdenticalAndBackupUntouched() async throws {
        let fixture = try await Fixture.make()
        let chunksBefore = try fixture.chunkFiles()
        #expect(chunksBefore.count == sampleDistinctChunks)

        let (_, device) = try await fixture.manager.mount(
            target: ServedTarget.name, lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false,
            origin: .configuration)
        let served = try await ServedTarget.start([0: device])
        let image = try await readWholeLUN(url: served.url())
        #expect(image.count == fixture.disk.count)
        #expect(image == fixture.disk)

        // Write into every chunk-sized region: a block at its start and one straddling into the next chunk.
        var expected = fixture.disk
        let url = served.url()
        let writes: [(lba: UInt64, data: [UInt8])] = (0..<16).flatMap { chunk -> [(lba: UInt64, data: [UInt8])] in
            let first = UInt64(chunk * 2048)
            var list: [(lba: UInt64, data: [UInt8])] = [(first, pattern(512, seed: UInt64(100 + chunk)))]
            if chunk < 15 { list.append((first + 2047, pattern(1024, seed: UInt64(200 + chunk)))) }
            return list
        }
        for write in writes {
            expected.replaceSubrange(Int(write.lba) * 512..<(Int(write.lba) * 512 + write.data.count), with: write.data)
        }
        try await onThread {
            let client = ISCSIClient()
            try client.connect(url: url, initiatorName: "iqn.2026-11.org.livemount:writer")
            defer { try? client.logout() }
            for write in writes { try client.write(lba: write.lba, data: write.data) }
            try client.synchronizeCache()
        }
        #expect(try await readWholeLUN(url: served.url()) == expected)
        await served.server.shutdown()

        // A restart: new cache and registry objects over the same files; the configuration LUN reopens its overlay.
        await fixture.cache.close()
        let restarted = try await Fixture.reopen(scratch: fixture.scratch, repository: fixture.repository, disk: fixture.disk)
        let (record, again) = try await restarted.manager.mount(
            target: ServedTarget.name, lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false,
            origin: .configuration)
        #expect(record.backupID == (try fixture.repository.resolve(vm: "web01", backupID: nil).id))
        let servedAgain = try await ServedTarget.start([0: again])
        #expect(try await readWholeLUN(url: servedAgain.url()) == expected)
        #expect(restarted.cache.statistics.hits > 0, "the cache stayed warm across the restart")
        await servedAgain.server.shutdown()
        await restarted.cache.close()

        #expect(try fixture.chunkFiles() == chunksBefore, "the backup's chunk files are unchanged")
        #expect(try fixture.repository.verify(backupID: nil).isClean)
    }

    // MARK: - Acceptance 4: each chunk fetched at most once

    @Test("8 concurrent full reads of a cold LUN fetch each distinct chunk exactly once")
    func concurrentReadersShareFetches() async throws {
        let fixture = try await Fixture.make { ThrottledChunkSource(base: $0, throttle: ReadThrottle(latency: .milliseconds(20))) }
        let (_, device) = try await fixture.manager.mount(
            target: ServedTarget.name, lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: true,
            origin: .configuration)
        let served = try await ServedTarget.start([0: device], readOnly: [0])
        let images = try await withThrowingTaskGroup(of: [UInt8].self) { group in
            for reader in 0..<8 {
                // Different read sizes so the readers drift apart and collide on chunks at different offsets.
                group.addTask {
                    try await readWholeLUN(
                        url: served.url(), blocksPerRead: [8, 64, 256, 2048][reader % 4],
                        initiator: "iqn.2026-11.org.livemount:reader\(reader)")
                }
            }
            var all: [[UInt8]] = []
            for try await image in group { all.append(image) }
            return all
        }
        await served.server.shutdown()
        #expect(images.count == 8)
        #expect(images.allSatisfy { $0 == fixture.disk })
        let statistics = fixture.cache.statistics
        #expect(statistics.fetches == UInt64(sampleDistinctChunks), "fetches: \(statistics.fetches)")
        #expect(statistics.bytesFetched == UInt64(sampleDistinctChunks) << 20)
        await fixture.cache.close()
    }

    // MARK: - Corrupt chunks

    @Test("a corrupt chunk gives MEDIUM ERROR for reads that need it, on that LUN only, and is never served")
    func corruptChunkIsMediumError() async throws {
        let fixture = try await Fixture.make()
        // Chunk 2 is the only chunk with seed 22; find its file by content-addressed name.
        let manifest = try fixture.repository.manifest(backupID: try fixture.repository.resolve(vm: "web01", backupID: nil).id, disk: nil)
        let id = try #require(manifest.chunk(at: 2))
        let file = fixture.repositoryPath + "/chunks/" + String(id.hex.prefix(2)) + "/" + String(id.hex.dropFirst(2).prefix(2)) + "/" + id.hex
        var bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        bytes[bytes.count / 2] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: file))

        let (_, broken) = try await fixture.manager.mount(
            target: ServedTarget.name, lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: true,
            origin: .configuration)
        let raw = MemoryBlockDevice(blockCount: 2048, readOnly: false)
        let served = try await ServedTarget.start([0: broken, 1: raw], readOnly: [0])
        let url0 = served.url(lun: 0)
        let url1 = served.url(lun: 1)
        let (bad, good, other) = try await onThread { () -> (ISCSIClient.CommandResult, ISCSIClient.CommandResult, [UInt8]) in
            let client = ISCSIClient()
            try client.connect(url: url0, initiatorName: "iqn.2026-11.org.livemount:reader")
            defer { try? client.logout() }
            // READ(16) of 8 blocks in chunk 2, then in chunk 0.
            func read16(_ lba: UInt64) throws -> ISCSIClient.CommandResult {
                var cdb = [UInt8](repeating: 0, count: 16)
                cdb[0] = 0x88
                for i in 0..<8 { cdb[2 + i] = UInt8(truncatingIfNeeded: lba >> (56 - 8 * UInt64(i))) }
                cdb[13] = 8
                return try client.execute(cdb: cdb, dataOut: nil, dataInLength: 4096)
            }
            let bad = try read16(2 * 2048 + 16)
            let good = try read16(16)
            let second = ISCSIClient()
            try second.connect(url: url1, initiatorName: "iqn.2026-11.org.livemount:other")
            defer { try? second.logout() }
            return (bad, good, try second.read(lba: 0, blocks: 8))
        }
        #expect(bad.status == 0x02, "CHECK CONDITION")
        #expect(bad.sense.count > 13 && bad.sense[2] & 0x0F == 0x03, "sense key MEDIUM ERROR")
        #expect(bad.sense.count > 13 && bad.sense[12] == 0x11, "ASC UNRECOVERED READ ERROR")
        #expect(bad.dataIn.isEmpty)
        #expect(good.status == 0)
        #expect(good.dataIn == Array(fixture.disk[(16 * 512)..<(24 * 512)]))
        #expect(other == [UInt8](repeating: 0, count: 4096))
        #expect(fixture.cache.contains(id) == false, "the corrupt chunk was not cached")
        await served.server.shutdown()
        await fixture.cache.close()
    }

    // MARK: - Thin provisioning

    @Test("allocation status: zero chunks deallocated, written blocks mapped, unmapped blocks deallocated and zero")
    func thinProvisioning() async throws {
        let fixture = try await Fixture.make()
        let (_, device) = try await fixture.manager.mount(
            target: ServedTarget.name, lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false,
            origin: .configuration)
        let mib: UInt64 = 1 << 20
        // Chunks 0 mapped, 1 zero (deallocated), 2 mapped.
        let status = try await device.allocationStatus(offset: 0, length: Int(3 * mib))
        #expect(
            status == [
                AllocationExtent(offset: 0, length: mib, status: .mapped),
                AllocationExtent(offset: mib, length: mib, status: .deallocated),
                AllocationExtent(offset: 2 * mib, length: mib, status: .mapped),
            ])
        // A write into the zero chunk maps those blocks; an UNMAP of data makes it read as zeros.
        var data = ByteBuffer()
        data.writeBytes(pattern(4096, seed: 5))
        try await device.write(offset: mib, data: data, fua: false)
        try await device.unmap(offset: 0, length: 8192)
        let after = try await device.allocationStatus(offset: 0, length: Int(2 * mib))
        #expect(
            after == [
                AllocationExtent(offset: 0, length: 8192, status: .deallocated),
                // The rest of chunk 0 and the blocks written into chunk 1 are one mapped run.
                AllocationExtent(offset: 8192, length: mib - 8192 + 4096, status: .mapped),
                AllocationExtent(offset: mib + 4096, length: mib - 4096, status: .deallocated),
            ])
        let zeros = try await device.read(offset: 0, length: 8192)
        #expect(Array(zeros.readableBytesView) == [UInt8](repeating: 0, count: 8192))
        let mixed = try await device.read(offset: mib - 512, length: 8192)
        #expect(
            Array(mixed.readableBytesView)
                == Array(fixture.disk[(Int(mib) - 512)..<Int(mib)]) + pattern(4096, seed: 5)
                + [UInt8](repeating: 0, count: 8192 - 512 - 4096))
        await device.close()
        await fixture.cache.close()
    }

    @Test("a read-only mount refuses writes and unmaps, and reports no thin provisioning")
    func readOnlyMount() async throws {
        let fixture = try await Fixture.make()
        let (_, device) = try await fixture.manager.mount(
            target: ServedTarget.name, lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: true,
            origin: .configuration)
        #expect(device.isReadOnly)
        #expect(!device.supportsUnmap)
        await #expect(throws: BlockDeviceError.self) {
            try await device.write(offset: 0, data: ByteBuffer(repeating: 1, count: 512), fua: false)
        }
        await device.close()
        await fixture.cache.close()
    }

    // MARK: - Mount registry

    @Test("mount errors name the problem; a taken LUN is refused; unmount keeps or discards the overlay")
    func registry() async throws {
        let fixture = try await Fixture.make()
        await #expect(throws: MountError.self) {
            _ = try await fixture.manager.mount(
                target: ServedTarget.name, lun: 0, vm: "nosuchvm", backupID: nil, disk: nil, readOnly: false,
                origin: .api)
        }
        let (_, first) = try await fixture.manager.mount(
            target: ServedTarget.name, lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false, origin: .api)
        do {
            _ = try await fixture.manager.mount(
                target: ServedTarget.name, lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false, origin: .api)
            Issue.record("a second mount on LUN 0 was accepted")
        } catch {
            #expect(error.code == .conflict)
            #expect(error.description.contains("in use"))
        }
        let backupID = try fixture.repository.resolve(vm: "web01", backupID: nil).id
        #expect(try fixture.repository.holds(backupID: backupID).count == 1)
        #expect(throws: (any Error).self) { try fixture.repository.delete(backupID: backupID, force: false) }

        // Write, unmount keeping the overlay, mount elsewhere: the write is still there.
        var data = ByteBuffer()
        data.writeBytes(pattern(512, seed: 9))
        try await first.write(offset: 4096, data: data, fua: true)
        await first.close()
        let kept = try await fixture.manager.unmount(target: ServedTarget.name, lun: 0, keepOverlay: true)
        #expect(kept.state == .kept)
        #expect(try fixture.repository.holds(backupID: backupID).count == 1, "a kept overlay keeps its backup held")
        let (resumed, second) = try await fixture.manager.mount(
            target: ServedTarget.name, lun: 3, vm: "web01", backupID: backupID, disk: "disk0", readOnly: false,
            origin: .api)
        #expect(resumed.id == kept.id)
        #expect(Array(try await second.read(offset: 4096, length: 512).readableBytesView) == pattern(512, seed: 9))
        await second.close()

        // Discarding: the next mount starts from the backup.
        _ = try await fixture.manager.unmount(target: ServedTarget.name, lun: 3, keepOverlay: false)
        #expect(try fixture.manager.records().isEmpty)
        #expect(try fixture.repository.holds(backupID: backupID).isEmpty)
        let (_, fresh) = try await fixture.manager.mount(
            target: ServedTarget.name, lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false, origin: .api)
        #expect(
            Array(try await fresh.read(offset: 4096, length: 512).readableBytesView)
                == Array(fixture.disk[4096..<4608]))
        await fresh.close()
        await fixture.cache.close()
    }
}

@Suite("Readahead")
struct ReadaheadTests {
    @Test("a sequential reader keeps several chunk fetches in flight (readahead), and reads the right bytes")
    func sequentialReadahead() async throws {
        let throttled = Mutex<ThrottledChunkSource?>(nil)
        let fixture = try await Fixture.make { base in
            let source = ThrottledChunkSource(base: base, throttle: ReadThrottle(latency: .milliseconds(30)))
            throttled.withLock { $0 = source }
            return source
        }
        let (_, device) = try await fixture.manager.mount(
            target: ServedTarget.name, lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: true,
            origin: .configuration)
        var image: [UInt8] = []
        var offset: UInt64 = 0
        while offset < device.capacity {
            let piece = try await device.read(offset: offset, length: 256 << 10)
            image += Array(piece.readableBytesView)
            offset += 256 << 10
        }
        #expect(image == fixture.disk)
        let overlap = try #require(throttled.withLock { $0 }).mostConcurrentWaits
        #expect(overlap >= 3, "at most \(overlap) chunk fetches overlapped")
        await device.close()
        await fixture.cache.close()
    }
}
