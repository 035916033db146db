import NIOCore
import Testing

@testable import SCSI

@Suite("Unit attentions")
struct UnitAttentionTests {
    @Test("a new nexus gets POWER ON, RESET once; INQUIRY and REPORT LUNS don't consume it")
    func powerOn() async throws {
        let f = try Fixture()
        f.target.nexusEstablished(nexusA)
        #expect(await f.run(inquiry()).status == .good)
        #expect(await f.run([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]).status == .good)
        expectSense(await f.run(testUnitReady), .unitAttention, 0x29, 0x00)
        #expect(await f.run(testUnitReady).status == .good)
    }

    @Test("REQUEST SENSE returns and clears the unit attention, then NO SENSE")
    func requestSense() async throws {
        let f = try Fixture()
        f.target.nexusEstablished(nexusA)
        let r = await f.run([0x03, 0, 0, 0, 18, 0])
        #expect(r.status == .good)
        #expect(r.bytes[0] == 0x70 && r.bytes[2] == 0x06 && r.bytes[12] == 0x29)
        let again = await f.run([0x03, 0, 0, 0, 18, 0])
        #expect(again.bytes[2] == 0 && again.bytes[12] == 0)
        #expect(await f.run(testUnitReady).status == .good)
    }

    @Test("REQUEST SENSE with DESC returns descriptor format")
    func descriptorFormat() async throws {
        let f = try Fixture()
        f.target.nexusEstablished(nexusA)
        let r = await f.run([0x03, 1, 0, 0, 252, 0])
        #expect(r.bytes[0] == 0x72 && r.bytes[1] == 0x06 && r.bytes[2] == 0x29 && r.bytes[3] == 0x00)
    }

    @Test("unit attentions are per nexus and reported in order")
    func perNexus() async throws {
        let f = try Fixture()
        f.target.nexusEstablished(nexusA)
        f.target.nexusEstablished(nexusB)
        #expect(await f.target.taskManagement(.logicalUnitReset, lun: 0, nexus: nexusA))
        expectSense(await f.run(testUnitReady, nexus: nexusB), .unitAttention, 0x29, 0x03)
        #expect(await f.run(testUnitReady, nexus: nexusB).status == .good)
        expectSense(await f.run(testUnitReady, nexus: nexusA), .unitAttention, 0x29, 0x03)
        #expect(await f.target.taskManagement(.logicalUnitReset, lun: 7, nexus: nexusA) == false)
    }

    @Test("target cold reset reports POWER ON OCCURRED")
    func coldReset() async throws {
        let f = try Fixture()
        f.target.nexusEstablished(nexusA)
        _ = await f.run([0x03, 0, 0, 0, 18, 0])
        #expect(await f.target.taskManagement(.targetColdReset, lun: 0, nexus: nexusA))
        expectSense(await f.run(testUnitReady), .unitAttention, 0x29, 0x01)
    }

    @Test("a released nexus loses its pending conditions")
    func released() async throws {
        let f = try Fixture()
        f.target.nexusEstablished(nexusA)
        f.target.nexusReleased(nexusA)
        #expect(await f.run(testUnitReady).status == .good)
    }

    @Test("a resize raises CAPACITY DATA HAS CHANGED and READ CAPACITY reports the new size")
    func capacity() async throws {
        let f = try Fixture(blocks: 100)
        f.target.nexusEstablished(nexusA)
        _ = await f.run([0x03, 0, 0, 0, 18, 0])
        f.device.resize(blocks: 200)
        #expect(f.target.capacityChanged(lun: 0) == 200)
        expectSense(await f.run([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]), .unitAttention, 0x2A, 0x09)
        let r = await f.run([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        #expect(be32(r.bytes, 0) == 199)
    }
}

@Suite("MODE SENSE / MODE SELECT")
struct ModeTests {
    @Test("MODE SENSE(6) all pages: header, block descriptor, caching, control, IE pages")
    func allPages() async throws {
        let f = try Fixture()
        let b = await f.run([0x1A, 0, 0x3F, 0, 255, 0]).bytes
        #expect(Int(b[0]) == b.count - 1)
        #expect(b[3] == 8)
        #expect(be32(b, 4) == 2048)
        #expect(b[12 + 0] == 0x08 && b[12 + 1] == 0x12)
        #expect(b[12 + 2] & 0x04 != 0)  // WCE
        #expect(b[32] == 0x0A && b[44] == 0x1C)
        #expect(b.count == 56)  // header 4, descriptor 8, pages 20 + 12 + 12
    }

    @Test("MODE SENSE(10) with LLBAA gives a long block descriptor")
    func longLBA() async throws {
        let f = try Fixture()
        let b = await f.run([0x5A, 0x10, 0x08, 0, 0, 0, 0, 0x01, 0, 0]).bytes
        #expect(b[4] & 0x01 == 1)
        #expect(b[7] == 16)
        #expect(Int(b[0]) << 8 | Int(b[1]) == b.count - 2)
    }

    @Test("saved values are not supported; unknown pages are invalid")
    func savedAndUnknown() async throws {
        let f = try Fixture()
        expectSense(await f.run([0x1A, 0, 0xC8, 0, 255, 0]), .illegalRequest, 0x39, 0x00)
        expectSense(await f.run([0x1A, 0, 0x19, 0, 255, 0]), .illegalRequest, 0x24, 0x00)
    }

    @Test("changeable values show WCE and SWP")
    func changeable() async throws {
        let f = try Fixture()
        let b = await f.run([0x1A, 0x08, 0x48, 0, 255, 0]).bytes
        #expect(b[4 + 2] == 0x04)
        let c = await f.run([0x1A, 0x08, 0x4A, 0, 255, 0]).bytes
        #expect(c[4 + 4] == 0x08)
    }

    @Test("MODE SELECT changes WCE and tells the other nexuses MODE PARAMETERS CHANGED")
    func selectWCE() async throws {
        let f = try Fixture()
        f.target.nexusEstablished(nexusA)
        f.target.nexusEstablished(nexusB)
        _ = await f.run([0x03, 0, 0, 0, 18, 0], nexus: nexusA)
        _ = await f.run([0x03, 0, 0, 0, 18, 0], nexus: nexusB)
        var page = await f.run([0x1A, 0x08, 0x08, 0, 255, 0]).bytes
        page[0] = 0
        page[4 + 2] &= ~0x04
        let r = await f.run([0x15, 0x10, 0, 0, UInt8(page.count), 0], data: page)
        #expect(r.status == .good)
        #expect(r.dataOutLength == page.count)
        #expect(await f.run([0x1A, 0x08, 0x08, 0, 255, 0]).bytes[6] & 0x04 == 0)
        #expect(await f.run(testUnitReady, nexus: nexusA).status == .good)
        expectSense(await f.run(testUnitReady, nexus: nexusB), .unitAttention, 0x2A, 0x01)
    }

    @Test("MODE SELECT of a non-changeable bit is INVALID FIELD IN PARAMETER LIST")
    func selectFixedBit() async throws {
        let f = try Fixture()
        var page = await f.run([0x1A, 0x08, 0x0A, 0, 255, 0]).bytes
        page[0] = 0
        page[4 + 3] ^= 0x20
        expectSense(await f.run([0x15, 0x10, 0, 0, UInt8(page.count), 0], data: page), .illegalRequest, 0x26, 0x00)
        expectSense(await f.run([0x15, 0x11, 0, 0, UInt8(page.count), 0], data: page), .illegalRequest, 0x24, 0x00)
    }

    @Test("SWP set by MODE SELECT write-protects the LU until reset")
    func softwareWriteProtect() async throws {
        let f = try Fixture()
        var page = await f.run([0x1A, 0x08, 0x0A, 0, 255, 0]).bytes
        page[0] = 0
        page[4 + 4] |= 0x08
        #expect(await f.run([0x15, 0x10, 0, 0, UInt8(page.count), 0], data: page).status == .good)
        expectSense(await f.run(write10(lba: 0, blocks: 1), data: [UInt8](repeating: 1, count: 512)), .dataProtect, 0x27, 0x00)
        #expect(await f.target.taskManagement(.logicalUnitReset, lun: 0, nexus: nexusA))
        #expect(await f.run(write10(lba: 0, blocks: 1), data: [UInt8](repeating: 1, count: 512)).status == .good)
    }
}

@Suite("Write cache")
struct WriteCacheTests {
    @Test("with WCE cleared by MODE SELECT every write is forced unit access")
    func writeThrough() async throws {
        let f = try Fixture()
        #expect(await f.run(write10(lba: 0, blocks: 1), data: [UInt8](repeating: 1, count: 512)).status == .good)
        #expect(f.device.state.withLock { $0.fuaWrites } == 0)
        var page = await f.run([0x1A, 0x08, 0x08, 0, 255, 0]).bytes
        page[0] = 0
        page[4 + 2] &= ~0x04
        #expect(await f.run([0x15, 0x10, 0, 0, UInt8(page.count), 0], data: page).status == .good)
        #expect(await f.run(write10(lba: 0, blocks: 1), data: [UInt8](repeating: 1, count: 512)).status == .good)
        #expect(f.device.state.withLock { $0.fuaWrites } == 1)
    }
}
