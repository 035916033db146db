import BlockDevice
import Foundation
import NIOCore
import Testing

@testable import Cache

private let lunSize: UInt64 = 8 << 20

private func pattern(_ seed: UInt8, _ count: Int) -> ByteBuffer {
    ByteBuffer(bytes: (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed) &* 29 &+ 1) })
}

private func open(_ dir: ScratchDirectory, blockSize: Int = 4096) async throws -> WriteOverlay {
    try await WriteOverlay.open(
        dataPath: dir.path("overlay.data"), mapPath: dir.path("overlay.sqlite"), size: lunSize, blockSize: blockSize,
        logger: testLogger)
}

@Suite("WriteOverlay")
struct WriteOverlayTests {
    @Test("writes read back and the map tells absent, data and zero apart")
    func writeReadExtents() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let overlay = try await open(dir)
        #expect(overlay.extents(offset: 0, length: 16384) == [OverlayExtent(offset: 0, length: 16384, kind: .absent)])

        try await overlay.write(offset: 8192, data: pattern(1, 8192), fua: false)
        #expect(try await overlay.read(offset: 8192, length: 8192) == pattern(1, 8192))
        #expect(overlay.dataBytes == 8192)
        #expect(
            overlay.extents(offset: 0, length: 32768) == [
                OverlayExtent(offset: 0, length: 8192, kind: .absent),
                OverlayExtent(offset: 8192, length: 8192, kind: .data),
                OverlayExtent(offset: 16384, length: 16384, kind: .absent),
            ])

        // Touching writes coalesce; an unmap splits a data run in three.
        try await overlay.write(offset: 16384, data: pattern(2, 16384), fua: false)
        try await overlay.unmap(offset: 12288, length: 8192)
        #expect(
            overlay.extents(offset: 4096, length: 32768) == [
                OverlayExtent(offset: 4096, length: 4096, kind: .absent),
                OverlayExtent(offset: 8192, length: 4096, kind: .data),
                OverlayExtent(offset: 12288, length: 8192, kind: .zero),
                OverlayExtent(offset: 20480, length: 12288, kind: .data),
                OverlayExtent(offset: 32768, length: 4096, kind: .absent),
            ])
        #expect(overlay.dataBytes == 16384)
        // Writing over the whole range makes it one data run again.
        try await overlay.write(offset: 8192, data: pattern(3, 24576), fua: false)
        #expect(
            overlay.extents(offset: 8192, length: 24576) == [OverlayExtent(offset: 8192, length: 24576, kind: .data)])
        #expect(try await overlay.read(offset: 8192, length: 24576) == pattern(3, 24576))
        await overlay.close()
    }

    @Test("unaligned or out-of-range requests are refused")
    func rangeChecks() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let overlay = try await open(dir, blockSize: 512)
        await #expect(throws: BlockDeviceError.self) {
            try await overlay.write(offset: 100, data: pattern(1, 512), fua: false)
        }
        await #expect(throws: BlockDeviceError.self) {
            try await overlay.write(offset: lunSize, data: pattern(1, 512), fua: false)
        }
        // 512-byte blocks on a 4 KiB file system: no read-modify-write, neighbours untouched.
        try await overlay.write(offset: 512, data: pattern(4, 512), fua: false)
        try await overlay.write(offset: 1536, data: pattern(5, 512), fua: true)
        #expect(try await overlay.read(offset: 512, length: 512) == pattern(4, 512))
        #expect(try await overlay.read(offset: 1536, length: 512) == pattern(5, 512))
        #expect(overlay.extents(offset: 0, length: 2048).map(\.kind) == [.absent, .data, .absent, .data])
        await overlay.close()
    }

    @Test("after a flush, writes and unmaps survive a reopen")
    func reopenAfterFlush() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let first = try await open(dir)
        try await first.write(offset: 0, data: pattern(1, 65536), fua: false)
        try await first.unmap(offset: 16384, length: 4096)
        try await first.write(offset: 1 << 20, data: pattern(2, 4096), fua: false)
        try await first.flush()
        // No close: the process dies here.
        let second = try await open(dir)
        #expect(
            second.extents(offset: 0, length: 65536) == [
                OverlayExtent(offset: 0, length: 16384, kind: .data),
                OverlayExtent(offset: 16384, length: 4096, kind: .zero),
                OverlayExtent(offset: 20480, length: 45056, kind: .data),
            ])
        let bytes = try await second.read(offset: 0, length: 65536)
        let expected = pattern(1, 65536)
        #expect(bytes.getSlice(at: 0, length: 16384) == expected.getSlice(at: 0, length: 16384))
        #expect(bytes.getSlice(at: 20480, length: 45056) == expected.getSlice(at: 20480, length: 45056))
        #expect(try await second.read(offset: 1 << 20, length: 4096) == pattern(2, 4096))
        #expect(second.dataBytes == 65536 - 4096 + 4096)
        await second.close()
        await first.destroy()
    }

    @Test("a FUA write survives a reopen without any flush")
    func fuaWithoutFlush() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let first = try await open(dir)
        try await first.write(offset: 4096, data: pattern(9, 8192), fua: true)
        let second = try await open(dir)
        #expect(second.extents(offset: 4096, length: 8192) == [OverlayExtent(offset: 4096, length: 8192, kind: .data)])
        #expect(try await second.read(offset: 4096, length: 8192) == pattern(9, 8192))
        await second.close()
    }

    @Test("unflushed writes after a flush may vanish but never corrupt flushed ones")
    func unflushedAfterFlush() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let first = try await open(dir)
        try await first.write(offset: 0, data: pattern(1, 32768), fua: false)
        try await first.flush()
        try await first.write(offset: 65536, data: pattern(2, 16384), fua: false)
        try await first.unmap(offset: 8192, length: 4096)

        let second = try await open(dir)
        // The flushed write is intact and whole.
        #expect(
            second.extents(offset: 0, length: 32768) == [OverlayExtent(offset: 0, length: 32768, kind: .data)]
                || second.extents(offset: 0, length: 32768).map(\.kind) == [.data, .zero, .data])
        let flushed = try await second.read(offset: 0, length: 32768)
        let expected = pattern(1, 32768)
        #expect(flushed.getSlice(at: 0, length: 8192) == expected.getSlice(at: 0, length: 8192))
        #expect(flushed.getSlice(at: 12288, length: 20480) == expected.getSlice(at: 12288, length: 20480))
        // The unflushed write is either gone (the backup shows through) or whole; never other bytes.
        for extent in second.extents(offset: 65536, length: 16384) {
            switch extent.kind {
            case .absent: break
            case .data:
                let bytes = try await second.read(offset: extent.offset, length: extent.length)
                #expect(bytes == pattern(2, 16384).getSlice(at: Int(extent.offset - 65536), length: extent.length))
            case .zero: Issue.record("a write never reads back as zeros")
            }
        }
        await second.close()
    }

    @Test("reopening with another size is refused; destroy removes both files")
    func layoutAndDestroy() async throws {
        let dir = try ScratchDirectory()
        defer { dir.remove() }
        let overlay = try await open(dir)
        try await overlay.write(offset: 0, data: pattern(1, 4096), fua: true)
        await #expect(throws: OverlayError.self) {
            try await WriteOverlay.open(
                dataPath: dir.path("overlay.data"), mapPath: dir.path("overlay.sqlite"), size: lunSize * 2,
                blockSize: 4096, logger: testLogger)
        }
        await overlay.destroy()
        #expect(!FileManager.default.fileExists(atPath: dir.path("overlay.data")))
        #expect(!FileManager.default.fileExists(atPath: dir.path("overlay.sqlite")))
        #expect(!FileManager.default.fileExists(atPath: dir.path("overlay.sqlite-wal")))
    }
}

@Suite("ExtentMap")
struct ExtentMapTests {
    @Test("set splits, replaces and coalesces runs and keeps the data byte count")
    func splitsAndMerges() {
        var map = ExtentMap()
        map.set(0, 100, .data)
        map.set(100, 200, .data)
        #expect(map.runs == [.init(start: 0, end: 200, kind: .data)])
        map.set(50, 60, .zero)
        #expect(map.runs.count == 3)
        #expect(map.dataBytes == 190)
        map.set(40, 70, .absent)
        #expect(map.runs == [.init(start: 0, end: 40, kind: .data), .init(start: 70, end: 200, kind: .data)])
        map.set(40, 70, .data)
        #expect(map.runs == [.init(start: 0, end: 200, kind: .data)])
        map.set(300, 400, .zero)
        map.set(150, 350, .zero)
        #expect(map.runs == [.init(start: 0, end: 150, kind: .data), .init(start: 150, end: 400, kind: .zero)])
        #expect(map.dataBytes == 150)
        #expect(map.cover(100, 500).map(\.kind) == [.data, .zero, .absent])
    }
}
