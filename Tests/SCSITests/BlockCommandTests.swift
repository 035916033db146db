import NIOCore
import Testing

@testable import SCSI

/// COMPARE AND WRITE of `blocks` blocks at `lba`.
func compareAndWrite(lba: UInt64, blocks: UInt8) -> [UInt8] {
    var c = cdb16(0x89, lba: lba, blocks: 0)
    c[13] = blocks
    return c
}

@Suite("SBC-4 block commands")
struct BlockCommandTests {
    @Test("COMPARE AND WRITE writes when the data matches")
    func cawMatch() async throws {
        let f = try Fixture()
        let old = [UInt8](repeating: 0, count: 512)
        let new = [UInt8](repeating: 0x5A, count: 512)
        let r = await f.run(compareAndWrite(lba: 3, blocks: 1), data: old + new)
        #expect(r.status == .good)
        #expect(r.dataOutLength == 1024)
        #expect(f.device.bytes(at: 3 * 512, count: 512) == new)
    }

    @Test("COMPARE AND WRITE miscompare reports the first differing byte and writes nothing")
    func cawMiscompare() async throws {
        let f = try Fixture()
        var expected = [UInt8](repeating: 0, count: 1024)
        expected[700] = 1
        let r = await f.run(compareAndWrite(lba: 0, blocks: 2), data: expected + [UInt8](repeating: 9, count: 1024))
        expectSense(r, .miscompare, 0x1D, 0x00)
        #expect(r.sense?.information == 700)
        #expect(f.device.bytes(at: 0, count: 1024) == [UInt8](repeating: 0, count: 1024))
    }

    @Test("COMPARE AND WRITE checks range and length")
    func cawChecks() async throws {
        let f = try Fixture(blocks: 10)
        expectSense(await f.run(compareAndWrite(lba: 10, blocks: 1), data: [UInt8](repeating: 0, count: 1024)), .illegalRequest, 0x21, 0x00)
        #expect(await f.run(compareAndWrite(lba: 0, blocks: 0), data: []).status == .good)
    }

    @Test("concurrent COMPARE AND WRITE increments are atomic")
    func cawAtomic() async throws {
        let f = try Fixture()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    while true {
                        let current = await f.run(read10(lba: 0, blocks: 1)).bytes
                        var next = current
                        next[0] &+= 1
                        let r = await f.run(compareAndWrite(lba: 0, blocks: 1), data: current + next)
                        if r.status == .good { return }
                    }
                }
            }
        }
        #expect(f.device.bytes(at: 0, count: 1) == [8])
    }

    @Test("VERIFY with BYTCHK 1 compares; BYTCHK 0 only reads")
    func verify() async throws {
        let f = try Fixture()
        f.device.fill(at: 512, with: [UInt8](repeating: 7, count: 512))
        var cdb: [UInt8] = [0x2F, 0x02, 0, 0, 0, 1, 0, 0, 1, 0]
        #expect(await f.run(cdb, data: [UInt8](repeating: 7, count: 512)).status == .good)
        var bad = [UInt8](repeating: 7, count: 512)
        bad[100] = 0
        let r = await f.run(cdb, data: bad)
        expectSense(r, .miscompare, 0x1D, 0x00)
        #expect(r.sense?.information == 100)
        cdb[1] = 0
        #expect(await f.run(cdb).status == .good)
        cdb[1] = 0x04
        expectSense(await f.run(cdb), .illegalRequest, 0x24, 0x00)
        expectSense(await f.run(cdb16(0x8F, lba: 2048, blocks: 1)), .illegalRequest, 0x21, 0x00)
    }

    @Test("WRITE AND VERIFY writes through")
    func writeAndVerify() async throws {
        let f = try Fixture()
        let data = [UInt8](repeating: 3, count: 512)
        #expect(await f.run([0x2E, 0x02, 0, 0, 0, 4, 0, 0, 1, 0], data: data).status == .good)
        #expect(f.device.bytes(at: 4 * 512, count: 512) == data)
        #expect(f.device.state.withLock { $0.fuaWrites } == 1)
    }

    @Test("ORWRITE ORs the data into the medium")
    func orWrite() async throws {
        let f = try Fixture()
        f.device.fill(at: 0, with: [UInt8](repeating: 0x0F, count: 512))
        #expect(await f.run(cdb16(0x8B, lba: 0, blocks: 1), data: [UInt8](repeating: 0xF0, count: 512)).status == .good)
        #expect(f.device.bytes(at: 0, count: 512) == [UInt8](repeating: 0xFF, count: 512))
    }

    @Test("WRITE SAME(10) repeats the block; 0 blocks runs to the last LBA (WSNZ 0); ANCHOR is refused")
    func writeSame() async throws {
        let f = try Fixture()
        let block = (0..<512).map { UInt8($0 & 0xFF) }
        #expect(await f.run([0x41, 0, 0, 0, 0, 10, 0, 0, 3, 0], data: block).status == .good)
        #expect(f.device.bytes(at: 12 * 512, count: 512) == block)
        #expect(f.device.bytes(at: 13 * 512, count: 1) == [0])
        // NUMBER OF LOGICAL BLOCKS 0 from LBA 2000: blocks 2000-2047 (SBC-4 §5.48).
        #expect(await f.run([0x41, 0, 0, 0, 0x07, 0xD0, 0, 0, 0, 0], data: block).status == .good)
        #expect(f.device.bytes(at: 2000 * 512, count: 512) == block)
        #expect(f.device.bytes(at: 2047 * 512, count: 512) == block)
        #expect(f.device.bytes(at: 1999 * 512, count: 1) == [0])
        // Block Limits VPD: WSNZ 0, MAXIMUM WRITE SAME LENGTH 0 (no limit).
        let limits = await f.run([0x12, 0x01, 0xB0, 0, 64, 0]).bytes
        #expect(limits[4] & 0x01 == 0)
        #expect(limits[36..<44].allSatisfy { $0 == 0 })
        expectSense(await f.run([0x41, 0x18, 0, 0, 0, 10, 0, 0, 1, 0], data: block), .illegalRequest, 0x24, 0x00)
        expectSense(await f.run([0x41, 0, 0, 0, 0x07, 0xFF, 0, 0, 2, 0], data: block), .illegalRequest, 0x21, 0x00)
    }

    @Test("WRITE SAME(16) with UNMAP deallocates; GET LBA STATUS reports it")
    func writeSameUnmap() async throws {
        let f = try Fixture()
        f.device.fill(at: 0, with: [UInt8](repeating: 1, count: 4096))
        #expect(await f.run(cdb16(0x93, lba: 2, blocks: 4, byte1: 0x08), data: [UInt8](repeating: 0, count: 512)).status == .good)
        #expect(f.device.state.withLock { $0.deallocated } == [2, 3, 4, 5])
        var cdb = cdb16(0x9E, lba: 0, blocks: 1024, byte1: 0x12)
        let r = await f.run(cdb)
        #expect(r.status == .good)
        let b = r.bytes
        #expect(be32(b, 0) == UInt32(b.count - 4))
        #expect(b[8 + 7] == 0 && be32(b, 8 + 8) == 2 && b[8 + 12] == 0)
        #expect(b[24 + 7] == 2 && be32(b, 24 + 8) == 4 && b[24 + 12] == 1)
        #expect(b[40 + 7] == 6 && b[40 + 12] == 0)
        cdb = cdb16(0x9E, lba: 2048, blocks: 1024, byte1: 0x12)
        expectSense(await f.run(cdb), .illegalRequest, 0x21, 0x00)
    }

    @Test("WRITE SAME(16) with NDOB writes zeros without Data-Out")
    func ndob() async throws {
        let f = try Fixture()
        f.device.fill(at: 0, with: [UInt8](repeating: 1, count: 512))
        let r = await f.run(cdb16(0x93, lba: 0, blocks: 1, byte1: 0x01))
        #expect(r.status == .good)
        #expect(r.dataOutLength == 0)
        #expect(f.device.bytes(at: 0, count: 512) == [UInt8](repeating: 0, count: 512))
    }

    @Test("UNMAP deallocates every descriptor after checking them all")
    func unmap() async throws {
        let f = try Fixture()
        func list(_ ranges: [(UInt64, UInt32)]) -> [UInt8] {
            let n = 16 * ranges.count
            var p: [UInt8] = [UInt8((n + 6) >> 8), UInt8((n + 6) & 0xFF), UInt8(n >> 8), UInt8(n & 0xFF), 0, 0, 0, 0]
            for (lba, n) in ranges {
                var d = [UInt8](repeating: 0, count: 16)
                for i in 0..<8 { d[i] = UInt8((lba >> (56 - 8 * UInt64(i))) & 0xFF) }
                for i in 0..<4 { d[8 + i] = UInt8((n >> (24 - 8 * UInt32(i))) & 0xFF) }
                p += d
            }
            return p
        }
        let good = list([(1, 2), (10, 1)])
        #expect(await f.run([0x42, 0, 0, 0, 0, 0, 0, 0, UInt8(good.count), 0], data: good).status == .good)
        #expect(f.device.state.withLock { $0.deallocated } == [1, 2, 10])
        let bad = list([(20, 1), (2047, 2)])
        expectSense(await f.run([0x42, 0, 0, 0, 0, 0, 0, 0, UInt8(bad.count), 0], data: bad), .illegalRequest, 0x21, 0x00)
        #expect(!f.device.state.withLock { $0.deallocated }.contains(20))
        #expect(await f.run([0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0]).status == .good)
        let many = list((0..<257).map { (UInt64($0), UInt32(1)) })
        let cdb: [UInt8] = [0x42, 0, 0, 0, 0, 0, 0, UInt8(many.count >> 8), UInt8(many.count & 0xFF), 0]
        expectSense(await f.run(cdb, data: many), .illegalRequest, 0x26, 0x00)
    }

    @Test("UNMAP is an unknown opcode when the device cannot deallocate")
    func unmapUnsupported() async throws {
        let f = try Fixture(unmap: false)
        expectSense(await f.run([0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0]), .illegalRequest, 0x20, 0x00)
        let rc = await f.run(cdb16(0x9E, lba: 0, blocks: 32, byte1: 0x10))
        #expect(rc.bytes[14] == 0)
    }

    @Test("READ CAPACITY(10) and (16)")
    func readCapacity() async throws {
        let f = try Fixture(blocks: 2048, blockSize: 4096)
        let r10 = await f.run([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]).bytes
        #expect(be32(r10, 0) == 2047 && be32(r10, 4) == 4096)
        expectSense(await f.run([0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]), .illegalRequest, 0x24, 0x00)
        let r16 = await f.run(cdb16(0x9E, lba: 0, blocks: 32, byte1: 0x10)).bytes
        #expect(r16.count == 32)
        #expect(be32(r16, 4) == 2047 && be32(r16, 8) == 4096)
        #expect(r16[14] == 0xC0)
        #expect(await f.run(cdb16(0x9E, lba: 0, blocks: 12, byte1: 0x10)).bytes.count == 12)
    }

    @Test("READ CAPACITY(10) caps the last LBA at FFFFFFFFh")
    func readCapacityCap() async throws {
        let device = TestDevice(blocks: 1, blockSize: 512)
        device.state.withLock { $0.blockCount = 0x1_0000_0010 }
        let lu = LogicalUnitConfiguration(lun: 0, device: device, serialNumber: "X", naaIdentifier: 1)
        let target = try SCSITarget(name: "t", logicalUnits: [lu], stateDirectory: nil, logger: .init(label: "t"))
        let cmd = SCSICommand(
            cdb: [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], nexus: nexusA, expectedDataTransferLength: 8, isWrite: false,
            isRead: true)
        #expect(await target.execute(lun: 0, command: cmd).bytes.prefix(4) == [0xFF, 0xFF, 0xFF, 0xFF])
    }

    @Test("SYNCHRONIZE CACHE flushes; PRE-FETCH range-checks and returns GOOD")
    func syncAndPrefetch() async throws {
        let f = try Fixture()
        #expect(await f.run([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]).status == .good)
        #expect(await f.run(cdb16(0x91, lba: 0, blocks: 0)).status == .good)
        #expect(f.device.state.withLock { $0.flushes } == 2)
        expectSense(await f.run(cdb16(0x91, lba: 2040, blocks: 9)), .illegalRequest, 0x21, 0x00)
        #expect(await f.run([0x34, 0, 0, 0, 0x07, 0xF0, 0, 0, 16, 0]).status == .good)
        expectSense(await f.run(cdb16(0x90, lba: 2047, blocks: 2)), .illegalRequest, 0x21, 0x00)
    }

    @Test("READ DEFECT DATA returns an empty list")
    func defects() async throws {
        let f = try Fixture()
        #expect(await f.run([0x37, 0, 0x1D, 0, 0, 0, 0, 0, 4, 0]).bytes == [0, 0x1D, 0, 0])
        #expect(await f.run([0xB7, 0x0D, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]).bytes == [0, 0x0D, 0, 0, 0, 0, 0, 0])
    }

    @Test("START STOP UNIT accepted unless it would eject; PREVENT 0/1 accepted")
    func startStopPrevent() async throws {
        let f = try Fixture()
        #expect(await f.run([0x1B, 0, 0, 0, 0x01, 0]).status == .good)
        expectSense(await f.run([0x1B, 1, 0, 0, 0x02, 0]), .illegalRequest, 0x24, 0x00)
        #expect(await f.run([0x1B, 1, 0, 0, 0x12, 0]).status == .good)  // POWER CONDITION 1: LOEJ ignored
        #expect(await f.run([0x1E, 0, 0, 0, 1, 0]).status == .good)
        #expect(await f.run([0x1E, 0, 0, 0, 0, 0]).status == .good)
        expectSense(await f.run([0x1E, 0, 0, 0, 2, 0]), .illegalRequest, 0x24, 0x00)
    }
}

@Suite("REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS")
struct ReportSupportedTests {
    func rsoc(options: UInt8, opcode: UInt8 = 0, sa: UInt16 = 0, allocation: UInt32 = 65535) -> [UInt8] {
        [0xA3, 0x0C, options, opcode, UInt8(sa >> 8), UInt8(sa & 0xFF), UInt8(allocation >> 24),
         UInt8((allocation >> 16) & 0xFF), UInt8((allocation >> 8) & 0xFF), UInt8(allocation & 0xFF), 0, 0]
    }

    @Test("all commands: one descriptor per table entry, service actions flagged")
    func allCommands() async throws {
        let f = try Fixture()
        let b = await f.run(rsoc(options: 0)).bytes
        #expect(Int(be32(b, 0)) == b.count - 4)
        #expect((b.count - 4) % 8 == 0)
        var found: [UInt8: (UInt16, UInt8, UInt16)] = [:]
        for i in stride(from: 4, to: b.count, by: 8) {
            found[b[i]] = (UInt16(b[i + 2]) << 8 | UInt16(b[i + 3]), b[i + 5], UInt16(b[i + 6]) << 8 | UInt16(b[i + 7]))
        }
        #expect(found[0x28]?.2 == 10)
        #expect(found[0x88]?.2 == 16)
        #expect(found[0x9E]?.1 == 0x01)
        #expect((b.count - 4) / 8 == OpcodeTable.all.count)
    }

    @Test("all commands with RCTD carry 12-byte timeouts descriptors")
    func allWithTimeouts() async throws {
        let f = try Fixture()
        let b = await f.run(rsoc(options: 0x80)).bytes
        #expect((b.count - 4) % 20 == 0)
        #expect(b[4 + 5] & 0x02 != 0)
        #expect(b[4 + 8] == 0 && b[4 + 9] == 0x0A)
    }

    @Test("one command: usage data for READ(10), SA commands need option 2")
    func oneCommand() async throws {
        let f = try Fixture()
        let b = await f.run(rsoc(options: 1, opcode: 0x28)).bytes
        #expect(b[1] & 0x07 == 0x03)
        #expect(b[2] == 0 && b[3] == 10)
        #expect(b[4] == 0x28 && b.count == 14)
        expectSense(await f.run(rsoc(options: 1, opcode: 0x9E)), .illegalRequest, 0x24, 0x00)
        let sa = await f.run(rsoc(options: 2, opcode: 0x9E, sa: 0x10)).bytes
        #expect(sa[1] & 0x07 == 0x03 && sa[4] == 0x9E && sa[5] == 0x10)
        let unsupported = await f.run(rsoc(options: 1, opcode: 0xC0)).bytes
        #expect(unsupported[1] & 0x07 == 0x01)
        let withTimeout = await f.run(rsoc(options: 0x81, opcode: 0x2A)).bytes
        #expect(withTimeout[1] & 0x80 != 0 && withTimeout.count == 4 + 10 + 12)
        expectSense(await f.run(rsoc(options: 5)), .illegalRequest, 0x24, 0x00)
    }

    @Test("supported task management functions, with and without REPD")
    func tmfs() async throws {
        let f = try Fixture()
        let b = await f.run([0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]).bytes
        #expect(b.count == 4 && b[0] & 0x08 != 0)
        let e = await f.run([0xA3, 0x0D, 0x80, 0, 0, 0, 0, 0, 0, 16, 0, 0]).bytes
        #expect(e.count == 16 && e[3] == 0x0C)
    }
}
