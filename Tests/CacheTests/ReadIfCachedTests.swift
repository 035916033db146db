import BlockDevice
import Foundation
import NIOCore
import Repository
import Testing

@testable import Cache

/// Chunk and slot size in these tests: 64 KiB.
private let chunkLength = 64 * 1024

private func configuration(_ dir: ScratchDirectory, slots: Int) -> CacheConfiguration {
    CacheConfiguration(
        dataPath: dir.path("cache.data"), indexPath: dir.path("cache.sqlite"),
        capacity: UInt64(slots * chunkLength), slotSize: chunkLength, maxConcurrentFetches: 4)
}

/// Runs `readIfCached` and waits for its completion; nil when it declined.
private func cachedRead(
    _ cache: ChunkCache, _ id: ChunkID, range: Range<Int>, length: Int = chunkLength
) async -> Result<ByteBuffer, ChunkReadError>? {
    await withCheckedContinuation { (continuation: CheckedContinuation<Result<ByteBuffer, ChunkReadError>?, Never>) in
        let started = cache.readIfCached(id, chunkLength: length, range: range) { result in
            continuation.resume(returning: result)
        }
        if !started { continuation.resume(returning: nil) }
    }
}

/// Runs an overlay's `readAsync` and waits for its completion; nil when it declined.
private func overlayRead(
    _ overlay: WriteOverlay, offset: UInt64, length: Int
) async -> Result<ByteBuffer, BlockDeviceError>? {
    await withCheckedContinuation { (continuation: CheckedContinuation<Result<ByteBuffer, BlockDeviceError>?, Never>) in
        let started = overlay.readAsync(offset: offset, length: length) { result in
            continuation.resume(returning: result)
        }
        if !started { continuation.resume(returning: nil) }
    }
}

@Suite("ChunkCache.readIfCached and WriteOverlay.readAsync")
struct ReadIfCachedTests {
    @Test("a miss declines with no effect; a verified hit serves the right bytes and counts as a hit")
    func missThenHit() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength)
        let cache = try await ChunkCache.open(configuration(dir, slots: 4), logger: testLogger)
        let id = chunkID(3)
        let expected = chunkBytes(3, length: chunkLength)

        #expect(await cachedRead(cache, id, range: 0..<4096) == nil)
        #expect(cache.statistics.hits == 0)
        #expect(cache.statistics.misses == 0)
        #expect(source.reads(id) == 0)

        _ = try await cache.stage(id, chunkLength: chunkLength, source: source)
        for range in [0..<4096, 100..<5000, 4097..<60000, 0..<chunkLength, (chunkLength - 512)..<chunkLength] {
            let result = try #require(await cachedRead(cache, id, range: range))
            #expect(try result.get().bytes == Array(expected[range]), "range \(range)")
        }
        #expect(cache.statistics.hits == 5)
        #expect(source.reads(id) == 1)
        // A length the slot does not hold, or a range outside the chunk, declines.
        #expect(await cachedRead(cache, id, range: 0..<4096, length: chunkLength - 4096) == nil)
        #expect(await cachedRead(cache, id, range: 0..<(chunkLength + 1), length: chunkLength) == nil)
        #expect(cache.contains(id))
        await cache.close()
        #expect(await cachedRead(cache, id, range: 0..<4096) == nil)
    }

    @Test("after a restart a slot is not served by the callback path until read has checked its CRC32C")
    func unverifiedDeclines() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength)
        let config = configuration(dir, slots: 4)
        let cache = try await ChunkCache.open(config, logger: testLogger)
        let id = chunkID(5)
        let expected = chunkBytes(5, length: chunkLength)
        _ = try await cache.stage(id, chunkLength: chunkLength, source: source)
        await cache.close()

        let reopened = try await ChunkCache.open(config, logger: testLogger)
        #expect(reopened.contains(id))
        #expect(await cachedRead(reopened, id, range: 0..<4096) == nil)
        let checked = try await reopened.read(id, chunkLength: chunkLength, range: 0..<4096, source: source)
        #expect(checked.bytes == Array(expected[0..<4096]))
        let result = try #require(await cachedRead(reopened, id, range: 8192..<12288))
        #expect(try result.get().bytes == Array(expected[8192..<12288]))
        #expect(source.reads(id) == 1)
        await reopened.close()
    }

    @Test("the overlay's readAsync returns what was written; bad ranges and a closed overlay decline")
    func overlayReadAsync() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let overlay = try await WriteOverlay.open(
            dataPath: dir.path("overlay.data"), mapPath: dir.path("overlay.sqlite"), size: 1 << 20, blockSize: 512,
            logger: testLogger)
        let data = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }
        try await overlay.write(offset: 4608, data: ByteBuffer(bytes: data), fua: false)
        let result = try #require(await overlayRead(overlay, offset: 4608, length: 8192))
        #expect(try result.get().bytes == data)
        let part = try #require(await overlayRead(overlay, offset: 5120, length: 1024))
        #expect(try part.get().bytes == Array(data[512..<1536]))
        #expect(await overlayRead(overlay, offset: 100, length: 512) == nil)
        #expect(await overlayRead(overlay, offset: (1 << 20) - 512, length: 1024) == nil)
        await overlay.close()
        #expect(await overlayRead(overlay, offset: 4608, length: 512) == nil)
    }
}

/// Polls `readIfResident` until the page cache holds the range (its first misses start the kernel's readahead).
private func residentRead(_ cache: ChunkCache, _ id: ChunkID, range: Range<Int>) async throws -> ByteBuffer? {
    for _ in 0..<200 {
        if let bytes = cache.readIfResident(id, chunkLength: chunkLength, range: range) { return bytes }
        try await Task.sleep(nanoseconds: 5_000_000)
    }
    return nil
}

@Suite("ChunkCache.readIfResident (inline page-cache hits)")
struct ReadIfResidentTests {
    @Test("a verified slot is served inline with the right bytes; a miss or a closed cache declines")
    func servesResidentSlots() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength)
        let cache = try await ChunkCache.open(configuration(dir, slots: 4), logger: testLogger)
        let id = chunkID(7)
        #expect(cache.readIfResident(id, chunkLength: chunkLength, range: 0..<4096) == nil)
        _ = try await cache.stage(id, chunkLength: chunkLength, source: source)
        let expected = chunkBytes(7, length: chunkLength)
        for range in [0..<4096, 513..<9000, 0..<chunkLength] {
            let bytes = try #require(try await residentRead(cache, id, range: range), "range \(range)")
            #expect(bytes.bytes == Array(expected[range]))
        }
        #expect(cache.statistics.hits >= 3)
        #expect(source.reads(id) == 1)
        #expect(cache.readIfResident(id, chunkLength: chunkLength - 4096, range: 0..<4096) == nil)
        await cache.close()
        #expect(cache.readIfResident(id, chunkLength: chunkLength, range: 0..<4096) == nil)
    }

    @Test("a slot rewritten with another chunk (O_DIRECT) is never served with the old chunk's cached pages")
    func coherentAfterSlotReuse() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let source = FakeSource(length: chunkLength)
        let cache = try await ChunkCache.open(configuration(dir, slots: 2), logger: testLogger)
        for round in 0..<6 {
            // Each round: a chunk is read inline (its pages now in the page cache), then two more chunks
            // evict it and one of them reuses its slot.
            let first = chunkID(100 + round * 3)
            _ = try await cache.stage(first, chunkLength: chunkLength, source: source)
            let firstBytes = try #require(try await residentRead(cache, first, range: 0..<chunkLength))
            #expect(firstBytes.bytes == chunkBytes(100 + round * 3, length: chunkLength))
            for n in [101 + round * 3, 102 + round * 3] {
                _ = try await cache.stage(chunkID(n), chunkLength: chunkLength, source: source)
            }
            #expect(cache.readIfResident(first, chunkLength: chunkLength, range: 0..<4096) == nil)
            for n in [101 + round * 3, 102 + round * 3] {
                let bytes = try #require(try await residentRead(cache, chunkID(n), range: 0..<chunkLength))
                #expect(bytes.bytes == chunkBytes(n, length: chunkLength), "chunk \(n) in round \(round)")
            }
        }
        await cache.close()
    }
}
