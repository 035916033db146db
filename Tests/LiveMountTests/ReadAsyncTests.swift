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
        // A range across two chunks declines (the async path fetches chunks in parallel).
        #expect(await readViaCallback(device, offset: UInt64(3 * mib - 512), length: 1024) == nil)

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
}
