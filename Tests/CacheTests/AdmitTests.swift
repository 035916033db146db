import BlockDevice
import Cache
import Foundation
import NIOCore
import Repository
import Testing

private let chunkLength = 64 * 1024

private func configuration(_ dir: ScratchDirectory, slots: Int) -> CacheConfiguration {
    CacheConfiguration(
        dataPath: dir.path("cache.data"), indexPath: dir.path("cache.sqlite"),
        capacity: UInt64(slots * chunkLength), slotSize: chunkLength)
}

/// `read(admit: false)`: a one-pass reader (the relocation pump) does not fill the cache, yet shares fetches.
@Suite("Reads that do not fill the cache")
struct AdmitTests {
    @Test("a miss read with admit: false is served but not kept; a resident chunk is still a hit")
    func notKept() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength)
        let cache = try await ChunkCache.open(configuration(dir, slots: 8), logger: testLogger)
        let id = chunkID(3)
        let bytes = try await cache.read(id, chunkLength: chunkLength, range: 0..<4096, source: source, admit: false)
        #expect(bytes.bytes == Array(chunkBytes(3, length: chunkLength)[0..<4096]))
        #expect(!cache.contains(id))
        #expect(cache.statistics.slotsUsed == 0)
        // Read normally, it is kept; then admit: false reads are hits.
        _ = try await cache.read(id, chunkLength: chunkLength, range: 0..<4096, source: source)
        await eventually("the slot fills") { cache.contains(id) }
        _ = try await cache.read(id, chunkLength: chunkLength, range: 0..<4096, source: source, admit: false)
        #expect(source.reads(id) == 2)
        #expect(cache.statistics.hits >= 1)
        await cache.close()
    }

    @Test("a fetch shared by an admitting and a non-admitting reader is fetched once and kept")
    func sharedFetchKept() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength, gated: true)
        let cache = try await ChunkCache.open(configuration(dir, slots: 8), logger: testLogger)
        let id = chunkID(4)
        let pump = Task { try await cache.read(id, chunkLength: chunkLength, range: 0..<100, source: source, admit: false) }
        await eventually("the pump's fetch starts") { source.reads(id) == 1 }
        let guest = Task { try await cache.read(id, chunkLength: chunkLength, range: 0..<100, source: source) }
        try await Task.sleep(for: .milliseconds(50))
        source.release(id)
        _ = try await pump.value
        _ = try await guest.value
        #expect(source.reads(id) == 1)
        await eventually("the shared fetch is kept") { cache.contains(id) }
        await cache.close()
    }
}
