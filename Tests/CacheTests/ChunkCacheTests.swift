import Foundation
import NIOCore
import Repository
import Testing

@testable import Cache

/// Chunk and slot size in these tests: 64 KiB.
private let chunkLength = 64 * 1024

private func configuration(_ dir: ScratchDirectory, slots: Int, maxConcurrentFetches: Int = 16) -> CacheConfiguration {
    CacheConfiguration(
        dataPath: dir.path("cache.data"), indexPath: dir.path("cache.sqlite"),
        capacity: UInt64(slots * chunkLength), slotSize: chunkLength, maxConcurrentFetches: maxConcurrentFetches)
}

@Suite("ChunkCache")
struct ChunkCacheTests {
    @Test("a miss fetches once, then the slot serves the same bytes")
    func missThenHit() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength)
        let cache = try await ChunkCache.open(configuration(dir, slots: 8), logger: testLogger)
        let id = chunkID(1)
        let expected = chunkBytes(1, length: chunkLength)

        let first = try await cache.read(id, chunkLength: chunkLength, range: 100..<5000, source: source)
        #expect(first.bytes == Array(expected[100..<5000]))
        #expect(try await cache.stage(id, chunkLength: chunkLength, source: source) == false)
        #expect(cache.contains(id))

        let second = try await cache.read(id, chunkLength: chunkLength, range: 4097..<60000, source: source)
        #expect(second.bytes == Array(expected[4097..<60000]))
        let whole = try await cache.read(id, chunkLength: chunkLength, range: 0..<chunkLength, source: source)
        #expect(whole.bytes == expected)
        #expect(source.reads(id) == 1)
        let stats = cache.statistics
        #expect(stats.misses == 1)
        #expect(stats.hits == 2)
        #expect(stats.fetches == 1)
        #expect(stats.bytesFetched == UInt64(chunkLength))
        #expect(stats.slotsUsed == 1)
        #expect(stats.slotCount == 8)
        await cache.close()
    }

    @Test("16 concurrent readers of one cold chunk share a single fetch")
    func singleFlight() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength, gated: true)
        let cache = try await ChunkCache.open(configuration(dir, slots: 8), logger: testLogger)
        let id = chunkID(7)
        let expected = chunkBytes(7, length: chunkLength)
        let results = Task {
            await withTaskGroup(of: (Int, [UInt8]?).self) { group in
                for reader in 0..<16 {
                    group.addTask {
                        let start = reader * 4096
                        let bytes = try? await cache.read(
                            id, chunkLength: chunkLength, range: start..<start + 4096, source: source,
                            priority: reader.isMultiple(of: 2) ? .foreground : .background)
                        return (reader, bytes?.bytes)
                    }
                }
                var all: [Int: [UInt8]?] = [:]
                for await (reader, bytes) in group { all[reader] = bytes }
                return all
            }
        }
        await eventually("all 16 readers wait") { cache.statistics.misses == 16 }
        #expect(source.inFlight == 1)
        source.release(id)
        let all = await results.value
        for reader in 0..<16 {
            let start = reader * 4096
            #expect(all[reader] == Array(expected[start..<start + 4096]))
        }
        #expect(source.reads(id) == 1)
        #expect(cache.statistics.fetches == 1)
        await cache.close()
    }

    @Test("closing and reopening keeps cached chunks warm")
    func warmRestart() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength)
        let config = configuration(dir, slots: 8)
        let cache = try await ChunkCache.open(config, logger: testLogger)
        for n in 0..<3 { try await cache.stage(chunkID(n), chunkLength: chunkLength, source: source) }
        await cache.close()

        let reopened = try await ChunkCache.open(config, logger: testLogger)
        #expect(reopened.statistics.slotsUsed == 3)
        for n in 0..<3 {
            #expect(reopened.contains(chunkID(n)))
            let bytes = try await reopened.read(chunkID(n), chunkLength: chunkLength, range: 512..<9000, source: source)
            #expect(bytes.bytes == Array(chunkBytes(n, length: chunkLength)[512..<9000]))
            #expect(source.reads(chunkID(n)) == 1)
        }
        #expect(reopened.statistics.hits == 3)
        #expect(reopened.statistics.misses == 0)
        await reopened.close()
    }

    @Test("a slot corrupted behind the cache's back fails its CRC after reopen and is refetched")
    func corruptedSlot() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength)
        let config = configuration(dir, slots: 8)
        let cache = try await ChunkCache.open(config, logger: testLogger)
        let bad = chunkID(1)
        let good = chunkID(2)
        try await cache.stage(bad, chunkLength: chunkLength, source: source)
        try await cache.stage(good, chunkLength: chunkLength, source: source)
        let slot = try #require(cache.slot(of: bad))
        await cache.close()

        // Garbage over the middle of the slot, where a sub-range read would not look.
        let handle = try #require(FileHandle(forWritingAtPath: config.dataPath))
        try handle.seek(toOffset: UInt64(slot * chunkLength + 40_000))
        try handle.write(contentsOf: Data(repeating: 0xEE, count: 4096))
        try handle.close()

        let reopened = try await ChunkCache.open(config, logger: testLogger)
        let bytes = try await reopened.read(bad, chunkLength: chunkLength, range: 0..<4096, source: source)
        #expect(bytes.bytes == Array(chunkBytes(1, length: chunkLength)[0..<4096]))
        #expect(source.reads(bad) == 2)
        let whole = try await reopened.read(bad, chunkLength: chunkLength, range: 0..<chunkLength, source: source)
        #expect(whole.bytes == chunkBytes(1, length: chunkLength))
        let other = try await reopened.read(good, chunkLength: chunkLength, range: 0..<chunkLength, source: source)
        #expect(other.bytes == chunkBytes(2, length: chunkLength))
        #expect(source.reads(good) == 1)
        await reopened.close()
    }

    @Test(
        "a crash part-way through reusing a slot never serves another chunk's bytes",
        arguments: [ChunkCache.FillFault.afterClear, .afterDataWrite])
    func crashDuringReuse(fault: ChunkCache.FillFault) async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength)
        let config = configuration(dir, slots: 2)
        let crashed = try await ChunkCache.open(config, logger: testLogger)
        try await crashed.stage(chunkID(1), chunkLength: chunkLength, source: source)
        try await crashed.stage(chunkID(2), chunkLength: chunkLength, source: source)
        crashed.injectFillFault(fault)
        // Chunk 3 evicts chunk 1 (A1in tail); the fill stops where the fault says, as kill -9 would.
        try await crashed.stage(chunkID(3), chunkLength: chunkLength, source: source)
        #expect(!crashed.contains(chunkID(1)))

        // Reopen with the index and data file as the crash left them, without closing the first instance.
        let reopened = try await ChunkCache.open(config, logger: testLogger)
        #expect(!reopened.contains(chunkID(1)))
        #expect(!reopened.contains(chunkID(3)))
        for n in 1...3 {
            let bytes = try await reopened.read(
                chunkID(n), chunkLength: chunkLength, range: 0..<chunkLength, source: source)
            #expect(bytes.bytes == chunkBytes(n, length: chunkLength))
        }
        #expect(source.reads(chunkID(1)) == 2)
        #expect(source.reads(chunkID(2)) == 1)
        await reopened.close()
        await crashed.close()
    }

    @Test("a sequential scan of four times the capacity keeps the hot set")
    func scanResistance() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength)
        let slots = 20
        let cache = try await ChunkCache.open(configuration(dir, slots: slots), logger: testLogger)
        let hot = (0..<10).map { chunkID($0) }
        // The hot set: read, then read again (a re-reference).
        for _ in 0..<2 {
            for id in hot { _ = try await cache.read(id, chunkLength: chunkLength, range: 0..<8192, source: source) }
        }
        // The scan: 4 × capacity of other chunks, each read once front to back in four pieces.
        let quarter = chunkLength / 4
        for n in 1000..<(1000 + 4 * slots) {
            for piece in 0..<4 {
                let range = piece * quarter..<(piece + 1) * quarter
                let bytes = try await cache.read(
                    chunkID(n), chunkLength: chunkLength, range: range,
                    source: FakeSource(length: chunkLength, chunks: n..<n + 1))
                #expect(bytes.readableBytes == quarter)
            }
            // Under load the slot writes run behind the reads; a fill that finds every slot still being written
            // serves uncached and evicts nothing. Waiting for each fill makes the scan really evict.
            await cache.waitUntilFilled(chunkID(n))
        }
        let before = source.totalReads
        for id in hot { _ = try await cache.read(id, chunkLength: chunkLength, range: 0..<8192, source: source) }
        let hotHits = hot.count - (source.totalReads - before)
        #expect(hotHits * 10 >= hot.count * 9, "only \(hotHits) of \(hot.count) hot chunks survived the scan")
        #expect(cache.statistics.evictions > 0)
        await cache.close()
    }

    @Test("pinned chunks survive eviction pressure; with every slot pinned, misses are served uncached")
    func pinning() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength)
        let cache = try await ChunkCache.open(configuration(dir, slots: 4), logger: testLogger)
        let pinned = chunkID(1)
        #expect(try await cache.stage(pinned, chunkLength: chunkLength, source: source, pin: true))
        #expect(cache.statistics.pinnedSlots == 1)
        for n in 100..<130 { try await cache.stage(chunkID(n), chunkLength: chunkLength, source: source) }
        #expect(cache.contains(pinned))
        cache.unpin(pinned)
        #expect(cache.statistics.pinnedSlots == 0)
        for n in 200..<230 { try await cache.stage(chunkID(n), chunkLength: chunkLength, source: source) }
        #expect(!cache.contains(pinned))

        for n in 300..<304 { try await cache.stage(chunkID(n), chunkLength: chunkLength, source: source, pin: true) }
        #expect(cache.statistics.pinnedSlots == 4)
        #expect(try await cache.stage(chunkID(400), chunkLength: chunkLength, source: source))
        #expect(!cache.contains(chunkID(400)))
        let bytes = try await cache.read(chunkID(400), chunkLength: chunkLength, range: 0..<chunkLength, source: source)
        #expect(bytes.bytes == chunkBytes(400, length: chunkLength))
        #expect(source.reads(chunkID(400)) == 2)
        for n in 300..<304 { #expect(cache.contains(chunkID(n))) }
        await cache.close()
    }

    @Test("a source error reaches every sharing caller and caches nothing")
    func sourceErrors() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength, gated: true)
        let cache = try await ChunkCache.open(configuration(dir, slots: 4), logger: testLogger)
        let id = chunkID(5)
        source.fail(id)
        let outcomes = Task {
            await withTaskGroup(of: ChunkReadError.Code?.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        do {
                            _ = try await cache.read(id, chunkLength: chunkLength, range: 0..<4096, source: source)
                            return nil
                        } catch let error as ChunkReadError {
                            return error.code
                        } catch {
                            return nil
                        }
                    }
                }
                var codes: [ChunkReadError.Code?] = []
                for await code in group { codes.append(code) }
                return codes
            }
        }
        await eventually("all four readers wait") { cache.statistics.misses == 4 }
        source.release(id)
        #expect(await outcomes.value == [ChunkReadError.Code?](repeating: .missing, count: 4))
        #expect(source.reads(id) == 1)
        #expect(!cache.contains(id))
        #expect(cache.statistics.slotsUsed == 0)
        await #expect(throws: ChunkReadError.self) {
            try await cache.stage(id, chunkLength: chunkLength, source: source)
        }
        #expect(source.reads(id) == 2)
        await cache.close()
    }

    @Test("at most maxConcurrentFetches source reads run at once, and foreground waiters go first")
    func fetchLimitAndPriority() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength, gated: true)
        let cache = try await ChunkCache.open(
            configuration(dir, slots: 16, maxConcurrentFetches: 2), logger: testLogger)
        var tasks: [Task<Void, Never>] = []
        func background(_ n: Int) {
            tasks.append(Task { _ = try? await cache.stage(chunkID(n), chunkLength: chunkLength, source: source) })
        }
        func foreground(_ n: Int) {
            tasks.append(
                Task {
                    _ = try? await cache.read(chunkID(n), chunkLength: chunkLength, range: 0..<4096, source: source)
                })
        }
        background(1)
        background(2)
        await eventually("two fetches run") { source.started.count == 2 }
        background(3)
        await eventually("one background waiter") { cache.waitingFetches.background == 1 }
        background(4)
        await eventually("two background waiters") { cache.waitingFetches.background == 2 }
        foreground(11)
        await eventually("one foreground waiter") { cache.waitingFetches.foreground == 1 }
        foreground(12)
        await eventually("two foreground waiters") { cache.waitingFetches.foreground == 2 }
        // A foreground reader joining a waiting background fetch moves it to the foreground queue.
        foreground(4)
        await eventually("chunk 4 promoted") { cache.waitingFetches == (foreground: 3, background: 1) }
        #expect(source.inFlight == 2)

        let expectedOrder = [1, 2, 11, 12, 4, 3].map { chunkID($0) }
        for (step, id) in expectedOrder.enumerated() {
            source.release(id)
            if step + 2 < expectedOrder.count {
                await eventually("fetch \(step + 3) starts") { source.started.count == step + 3 }
            }
        }
        for task in tasks { await task.value }
        #expect(source.started == expectedOrder)
        #expect(source.maxInFlight == 2)
        await cache.close()
    }

    @Test("reopening with fewer slots or another slot size drops what no longer fits")
    func layoutChange() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength)
        var config = configuration(dir, slots: 8)
        let cache = try await ChunkCache.open(config, logger: testLogger)
        for n in 0..<8 { try await cache.stage(chunkID(n), chunkLength: chunkLength, source: source) }
        await cache.close()

        config.capacity = UInt64(4 * chunkLength)
        let smaller = try await ChunkCache.open(config, logger: testLogger)
        #expect(smaller.statistics.slotsUsed == 4)
        for n in 0..<8 {
            let bytes = try await smaller.read(
                chunkID(n), chunkLength: chunkLength, range: 0..<chunkLength, source: source)
            #expect(bytes.bytes == chunkBytes(n, length: chunkLength))
        }
        await smaller.close()

        config.slotSize = 2 * chunkLength
        config.capacity = UInt64(8 * chunkLength)
        let resized = try await ChunkCache.open(config, logger: testLogger)
        #expect(resized.statistics.slotsUsed == 0)
        #expect(resized.statistics.slotCount == 4)
        await resized.close()
    }

    @Test("configuration errors name the field")
    func badConfiguration() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        var config = configuration(dir, slots: 4)
        config.slotSize = 1000
        await #expect(throws: CacheError.self) { try await ChunkCache.open(config, logger: testLogger) }
        config.slotSize = chunkLength
        config.capacity = 100
        await #expect(throws: CacheError.self) { try await ChunkCache.open(config, logger: testLogger) }
    }
}
