import NIOCore
import Testing

@testable import SCSI

@Suite("CDB checks and dispatch")
struct CDBCheckTests {
    @Test("unknown operation code gets INVALID COMMAND OPERATION CODE")
    func unknownOpcode() async throws {
        let f = try Fixture()
        expectSense(await f.run([0xC0, 0, 0, 0, 0, 0]), .illegalRequest, 0x20, 0x00)
    }

    @Test("unknown service action gets INVALID FIELD IN CDB pointing at byte 1")
    func unknownServiceAction() async throws {
        let f = try Fixture()
        let r = await f.run(cdb16(0x9E, lba: 0, blocks: 32, byte1: 0x1F))
        expectSense(r, .illegalRequest, 0x24, 0x00)
        #expect(r.sense?.senseKeySpecific?.0 == 0x4C)
        #expect(r.sense?.senseKeySpecific?.2 == 1)
    }

    @Test("NACA in the CONTROL byte is refused")
    func naca() async throws {
        let f = try Fixture()
        var cdb = read10(lba: 0, blocks: 1)
        cdb[9] = 0x04
        let r = await f.run(cdb)
        expectSense(r, .illegalRequest, 0x24, 0x00)
        #expect(r.sense?.senseKeySpecific?.2 == 9)
    }

    @Test("a reserved bit gets INVALID FIELD IN CDB with its byte and bit")
    func reservedBit() async throws {
        let f = try Fixture()
        var cdb = read10(lba: 0, blocks: 1)
        cdb[6] = 0x80
        let r = await f.run(cdb)
        expectSense(r, .illegalRequest, 0x24, 0x00)
        let sks = try #require(r.sense?.senseKeySpecific)
        #expect(sks.0 == 0x40 | 0x08 | 7)
        #expect(sks.2 == 6)
        let fixed = try #require(r.sense).fixedFormatBytes
        #expect(fixed[15] == UInt8(0xCF))  // SKSV, C/D, BPV, bit 7
        #expect(fixed[17] == 6)
    }

    @Test("an empty CDB is an invalid operation code, not a crash")
    func emptyCDB() async throws {
        let f = try Fixture()
        expectSense(await f.run([]), .illegalRequest, 0x20, 0x00)
    }

    @Test("a CDB shorter than its opcode needs gets INVALID FIELD IN CDB")
    func shortCDB() async throws {
        let f = try Fixture()
        expectSense(await f.run([0x28, 0, 0]), .illegalRequest, 0x24, 0x00)
        expectSense(await f.run([0x5F, 0, 0], data: []), .illegalRequest, 0x24, 0x00)
        expectSense(await f.run([0x89, 0, 0, 0], data: []), .illegalRequest, 0x24, 0x00)
    }

    @Test("every table entry's usage data starts with its opcode and has a known CDB size")
    func tableShape() {
        for d in OpcodeTable.all {
            #expect([6, 10, 12, 16].contains(d.cdbLength), "\(d.name)")
            #expect(d.usage[0] == d.opcode)
        }
    }
}

@Suite("Robustness")
struct RobustnessTests {
    @Test("any opcode with any CDB length and contents gets an answer, never a crash")
    func everyOpcode() async throws {
        let f = try Fixture(blocks: 64)
        f.target.nexusEstablished(nexusA)
        var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt8 {
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: seed >> 33)
        }
        var answered = 0
        for opcode in 0...255 {
            for length in [1, 3, 6, 10, 12, 16] {
                var cdb = [UInt8(opcode)]
                for _ in 1..<length { cdb.append(next() & 0x0F) }
                let payload = [UInt8](repeating: next(), count: Int(next()) * 4)
                let r = await f.run(cdb, data: opcode & 1 == 0 ? payload : nil)
                #expect(r.status != .good || r.sense == nil)
                answered += 1
            }
        }
        #expect(answered == 256 * 6)
    }
}
