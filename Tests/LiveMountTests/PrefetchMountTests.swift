import BlockDevice
import Cache
import Foundation
import GuestFS
import LiveMount
import Prefetch
import Repository
import Testing

/// 1 MiB chunks of `sampleDisk()` in 512-byte blocks.
private let blocksPerChunk: UInt64 = 2048

@Suite("Recording and prefetching on live mounts")
struct PrefetchMountTests {
    @Test("a boot recording over iSCSI stores every read in order with where it was served from")
    func recordsBootReads() async throws {
        let scratch = try Scratch()
        let store = try TraceStore.open(path: scratch.path + "/traces.sqlite")
        let fixture = try await Fixture.make()
        let source = ThrottledChunkSource(base: fixture.repository.chunkSource, throttle: ReadThrottle(latency: .milliseconds(2)))
        let manager = try MountManager(
            repository: fixture.repository, source: source, cache: fixture.cache,
            directory: fixture.scratch.path + "/state2", traces: store, logger: quietLogger)
        let (_, device) = try await manager.mount(
            target: ServedTarget.name, lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false,
            origin: .api, options: MountOptions(recordBootSeconds: 60))
        let served = try await ServedTarget.start([0: device])
        // The "boot": chunk 2, chunk 0, chunk 2 again (cached now), zero chunk 7, then chunk 12's two halves.
        let reads: [(UInt64, Int)] = [
            (2 * blocksPerChunk, 8), (0, 16), (2 * blocksPerChunk + 8, 8), (7 * blocksPerChunk, 64),
            (12 * blocksPerChunk, 1024), (12 * blocksPerChunk + 1024, 1024),
        ]
        let url = served.url()
        let data = try await onThread {
            let client = ISCSIClient()
            try client.connect(url: url, initiatorName: "iqn.2026-11.org.livemount:booter")
            defer { try? client.logout() }
            return try reads.map { try client.read(lba: $0.0, blocks: $0.1) }
        }
        #expect(data[0] == Array(fixture.disk[(2 << 20)..<((2 << 20) + 4096)]))
        #expect(device.activity.recording?.reads == reads.count)
        let id = try #require(await device.activity.stopRecording())
        let trace = try #require(try store.trace(id: id))
        #expect(trace.info.profile == "web01")
        #expect(trace.info.vm == "web01")
        #expect(trace.info.chunkSize == 1 << 20)
        #expect(trace.reads.map(\.lba) == reads.map(\.0))
        #expect(trace.reads.map(\.blocks) == reads.map { UInt32($0.1) })
        #expect(trace.reads.map(\.source) == [.backup, .backup, .cache, .zero, .backup, .cache])
        #expect(trace.reads.first?.issued == 0)
        #expect(zip(trace.reads, trace.reads.dropFirst()).allSatisfy { $0.issued <= $1.issued })
        #expect(trace.reads.allSatisfy { $0.completed >= $0.issued && !$0.prefetched })
        // A read from the backup waited for the injected latency; the trace shows it.
        #expect(trace.reads[0].completed - trace.reads[0].issued >= 2000)
        await served.server.shutdown()
        await device.close()
    }

    @Test("a mount with a plan pre-stages it before going live, then reports precision and recall")
    func prestagesAndCounts() async throws {
        let scratch = try Scratch()
        let store = try TraceStore.open(path: scratch.path + "/traces.sqlite")
        let chunk: UInt64 = 1 << 20
        // The plan: chunks 4, 2, 12 early, chunk 5 late (beyond the pre-stage window of 1 s).
        let plan = PrefetchPlan(
            profile: "web01", granularity: Int(chunk), traceIDs: [], createdAt: 0,
            entries: [
                PlanEntry(offset: 4 * chunk, length: chunk, support: 1, expectedTime: 0),
                PlanEntry(offset: 2 * chunk, length: chunk, support: 1, expectedTime: 100_000),
                PlanEntry(offset: 12 * chunk, length: chunk, support: 1, expectedTime: 200_000),
                PlanEntry(offset: 5 * chunk, length: chunk, support: 0.5, expectedTime: 5_000_000),
            ])
        try store.save(plan)
        let fixture = try await Fixture.make()
        let source = ThrottledChunkSource(base: fixture.repository.chunkSource, throttle: ReadThrottle(latency: .milliseconds(20)))
        let manager = try MountManager(
            repository: fixture.repository, source: source, cache: fixture.cache,
            directory: fixture.scratch.path + "/state2", traces: store,
            prefetch: PrefetchSettings(prestageSeconds: 1, leadBytes: 1 << 20, maxInFlight: 1), logger: quietLogger)
        let (_, device) = try await manager.mount(
            target: ServedTarget.name, lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false,
            origin: .api, options: MountOptions(recordBootSeconds: 60))
        // Pre-staged before the mount returned (before the LUN could be added to a target).
        let manifest = device.manifest
        for index in [4, 2, 12] {
            #expect(fixture.cache.contains(try #require(manifest.chunk(at: index))), "chunk \(index) pre-staged")
        }
        let prefetcher = try #require(device.activity.prefetcher)
        #expect(prefetcher.statistics.prestagedBytes == 3 * chunk)
        #expect(prefetcher.statistics.stagedBytes >= 3 * chunk)
        // The guest boots: the plan's reads hit; chunk 0 is not in the plan and misses.
        device.sessionStarted()
        for index in [4, 2, 12] {
            let data = try await device.read(offset: UInt64(index) * chunk, length: 4096)
            #expect(Array(data.readableBytesView) == Array(fixture.disk[(index << 20)..<((index << 20) + 4096)]))
        }
        _ = try await device.read(offset: 0, length: 4096)
        let statistics = prefetcher.statistics
        #expect(statistics.hitBytes == 3 * chunk)
        #expect(statistics.missBytes == chunk)
        #expect(statistics.recall == 0.75)
        #expect(statistics.position == 2)
        let id = try #require(await device.activity.stopRecording())
        let trace = try #require(try store.trace(id: id))
        #expect(trace.reads.map(\.prefetched) == [true, true, true, false])
        #expect(trace.reads.map(\.source) == [.cache, .cache, .cache, .backup])
        // The last entry (chunk 5) is staged once the guest reaches the plan's end: precision counts it unread.
        for _ in 0..<200 where !fixture.cache.contains(try #require(manifest.chunk(at: 5))) {
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        #expect(fixture.cache.contains(try #require(manifest.chunk(at: 5))))
        let later = prefetcher.statistics
        #expect(later.stagedBytes == 4 * chunk)
        #expect(later.usedBytes == 3 * chunk)
        #expect(later.precision == 0.75)
        await device.close()
        #expect(fixture.cache.statistics.pinnedSlots == 0)
    }

    @Test("a mount with prefetch off, or whose profile has no plan, follows nothing")
    func prefetchOff() async throws {
        let scratch = try Scratch()
        let store = try TraceStore.open(path: scratch.path + "/traces.sqlite")
        try store.save(
            PrefetchPlan(
                profile: "web01", granularity: 1 << 20, traceIDs: [], createdAt: 0,
                entries: [PlanEntry(offset: 2 << 20, length: 1 << 20, support: 1, expectedTime: 0)]))
        let fixture = try await Fixture.make()
        let manager = try MountManager(
            repository: fixture.repository, source: fixture.repository.chunkSource, cache: fixture.cache,
            directory: fixture.scratch.path + "/state2", traces: store, logger: quietLogger)
        let (_, off) = try await manager.mount(
            target: ServedTarget.name, lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: true, origin: .api,
            options: MountOptions(prefetch: false))
        #expect(off.activity.prefetcher == nil)
        #expect(!fixture.cache.contains(try #require(off.manifest.chunk(at: 2))))
        let (_, other) = try await manager.mount(
            target: ServedTarget.name, lun: 1, vm: "web01", backupID: nil, disk: nil, readOnly: true, origin: .api,
            options: MountOptions(profile: "no-such-profile"))
        #expect(other.activity.prefetcher == nil)
        await off.close()
        await other.close()
    }
}

@Suite("Guest files in prefetch profiles")
struct GuestFilePrefetchTests {
    @Test("a profile's guest files are found in the backup (ext4) and pre-staged; a missing one is reported")
    func stagesGuestFiles() async throws {
        let scratch = try Scratch()
        let root = scratch.path + "/root"
        try FileManager.default.createDirectory(atPath: root + "/boot", withIntermediateDirectories: true)
        let kernel = pattern(3 << 20, seed: 77)
        _ = FileManager.default.createFile(atPath: root + "/boot/vmlinuz", contents: Data(kernel))
        _ = FileManager.default.createFile(atPath: root + "/other", contents: Data(pattern(8 << 20, seed: 78)))
        let image = scratch.path + "/disk.img"
        let mkfs = Process()
        mkfs.executableURL = URL(fileURLWithPath: "/usr/sbin/mkfs.ext4")
        mkfs.arguments = ["-q", "-F", "-d", root, image, "64M"]
        try mkfs.run()
        mkfs.waitUntilExit()
        try #require(mkfs.terminationStatus == 0, "mkfs.ext4 -d failed")

        // Where the kernel really is, read from the image file directly.
        let expected = try #require(
            try await GuestFiles.locate(["/boot/vmlinuz"], on: FileDiskReader(path: image)).first?.get())
        #expect(expected.dataBytes == UInt64(kernel.count))

        let repository = try BackupRepository.open(path: scratch.path + "/repo", create: true, logger: quietLogger)
        _ = FileManager.default.createFile(atPath: scratch.path + "/vm.conf", contents: Data("x\n".utf8))
        _ = try repository.ingest(
            IngestRequest(
                vm: "guest", configurationPath: scratch.path + "/vm.conf",
                disks: [IngestDisk(name: "disk0", source: image)]))
        let store = try TraceStore.open(path: scratch.path + "/traces.sqlite")
        try store.setFiles(["/boot/vmlinuz", "/etc/missing"], profile: "guest")
        let cache = try await ChunkCache.open(
            CacheConfiguration(
                dataPath: scratch.path + "/cache.img", indexPath: scratch.path + "/cache.img.index", capacity: 64 << 20),
            logger: quietLogger)
        let manager = try MountManager(
            repository: repository, source: repository.chunkSource, cache: cache, directory: scratch.path + "/state",
            traces: store, logger: quietLogger)
        let (_, device) = try await manager.mount(
            target: ServedTarget.name, lun: 0, vm: "guest", backupID: nil, disk: nil, readOnly: true, origin: .api)
        let manifest = device.manifest
        let chunkSize = UInt64(manifest.chunkSize)
        var kernelChunks = Set<Int>()
        for extent in expected.extents {
            for index in Int(extent.offset / chunkSize)...Int((extent.offset + extent.length - 1) / chunkSize) {
                kernelChunks.insert(index)
            }
        }
        for index in kernelChunks {
            let id = try #require(manifest.chunk(at: index))
            #expect(cache.contains(id), "chunk \(index) of /boot/vmlinuz is staged")
        }
        // The other file's chunks (those not shared with the kernel or metadata) were not fetched.
        let other = try #require(
            try await GuestFiles.locate(["/other"], on: FileDiskReader(path: image)).first?.get())
        let otherOnly = other.extents.flatMap { extent in
            Array(Int(extent.offset / chunkSize)...Int((extent.offset + extent.length - 1) / chunkSize))
        }.filter { !kernelChunks.contains($0) }
        #expect(!otherOnly.isEmpty)
        #expect(otherOnly.contains { index in manifest.chunk(at: index).map { !cache.contains($0) } ?? false })
        let statistics = try #require(device.activity.prefetcher?.statistics)
        #expect(statistics.filesStaged >= kernelChunks.count)
        #expect(statistics.fileProblems.count == 1)
        #expect(statistics.fileProblems.first?.contains("/etc/missing") == true)
        await device.close()
    }
}
