import NIOCore
import Testing

@testable import SCSI

@Suite("INQUIRY and VPD pages")
struct InquiryTests {
    @Test("standard INQUIRY data: disk, SPC-4, HiSup, 3PC, CmdQue, version descriptors")
    func standard() async throws {
        let f = try Fixture()
        let b = await f.run(inquiry()).bytes
        #expect(b.count == 96)
        #expect(b[0] == 0x00)
        #expect(b[2] == 0x06)
        #expect(b[3] == 0x12)
        #expect(Int(b[4]) == b.count - 5)
        #expect(b[5] & 0x08 != 0)
        #expect(b[7] & 0x02 != 0)
        #expect(Array(b[8..<16]) == Array("LIVEMNT ".utf8))
        #expect(Array(b[58..<66]) == [0x00, 0xA0, 0x09, 0x60, 0x04, 0x60, 0x04, 0xC0])
    }

    @Test("allocation length truncates INQUIRY data")
    func allocation() async throws {
        let f = try Fixture()
        #expect(await f.run(inquiry(allocation: 5)).bytes.count == 5)
        #expect(await f.run(inquiry(evpd: true, page: 0x83, allocation: 6)).bytes.count == 6)
    }

    @Test("PAGE CODE without EVPD and unknown VPD pages are INVALID FIELD IN CDB")
    func invalidPage() async throws {
        let f = try Fixture()
        expectSense(await f.run(inquiry(page: 0x80)), .illegalRequest, 0x24, 0x00)
        expectSense(await f.run(inquiry(evpd: true, page: 0xC5)), .illegalRequest, 0x24, 0x00)
    }

    @Test("supported VPD pages list every page, ascending, and each answers")
    func supportedPages() async throws {
        let f = try Fixture()
        let b = await f.run(inquiry(evpd: true, page: 0)).bytes
        let pages = Array(b[4...])
        #expect(pages == [0x00, 0x80, 0x83, 0x86, 0x8F, 0xB0, 0xB1, 0xB2])
        for p in pages {
            let r = await f.run(inquiry(evpd: true, page: p))
            #expect(r.status == .good)
            #expect(r.bytes[1] == p)
        }
    }

    @Test("unit serial number page")
    func serial() async throws {
        let f = try Fixture()
        let b = await f.run(inquiry(evpd: true, page: 0x80)).bytes
        #expect(Array(b[4...]) == Array("SER0001".utf8))
    }

    @Test("device identification: NAA, T10 vendor ID, relative port, port group, SCSI name string")
    func deviceIdentification() async throws {
        let f = try Fixture()
        let b = await f.run(inquiry(evpd: true, page: 0x83)).bytes
        #expect(Int(b[2]) << 8 | Int(b[3]) == b.count - 4)
        var types: [(UInt8, UInt8, [UInt8])] = []
        var i = 4
        while i + 4 <= b.count {
            let len = Int(b[i + 3])
            types.append((b[i + 1] & 0x0F, (b[i + 1] >> 4) & 0x03, Array(b[(i + 4)..<(i + 4 + len)])))
            i += 4 + len
        }
        #expect(i == b.count)
        let naa = try #require(types.first { $0.0 == 3 })
        #expect(naa.2 == [0x60, 0x01, 0x40, 0x50, 0x12, 0x34, 0x56, 0x78])
        #expect(naa.1 == 0)
        #expect(types.contains { $0.0 == 1 })
        let rel = try #require(types.first { $0.0 == 4 })
        #expect(rel.1 == 1)
        #expect(rel.2 == [0, 0, 0, 1])
        #expect(types.contains { $0.0 == 5 && $0.1 == 1 })
        let name = try #require(types.first { $0.0 == 8 && $0.1 == 1 })
        #expect(name.2.count % 4 == 0)
        #expect(String(decoding: name.2.prefix { $0 != 0 }, as: UTF8.self) == "iqn.2024-01.test:t,t,0x1")
    }

    @Test("block limits page reports transfer, unmap, write same and compare-and-write limits")
    func blockLimits() async throws {
        let f = try Fixture()
        let b = await f.run(inquiry(evpd: true, page: 0xB0)).bytes
        #expect(b.count == 64)
        #expect(b[3] == 0x3C)
        #expect(b[4] & 0x01 == 0)  // WSNZ 0
        #expect(b[5] == 255)
        #expect(be32(b, 8) == (32 << 20) / 512)
        #expect(be32(b, 20) > 0)
        #expect(be32(b, 24) == 256)
    }

    @Test("provisioning page: LBPU, LBPWS, LBPWS10, LBPRZ and thin only with unmap support")
    func provisioning() async throws {
        let thin = try Fixture()
        let b = await thin.run(inquiry(evpd: true, page: 0xB2)).bytes
        #expect(b[5] == 0xE4)
        #expect(b[6] & 0x07 == 2)
        let full = try Fixture(unmap: false)
        let c = await full.run(inquiry(evpd: true, page: 0xB2)).bytes
        #expect(c[5] == 0)
    }

    @Test("block device characteristics: non-rotating medium")
    func characteristics() async throws {
        let f = try Fixture()
        let b = await f.run(inquiry(evpd: true, page: 0xB1)).bytes
        #expect(b[4] == 0 && b[5] == 1)
    }
}

@Suite("LUN addressing")
struct LUNTests {
    @Test("a missing LUN answers INQUIRY with qualifier 011b and type 1Fh")
    func missingInquiry() async throws {
        let f = try Fixture()
        let r = await f.run(inquiry(), lun: 5)
        #expect(r.status == .good)
        #expect(r.bytes[0] == 0x7F)
    }

    @Test("a missing LUN answers other commands with LOGICAL UNIT NOT SUPPORTED")
    func missingOther() async throws {
        let f = try Fixture()
        expectSense(await f.run(testUnitReady, lun: 5), .illegalRequest, 0x25, 0x00)
        let sense = await f.run([0x03, 0, 0, 0, 252, 0], lun: 5)
        #expect(sense.status == .good)
        #expect(sense.bytes[2] == 0x05 && sense.bytes[12] == 0x25)
    }

    @Test("REPORT LUNS lists the LUNs from any LUN and checks the allocation length")
    func reportLUNs() async throws {
        let f = try Fixture()
        let r = await f.run([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], lun: 9)
        #expect(r.status == .good)
        #expect(r.bytes == [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        expectSense(await f.run([0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0]), .illegalRequest, 0x24, 0x00)
        expectSense(await f.run([0xA0, 0, 0x10, 0, 0, 0, 0, 0, 1, 0, 0, 0]), .illegalRequest, 0x24, 0x00)
        let wellKnown = await f.run([0xA0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0])
        #expect(wellKnown.bytes.prefix(4) == [0, 0, 0, 0])
    }

    @Test("adding an LU raises REPORTED LUNS DATA HAS CHANGED, which REPORT LUNS clears")
    func addLU() async throws {
        let f = try Fixture()
        f.target.nexusEstablished(nexusA)
        _ = await f.run([0x03, 0, 0, 0, 252, 0])  // consume POWER ON
        let other = TestDevice(blocks: 64)
        try f.target.addLogicalUnit(
            LogicalUnitConfiguration(lun: 300, device: other, serialNumber: "S2", naaIdentifier: 0x6001_4050_0000_0002))
        #expect(f.target.luns == [0, 300])
        let list = await f.run([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])
        #expect(Array(list.bytes[16..<18]) == [0x41, 0x2C])
        #expect(await f.run(testUnitReady).status == .good)  // cleared by REPORT LUNS
        try f.target.addLogicalUnit(
            LogicalUnitConfiguration(lun: 301, device: other, serialNumber: "S3", naaIdentifier: 0x6001_4050_0000_0003))
        expectSense(await f.run(testUnitReady), .unitAttention, 0x3F, 0x0E)
        #expect(throws: SCSITargetError.self) {
            try f.target.addLogicalUnit(
                LogicalUnitConfiguration(lun: 0, device: other, serialNumber: "S4", naaIdentifier: 4))
        }
        #expect(f.target.removeLogicalUnit(lun: 301))
        expectSense(await f.run(testUnitReady, lun: 301), .illegalRequest, 0x25, 0x00)
    }
}
