import Foundation
import Testing

@testable import SCSI

/// Per-LUN usage for status and archive policies: media reads and writes count, and set the last access;
/// the commands initiators send to idle LUNs do not.
@Suite("LUN usage")
struct LUNUsageTests {
    @Test("reads and writes (all paths) count and set the last access; TEST UNIT READY and INQUIRY do not")
    func counts() async throws {
        let f = try Fixture()
        #expect(f.target.usage(lun: 0) == LUNUsage.Snapshot(reads: 0, writes: 0, lastAccess: nil, since: f.target.usage(lun: 0)!.since))
        #expect(f.target.usage(lun: 7) == nil)

        _ = await f.run(testUnitReady)
        _ = await f.run(inquiry())
        _ = await f.run([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0])  // READ CAPACITY (10)
        #expect(f.target.usage(lun: 0)?.lastAccess == nil)

        let before = Date()
        #expect(await f.run(write10(lba: 8, blocks: 1), data: [UInt8](repeating: 7, count: 512)).status == .good)
        #expect(await f.run(read10(lba: 8, blocks: 1)).status == .good)
        #expect(await f.run(cdb16(0x88, lba: 8, blocks: 1)).status == .good)  // READ (16)
        // The fast path counts too.
        let command = SCSICommand(
            cdb: read10(lba: 8, blocks: 1), nexus: nexusA, expectedDataTransferLength: 512, isWrite: false,
            isRead: true, dataOut: .init())
        if f.target.executeImmediately(lun: 0, command: command) == nil {
            _ = await f.target.execute(lun: 0, command: command)
        }
        let usage = try #require(f.target.usage(lun: 0))
        #expect(usage.reads == 3)
        #expect(usage.writes == 1)
        let last = try #require(usage.lastAccess)
        #expect(last >= before.addingTimeInterval(-0.001) && last <= Date().addingTimeInterval(0.001))

        // A command on a LUN that does not exist counts nowhere.
        _ = await f.run(read10(lba: 0, blocks: 1), lun: 3)
        #expect(f.target.usage(lun: 0)?.reads == 3)
    }
}
