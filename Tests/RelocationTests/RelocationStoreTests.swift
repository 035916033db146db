import Foundation
import Relocation
import Testing

@Suite("Relocation store")
struct RelocationStoreTests {
    func temporaryPath() throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("relocation-store-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory + "/relocations.sqlite"
    }

    @Test("a checkpoint round-trips the record, the dirty regions and the contents, across a reopen")
    func roundTrip() throws {
        let path = try temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        var record = RelocationRecord(
            mountID: 7, target: "iqn.t", lun: 3, destination: "iscsi://u%secret@127.0.0.1:3260/iqn.x/0",
            totalBytes: 1 << 30, regionBytes: 1 << 20, destinationZeroed: false, maxRateMiB: 50)
        do {
            let store = try RelocationStore(path: path)
            try store.create(record)
            record.nextSequential = 12
            record.bytesWritten = 5 << 20
            record.phase = .verifying
            record.resumePhase = .verifying
            try store.checkpoint(record, dirty: [3, 5], content: [0: .zero, 1: .data(crc: 0xDEAD_BEEF), 3: .unknown])
            try store.addDirty(mountID: 7, regions: [5, 9])
        }
        let store = try RelocationStore(path: path)
        #expect(try store.record(mountID: 7) == record)
        let regions = try store.regions(mountID: 7)
        #expect(regions.dirty == [3, 5, 9])
        #expect(regions.content == [0: .zero, 1: .data(crc: 0xDEAD_BEEF), 3: .unknown])
        // A checkpoint replaces the dirty list.
        try store.checkpoint(record, dirty: [1], content: [:])
        #expect(try store.regions(mountID: 7).dirty == [1])
        try store.delete(mountID: 7)
        #expect(try store.record(mountID: 7) == nil)
        #expect(try store.records().isEmpty)
    }

    @Test("URLs are shown without the CHAP secret")
    func redaction() {
        #expect(RelocationPump.redact("iscsi://user%s3cret@127.0.0.1/iqn.a/0") == "iscsi://user%***@127.0.0.1/iqn.a/0")
        #expect(RelocationPump.redact("iscsi://127.0.0.1/iqn.a/0") == "iscsi://127.0.0.1/iqn.a/0")
        #expect(RelocationPump.redact("/var/lib/primary.img") == "/var/lib/primary.img")
    }
}
