import BlockDevice
import Cache
import Foundation
import LiveMount
import NIOCore
import Repository
import Testing

/// Runs `readAsync` and waits for its completion; nil when the device declined.
private func readViaCallback(
    _ device: LiveMountDevice, offset: UInt64, length: Int
) async -> Result<ByteBuffer, BlockDeviceError>? {
    await withCheckedContinuation { (continuation: CheckedContinuation<Result<ByteBuffer, BlockDeviceError>?, Never>) in
        let started = device.readAsync(offset: offset, length: length) { result in
            continuation.resume(returning: result)
        }
        if !started { continuation.resume(returning: nil) }
    }
}

private func bytes(_ result: Result<ByteBuffer, BlockDeviceError>?) -> [UInt8]? {
    guard case .success(let buffer) = result else { return nil }
    return Array(buffer.readableBytesView)
}

@Suite("LiveMountDevice.readAsync", .serialized)
struct LiveMountReadAsyncTests {
    @Test("cached chunks, zero chunks and overlay data are served by readAsync; misses and mixed ranges decline")
    func servesWhatNeedsNoFetch() async throws {
        let fixture = try await Fixture.make()
        let (_, device) = try await fixture.manager.mount(
            target: "iqn.2026-11.org.livemount:async", lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false,
            origin: .configuration)
        let mib = 1 << 20
        let disk = fixture.disk

        // Chunk 2 is not cached yet: decline, fetch nothing.
        #expect(await readViaCallback(device, offset: UInt64(2 * mib + 4096), length: 4096) == nil)
        #expect(fixture.cache.statistics.fetches == 0)
        // After an ordinary read (and its slot write, which runs behind it) the chunk is resident and verified.
        let viaRead = try await device.read(offset: UInt64(2 * mib), length: 4096)
        #expect(Array(viaRead.readableBytesView) == Array(disk[2 * mib..<2 * mib + 4096]))
        let id = try #require(device.manifest.chunk(at: 2))
        try await fixture.cache.stage(id, chunkLength: mib, source: fixture.repository.chunkSource)
        #expect(fixture.cache.contains(id))
        let hitsBefore = fixture.cache.statistics.hits
        for (offset, length) in [(2 * mib + 512, 4096), (2 * mib + 65536, 128 * 1024), (3 * mib - 512, 512)] {
            let result = await readViaCallback(device, offset: UInt64(offset), length: length)
            #expect(bytes(result) == Array(disk[offset..<offset + length]), "offset \(offset)")
        }
        #expect(fixture.cache.statistics.hits == hitsBefore + 3)

        // A zero chunk (elided in the backup) completes at once with zeros.
        #expect(bytes(await readViaCallback(device, offset: UInt64(7 * mib), length: 8192)) == [UInt8](repeating: 0, count: 8192))
        // A range across two chunks declines while one of them is not cached (`read` fetches them in parallel)...
        #expect(await readViaCallback(device, offset: UInt64(3 * mib - 512), length: 1024) == nil)
        #expect(await readViaCallback(device, offset: UInt64(6 * mib - 4096), length: 8192) == nil)
        #expect(fixture.cache.statistics.fetches == 1)
        // ...and is served, its pieces joined in order, once every chunk is cached or zero.
        let third = try #require(device.manifest.chunk(at: 3))
        try await fixture.cache.stage(third, chunkLength: mib, source: fixture.repository.chunkSource)
        let hitsAcross = fixture.cache.statistics.hits
        let across = await readViaCallback(device, offset: UInt64(3 * mib - 512), length: 1024)
        #expect(bytes(across) == Array(disk[(3 * mib - 512)..<(3 * mib + 512)]))
        #expect(fixture.cache.statistics.hits == hitsAcross + 2)
        // A zero chunk (1) then a cached one (2), and three chunks: cached (2), cached (3), not cached (4).
        let zeroThenData = await readViaCallback(device, offset: UInt64(2 * mib - 4096), length: 3 * 4096)
        #expect(bytes(zeroThenData) == Array(disk[(2 * mib - 4096)..<(2 * mib + 2 * 4096)]))
        #expect(await readViaCallback(device, offset: UInt64(2 * mib + 4096), length: 2 * mib) == nil)
        let twoWhole = await readViaCallback(device, offset: UInt64(2 * mib), length: 2 * mib)
        #expect(bytes(twoWhole) == Array(disk[(2 * mib)..<(4 * mib)]))

        // The guest's writes: one .data extent reads the overlay; data beside backup declines.
        let written = pattern(4096, seed: 77)
        try await device.write(offset: UInt64(2 * mib + 8192), data: ByteBuffer(bytes: written), fua: false)
        #expect(bytes(await readViaCallback(device, offset: UInt64(2 * mib + 8192), length: 4096)) == written)
        #expect(await readViaCallback(device, offset: UInt64(2 * mib + 4096), length: 8192) == nil)
        // Unmapped: zeros from the map alone.
        try await device.unmap(offset: UInt64(2 * mib), length: 4096)
        #expect(bytes(await readViaCallback(device, offset: UInt64(2 * mib), length: 4096)) == [UInt8](repeating: 0, count: 4096))

        await device.close()
        await fixture.cache.close()
    }

    @Test("a read across chunks that are zero or in the page cache is served inline, joined in order")
    func inlineAcrossChunks() async throws {
        let fixture = try await Fixture.make()
        let (_, device) = try await fixture.manager.mount(
            target: "iqn.2026-11.org.livemount:inline", lun: 0, vm: "web01", backupID: nil, disk: nil, readOnly: false,
            origin: .configuration)
        let mib = 1 << 20
        let disk = fixture.disk
        for index in [2, 3] {
            let id = try #require(device.manifest.chunk(at: index))
            try await fixture.cache.stage(id, chunkLength: mib, source: fixture.repository.chunkSource)
        }
        let fetches = fixture.cache.statistics.fetches
        // Polled: a piece's first miss starts the kernel's readahead of its slot.
        func inline(_ offset: Int, _ length: Int) async throws -> [UInt8]? {
            for _ in 0..<400 {
                if let data = device.readIfReady(offset: UInt64(offset), length: length) {
                    return Array(data.readableBytesView)
                }
                try await Task.sleep(nanoseconds: 5_000_000)
            }
            return nil
        }
        // Chunks 2 and 3 (cached), 1 (zero) and 2, and 1, 2, 3 whole.
        for (offset, length) in [(3 * mib - 512, 1024), (2 * mib - 4096, 3 * 4096), (mib, 3 * mib)] {
            let data = try #require(try await inline(offset, length), "offset \(offset) length \(length)")
            #expect(data == Array(disk[offset..<offset + length]), "offset \(offset) length \(length)")
        }
        // Chunk 4 is not cached: declines, and fetches nothing (`read` will).
        #expect(device.readIfReady(offset: UInt64(4 * mib - 512), length: 1024) == nil)
        #expect(fixture.cache.statistics.fetches == fetches)
        await device.close()
        await fixture.cache.close()
    }
}
