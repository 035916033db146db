import ISCSIProtocol
import NIOCore
import Testing

@Suite("PDU framing (RFC 7143 §11.2)")
struct PDUCodecTests {
    private func command(itt: UInt32, data: [UInt8] = []) -> ISCSIPDU {
        var buffer = ByteBuffer()
        buffer.writeBytes(data)
        return SCSICommandPDU(
            lun: 0, initiatorTaskTag: itt, expectedDataTransferLength: UInt32(data.count), cmdSN: itt, expStatSN: 0,
            cdb: [0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0], read: false, write: true, data: buffer
        ).pdu
    }

    private func encode(_ pdus: [ISCSIPDU], headerDigest: Bool = false, dataDigest: Bool = false) -> ByteBuffer {
        var serializer = PDUSerializer()
        serializer.headerDigest = headerDigest
        serializer.dataDigest = dataDigest
        var out = ByteBuffer()
        for pdu in pdus { serializer.write(pdu, into: &out) }
        return out
    }

    @Test("CRC32C matches RFC 3720 Appendix B.4 vectors")
    func crcVectors() {
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E)
        #expect(CRC32C.checksum((0..<32).map { UInt8(31 - $0) }) == 0x113F_DB5C)
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
    }

    @Test("a PDU round-trips with padding", arguments: [0, 1, 3, 4, 5, 512, 1001])
    func roundTrip(length: Int) throws {
        let data = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        var bytes = encode([command(itt: 9, data: data)])
        #expect(bytes.readableBytes == 48 + ((length + 3) & ~3))
        let parser = PDUParser()
        guard case .pdu(let pdu) = try parser.parse(&bytes) else {
            Issue.record("no PDU")
            return
        }
        #expect(bytes.readableBytes == 0)
        let decoded = try SCSICommandPDU(pdu)
        #expect(decoded.initiatorTaskTag == 9)
        #expect(decoded.cdb.prefix(10) == [0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0])
        #expect(Array(decoded.data.readableBytesView) == data)
    }

    @Test("a partial PDU consumes nothing, byte by byte", arguments: [false, true])
    func splitInput(digests: Bool) throws {
        let whole = encode([command(itt: 1, data: Array(repeating: 0xAB, count: 70))], headerDigest: digests, dataDigest: digests)
        var parser = PDUParser()
        parser.headerDigest = digests
        parser.dataDigest = digests
        var buffer = ByteBuffer()
        var produced = 0
        for byte in whole.readableBytesView {
            buffer.writeInteger(byte)
            let before = buffer.readerIndex
            if let outcome = try parser.parse(&buffer) {
                guard case .pdu = outcome else { Issue.record("digest error"); return }
                produced += 1
            } else {
                #expect(buffer.readerIndex == before)
            }
        }
        #expect(produced == 1)
        #expect(buffer.readableBytes == 0)
    }

    @Test("a batch of PDUs in one buffer parses in order")
    func batchedInput() throws {
        var buffer = encode((1...20).map { command(itt: UInt32($0), data: Array(repeating: UInt8($0), count: $0 * 3)) },
                            headerDigest: true, dataDigest: true)
        var parser = PDUParser()
        parser.headerDigest = true
        parser.dataDigest = true
        var tags: [UInt32] = []
        while let outcome = try parser.parse(&buffer) {
            guard case .pdu(let pdu) = outcome else { Issue.record("digest error"); return }
            tags.append(pdu.header.initiatorTaskTag)
            #expect(pdu.data.readableBytes == Int(pdu.header.initiatorTaskTag) * 3)
        }
        #expect(tags == Array(1...20))
    }

    @Test("a corrupted header digest ends the connection")
    func headerDigestMismatch() {
        var buffer = encode([command(itt: 1)], headerDigest: true)
        buffer.setInteger(UInt8(0x55), at: 20)
        var parser = PDUParser()
        parser.headerDigest = true
        #expect(throws: ISCSIProtocolError(.headerDigestMismatch, "")) { try parser.parse(&buffer) }
    }

    @Test("a corrupted data digest is reported with the header")
    func dataDigestMismatch() throws {
        var buffer = encode([command(itt: 4, data: [1, 2, 3, 4, 5])], dataDigest: true)
        buffer.setInteger(UInt8(0x99), at: 49)
        var parser = PDUParser()
        parser.dataDigest = true
        guard case .dataDigestError(let header) = try parser.parse(&buffer) else {
            Issue.record("digest error not detected")
            return
        }
        #expect(header.initiatorTaskTag == 4)
        #expect(buffer.readableBytes == 0)
    }

    @Test("DataSegmentLength above MaxRecvDataSegmentLength is refused before reading it")
    func oversized() {
        var header = BasicHeaderSegment(opcode: .scsiCommand)
        header.dataSegmentLength = 0xFF_FFFF
        var buffer = ByteBuffer(bytes: header.bytes)
        var parser = PDUParser()
        parser.maxRecvDataSegmentLength = 65536
        #expect(throws: ISCSIProtocolError(.dataSegmentTooLong, "")) { try parser.parse(&buffer) }
    }

    @Test("an Extended CDB AHS extends the CDB (RFC 7143 §11.2.2.3)")
    func extendedCDB() throws {
        let cdb = (0..<32).map { UInt8($0) }
        let pdu = SCSICommandPDU(
            lun: 0, initiatorTaskTag: 1, expectedDataTransferLength: 0, cmdSN: 1, expStatSN: 0, cdb: cdb, read: false,
            write: false
        ).pdu
        var bytes = encode([pdu])
        guard case .pdu(let parsed) = try PDUParser().parse(&bytes) else {
            Issue.record("no PDU")
            return
        }
        #expect(try SCSICommandPDU(parsed).cdb == cdb)
    }

    @Test("an AHS longer than TotalAHSLength is an invalid PDU field")
    func badAHS() throws {
        var header = BasicHeaderSegment(opcode: .scsiCommand)
        header.totalAHSLength = 1
        let pdu = ISCSIPDU(header: header, additionalHeaders: [0x00, 0x40, 0x01, 0x00])
        #expect(throws: ISCSIProtocolError(.invalidPDUField, "")) { try SCSICommandPDU(pdu) }
    }

    @Test("Data-In with status sets S and F and carries the residual")
    func dataInStatus() {
        var dataIn = DataInPDU(
            initiatorTaskTag: 7, sequence: SequenceNumbers(statSN: 5, expCmdSN: 6, maxCmdSN: 70), dataSN: 2,
            bufferOffset: 1024, data: ByteBuffer(bytes: [1, 2, 3]))
        dataIn.status = 0
        dataIn.residualUnderflow = true
        dataIn.residualCount = 13
        let h = dataIn.pdu.header
        #expect(h.flags == 0x83)
        #expect(h.uint32(at: 24) == 5)
        #expect(h.uint32(at: 36) == 2)
        #expect(h.uint32(at: 40) == 1024)
        #expect(h.uint32(at: 44) == 13)
    }
}
