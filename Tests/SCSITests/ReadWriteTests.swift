import BlockDevice
import NIOCore
import Testing

@testable import SCSI

@Suite("READ / WRITE family")
struct ReadWriteTests {
    @Test("WRITE(10) then READ(10) returns the data")
    func roundTrip() async throws {
        let f = try Fixture()
        let data = (0..<1024).map { UInt8($0 & 0xFF) }
        let w = await f.run(write10(lba: 10, blocks: 2), data: data)
        #expect(w.status == .good)
        #expect(w.dataOutLength == 1024)
        let r = await f.run(read10(lba: 10, blocks: 2))
        #expect(r.status == .good)
        #expect(r.bytes == data)
    }

    @Test("WRITE(16) / READ(16) and READ(12) agree")
    func sixteenAndTwelve() async throws {
        let f = try Fixture()
        let data = [UInt8](repeating: 0xAB, count: 512)
        #expect(await f.run(cdb16(0x8A, lba: 100, blocks: 1), data: data).status == .good)
        #expect(await f.run(cdb16(0x88, lba: 100, blocks: 1)).bytes == data)
        let read12: [UInt8] = [0xA8, 0, 0, 0, 0, 100, 0, 0, 0, 1, 0, 0]
        #expect(await f.run(read12).bytes == data)
    }

    @Test("READ(6) with TRANSFER LENGTH 0 reads 256 blocks")
    func read6Zero() async throws {
        let f = try Fixture()
        let r = await f.run([0x08, 0, 0, 0, 0, 0])
        #expect(r.status == .good)
        #expect(r.bytes.count == 256 * 512)
    }

    @Test("READ(10) with TRANSFER LENGTH 0 is GOOD with no data")
    func readZero() async throws {
        let f = try Fixture()
        let r = await f.run(read10(lba: 0, blocks: 0))
        #expect(r.status == .good)
        #expect(r.bytes.isEmpty)
    }

    @Test("reads past the end get LBA OUT OF RANGE")
    func beyondEnd() async throws {
        let f = try Fixture(blocks: 100)
        expectSense(await f.run(read10(lba: 99, blocks: 2)), .illegalRequest, 0x21, 0x00)
        expectSense(await f.run(cdb16(0x88, lba: UInt64.max, blocks: 1)), .illegalRequest, 0x21, 0x00)
        #expect(await f.run(read10(lba: 99, blocks: 1)).status == .good)
    }

    @Test("TRANSFER LENGTH above the Block Limits maximum is INVALID FIELD IN CDB")
    func tooLong() async throws {
        let f = try Fixture(blocks: 100_000)
        let r = await f.run(cdb16(0x88, lba: 0, blocks: 65537))
        expectSense(r, .illegalRequest, 0x24, 0x00)
        #expect(r.sense?.senseKeySpecific?.2 == 10)
    }

    @Test("RDPROTECT and WRPROTECT are refused (no protection information)")
    func protect() async throws {
        let f = try Fixture()
        expectSense(await f.run(read10(lba: 0, blocks: 1, flags: 0x20)), .illegalRequest, 0x24, 0x00)
        expectSense(
            await f.run(write10(lba: 0, blocks: 1, flags: 0x40), data: [UInt8](repeating: 0, count: 512)),
            .illegalRequest, 0x24, 0x00)
    }

    @Test("a READ longer than ExpectedDataTransferLength reads only what the initiator takes")
    func readClampedToEDTL() async throws {
        let f = try Fixture()
        f.device.fill(at: 0, with: (0..<8192).map { UInt8($0 % 251) })
        let command = SCSICommand(
            cdb: read10(lba: 0, blocks: 16), nexus: nexusA, expectedDataTransferLength: 1000, isWrite: false,
            isRead: true)
        let r = await f.target.execute(lun: 0, command: command)
        #expect(r.status == .good)
        #expect(r.dataIn?.readableBytes == 1000)
        #expect(r.dataInLength == 16 * 512)
        #expect(r.bytes == (0..<1000).map { UInt8($0 % 251) })
        // ExpectedDataTransferLength 0: nothing is read, the full length is still reported.
        let none = await f.target.execute(
            lun: 0,
            command: SCSICommand(
                cdb: read10(lba: 0, blocks: 1), nexus: nexusA, expectedDataTransferLength: 0, isWrite: false,
                isRead: true))
        #expect(none.dataIn?.readableBytes ?? 0 == 0)
        #expect(none.dataInLength == 512)
    }

    @Test("FUA reaches the device; DPO is accepted")
    func fua() async throws {
        let f = try Fixture()
        let r = await f.run(write10(lba: 0, blocks: 1, flags: 0x18), data: [UInt8](repeating: 1, count: 512))
        #expect(r.status == .good)
        #expect(f.device.state.withLock { $0.fuaWrites } == 1)
    }

    @Test("less Data-Out than the CDB needs: only the whole blocks received are written (FCP-4 §9.4.2 a)")
    func shortDataOut() async throws {
        let f = try Fixture()
        let r = await f.run(write10(lba: 0, blocks: 2), data: [UInt8](repeating: 0xEE, count: 512))
        #expect(r.status == .good)
        #expect(r.dataOutLength == 1024)
        #expect(f.device.bytes(at: 0, count: 512) == [UInt8](repeating: 0xEE, count: 512))
        #expect(f.device.bytes(at: 512, count: 512) == [UInt8](repeating: 0, count: 512))
        // Less than one block: nothing is written at all.
        let partial = await f.run(write10(lba: 4, blocks: 1), data: [UInt8](repeating: 0xAA, count: 200))
        #expect(partial.status == .good)
        #expect(f.device.bytes(at: 4 * 512, count: 512) == [UInt8](repeating: 0, count: 512))
    }

    @Test("Data-Out longer than the CDB needs: only the CDB's blocks are written")
    func longDataOut() async throws {
        let f = try Fixture()
        let r = await f.run(write10(lba: 0, blocks: 1), data: [UInt8](repeating: 0xEE, count: 1024))
        #expect(r.status == .good)
        #expect(r.dataOutLength == 512)
        #expect(f.device.bytes(at: 0, count: 512) == [UInt8](repeating: 0xEE, count: 512))
        #expect(f.device.bytes(at: 512, count: 512) == [UInt8](repeating: 0, count: 512))
    }

    @Test("device read failure is MEDIUM ERROR / UNRECOVERED READ ERROR with the LBA")
    func mediumError() async throws {
        let f = try Fixture()
        f.device.state.withLock { $0.failReads = true }
        let r = await f.run(read10(lba: 7, blocks: 1))
        expectSense(r, .mediumError, 0x11, 0x00)
        #expect(r.sense?.information == 7)
    }

    @Test("device write failures map to WRITE ERROR and SPACE ALLOCATION FAILED")
    func writeErrors() async throws {
        let f = try Fixture()
        f.device.state.withLock { $0.failWrites = .writeFailed }
        expectSense(await f.run(write10(lba: 0, blocks: 1), data: [UInt8](repeating: 1, count: 512)), .mediumError, 0x0C, 0x00)
        f.device.state.withLock { $0.failWrites = .noSpace }
        expectSense(await f.run(write10(lba: 0, blocks: 1), data: [UInt8](repeating: 1, count: 512)), .dataProtect, 0x27, 0x07)
        f.device.state.withLock { $0.failWrites = .notReady }
        expectSense(await f.run(write10(lba: 0, blocks: 1), data: [UInt8](repeating: 1, count: 512)), .notReady, 0x04, 0x00)
    }

    @Test("a read-only LU refuses writes with WRITE PROTECTED but reads")
    func readOnly() async throws {
        for f in [try Fixture(readOnly: true), try Fixture(deviceReadOnly: true)] {
            expectSense(
                await f.run(write10(lba: 0, blocks: 1), data: [UInt8](repeating: 1, count: 512)), .dataProtect, 0x27, 0x00)
            // UNMAP is advertised on a write-protected LU and refused like any write (libiscsi ReadOnly).
            expectSense(await f.run([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], data: [UInt8](repeating: 0, count: 24)), .dataProtect, 0x27, 0x00)
            #expect(await f.run(read10(lba: 0, blocks: 1)).status == .good)
            let sense = await f.run([0x1A, 0x08, 0x3F, 0, 255, 0])
            #expect(sense.bytes[2] & 0x80 != 0)
        }
    }
}

@Suite("READ fast path")
struct ReadFastPathTests {
    @Test("executeImmediately answers a READ exactly as execute does")
    func sameAnswer() async throws {
        let f = try Fixture()
        f.device.fill(at: 512, with: (0..<2048).map { UInt8($0 % 253) })
        _ = await f.run(testUnitReady)  // consume the power-on unit attention
        let command = SCSICommand(
            cdb: read10(lba: 1, blocks: 4), nexus: nexusA, expectedDataTransferLength: 2048, isWrite: false,
            isRead: true)
        let fast = try #require(f.target.executeImmediately(lun: 0, command: command))
        let slow = await f.target.execute(lun: 0, command: command)
        #expect(fast.status == .good)
        #expect(fast.bytes == slow.bytes)
        #expect(fast.dataInLength == slow.dataInLength)
    }

    @Test("a pending unit attention, a bad CDB or a non-READ goes to execute")
    func declines() async throws {
        let f = try Fixture()
        f.target.nexusEstablished(nexusA)
        let read = SCSICommand(
            cdb: read10(lba: 0, blocks: 1), nexus: nexusA, expectedDataTransferLength: 512, isWrite: false, isRead: true)
        // POWER ON unit attention still pending: execute must report it.
        #expect(f.target.executeImmediately(lun: 0, command: read) == nil)
        expectSense(await f.target.execute(lun: 0, command: read), .unitAttention, 0x29, 0x00)
        #expect(f.target.executeImmediately(lun: 0, command: read) != nil)
        let beyond = SCSICommand(
            cdb: read10(lba: 4000, blocks: 1), nexus: nexusA, expectedDataTransferLength: 512, isWrite: false,
            isRead: true)
        #expect(f.target.executeImmediately(lun: 0, command: beyond) == nil)
        let tur = SCSICommand(cdb: testUnitReady, nexus: nexusA, expectedDataTransferLength: 0, isWrite: false, isRead: false)
        #expect(f.target.executeImmediately(lun: 0, command: tur) == nil)
        #expect(f.target.executeImmediately(lun: 9, command: read) == nil)
    }
}
