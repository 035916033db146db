import BlockDevice
import Foundation
import LiveMount
import NIOCore
import Synchronization
import Testing

/// The placeholder of an archived LUN (issue 6): what it forwards where in each phase, when it refuses to seal,
/// and how its recall runs (once, for every waiting command; again after a failure).
@Suite("placeholder device")
struct PlaceholderDeviceTests {
    static let contents = pattern(64 * 512, seed: 61)

    @Test("while archiving, commands go to the primary; a write makes seal refuse and the primary stays served")
    func writeWhileArchivingRefusesSeal() async throws {
        let primary = MemoryBlockDevice(contents: Self.contents)
        let placeholder = PlaceholderDevice(archiving: primary)
        #expect(placeholder.blockCount == 64 && placeholder.blockSize == 512)
        let read = try await placeholder.read(offset: 512, length: 512)
        #expect(Array(read.readableBytesView) == Array(Self.contents[512..<1024]))

        var block = ByteBuffer()
        block.writeBytes([UInt8](repeating: 0xAB, count: 512))
        try await placeholder.write(offset: 0, data: block, fua: false)
        #expect(!placeholder.seal(), "a write after archiving began: the backup would miss it")
        #expect(placeholder.state == .archiving)
        let after = try await primary.read(offset: 0, length: 512)
        #expect(Array(after.readableBytesView) == [UInt8](repeating: 0xAB, count: 512), "the write reached the primary")
    }

    @Test("reads alone let it seal; sealed commands wait until archived, then recall once for all of them")
    func sealThenRecallOnce() async throws {
        let primary = MemoryBlockDevice(contents: Self.contents)
        let placeholder = PlaceholderDevice(archiving: primary)
        _ = try await placeholder.read(offset: 0, length: 4096)
        #expect(placeholder.seal())
        #expect(placeholder.state == .sealed)
        await placeholder.drainPrimary()

        let recalls = Atomic<Int>(0)
        let recalled = MemoryBlockDevice(contents: Self.contents)
        // Readers arriving while sealed wait; they must not see the primary or an error.
        let readers = (0..<8).map { index in
            Task { () throws -> [UInt8] in
                let buffer = try await placeholder.read(offset: UInt64(index) * 512, length: 512)
                return Array(buffer.readableBytesView)
            }
        }
        try await Task.sleep(for: .milliseconds(50))
        #expect(recalls.load(ordering: .relaxed) == 0, "nothing recalls before the archive is done")
        placeholder.archived {
            recalls.add(1, ordering: .relaxed)
            try await Task.sleep(for: .milliseconds(20))
            return recalled
        }
        for (index, reader) in readers.enumerated() {
            #expect(try await reader.value == Array(Self.contents[(index * 512)..<((index + 1) * 512)]))
        }
        #expect(recalls.load(ordering: .relaxed) == 1, "one recall for every waiting command")
        #expect(placeholder.state == .recalled)
        #expect(placeholder.recalledDevice === recalled)

        var block = ByteBuffer()
        block.writeBytes([UInt8](repeating: 0x5A, count: 512))
        try await placeholder.write(offset: 1024, data: block, fua: true)
        let back = try await recalled.read(offset: 1024, length: 512)
        #expect(Array(back.readableBytesView) == [UInt8](repeating: 0x5A, count: 512), "writes go to the recall")
    }

    @Test("an archived placeholder answers GET LBA STATUS and flush without recalling; a failed recall is retried")
    func failedRecallIsRetried() async throws {
        let attempts = Atomic<Int>(0)
        let recalled = MemoryBlockDevice(contents: Self.contents)
        let placeholder = PlaceholderDevice(blockSize: 512, blockCount: 64, readOnly: false, supportsUnmap: true) {
            if attempts.add(1, ordering: .relaxed).newValue == 1 {
                throw BlockDeviceError(.readFailed, "repository unreachable")
            }
            return recalled
        }
        try await placeholder.flush()
        _ = try await placeholder.allocationStatus(offset: 0, length: 4096)
        #expect(placeholder.readIfReady(offset: 0, length: 512) == nil)
        #expect(attempts.load(ordering: .relaxed) == 0, "flush and GET LBA STATUS do not recall")

        await #expect(throws: BlockDeviceError.self) { _ = try await placeholder.read(offset: 0, length: 512) }
        #expect(placeholder.state == .archived, "back to archived after a failed recall")
        let read = try await placeholder.read(offset: 0, length: 512)
        #expect(Array(read.readableBytesView) == Array(Self.contents[0..<512]))
        #expect(attempts.load(ordering: .relaxed) == 2)
    }

    @Test("unseal sends commands back to the primary")
    func unseal() async throws {
        let primary = MemoryBlockDevice(contents: Self.contents)
        let placeholder = PlaceholderDevice(archiving: primary)
        #expect(placeholder.seal())
        let waiting = Task { try await placeholder.read(offset: 0, length: 512) }
        try await Task.sleep(for: .milliseconds(20))
        placeholder.unseal()
        let read = try await waiting.value
        #expect(Array(read.readableBytesView) == Array(Self.contents[0..<512]))
        #expect(placeholder.state == .archiving)
    }
}
