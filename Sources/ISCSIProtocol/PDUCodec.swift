import NIOCore

// MARK: - Errors

/// A failure of the iSCSI transport layer. `scope` says how far it reaches
/// (STYLE.md: a task-level failure is a different case from a connection-level one).
public struct ISCSIProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The header digest did not match: the PDU boundary is still known, but RFC 7143 §7.8
        /// lets a target at ErrorRecoveryLevel 0 only drop the connection.
        case headerDigestMismatch
        /// The data digest did not match (RFC 7143 §7.8: Reject with reason 0x02).
        case dataDigestMismatch
        /// DataSegmentLength above the negotiated MaxRecvDataSegmentLength (RFC 7143 §13.12).
        case dataSegmentTooLong
        /// A PDU whose fields are inconsistent (RFC 7143 §11.17.1 reason 0x09 Invalid PDU field).
        case invalidPDUField
        /// An opcode this target does not know or does not accept.
        case unsupportedOpcode
        /// A protocol rule was broken (RFC 7143 §11.17.1 reason 0x04).
        case protocolError
    }
    public var code: Code
    private var detail: String

    public init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    public var description: String { "\(code): \(detail)" }
    public static func == (a: Self, b: Self) -> Bool { a.code == b.code }
}

// MARK: - Parser

/// Splits a byte stream into PDUs (RFC 7143 §11.2). A partial PDU consumes
/// nothing; the caller keeps the bytes and calls again when more arrive.
/// Digests and the receive limit change after login, so they are plain
/// properties the connection updates.
public struct PDUParser: Sendable {
    /// HeaderDigest=CRC32C was negotiated.
    public var headerDigest = false
    /// DataDigest=CRC32C was negotiated.
    public var dataDigest = false
    /// Our MaxRecvDataSegmentLength (8192 until login says otherwise, RFC 7143 §13.12).
    public var maxRecvDataSegmentLength = 8192

    public init() {}

    /// What one call produced.
    public enum Outcome: Sendable {
        case pdu(ISCSIPDU)
        /// A whole PDU was read but its data digest was wrong; the header is
        /// valid, so the target can answer with a Reject (RFC 7143 §7.8).
        case dataDigestError(BasicHeaderSegment)
    }

    /// Parses one PDU from the front of `buffer`, or returns nil if it is not
    /// all there yet. Throws for errors that end the connection.
    public func parse(_ buffer: inout ByteBuffer) throws(ISCSIProtocolError) -> Outcome? {
        guard buffer.readableBytes >= BasicHeaderSegment.length else { return nil }
        let start = buffer.readerIndex
        guard let headerBytes = buffer.getBytes(at: start, length: BasicHeaderSegment.length),
            let header = BasicHeaderSegment(bytes: headerBytes)
        else { return nil }
        let ahsLength = header.totalAHSLength * 4
        let dataLength = header.dataSegmentLength
        // RFC 7143 §13.12: the sender must not exceed our MaxRecvDataSegmentLength.
        // Login PDUs are bounded by the 8192 default during login.
        guard dataLength <= max(maxRecvDataSegmentLength, 8192) else {
            throw ISCSIProtocolError(.dataSegmentTooLong, "DataSegmentLength \(dataLength) > \(maxRecvDataSegmentLength)")
        }
        let padded = (dataLength + 3) & ~3
        let headerDigestLength = headerDigest ? 4 : 0
        let dataDigestLength = (dataDigest && dataLength > 0) ? 4 : 0
        let total = BasicHeaderSegment.length + ahsLength + headerDigestLength + padded + dataDigestLength
        guard buffer.readableBytes >= total else { return nil }

        var offset = start + BasicHeaderSegment.length
        let ahs = ahsLength > 0 ? (buffer.getBytes(at: offset, length: ahsLength) ?? []) : []
        offset += ahsLength
        if headerDigest {
            // RFC 7143 §13.1: the header digest covers the BHS and the AHS.
            let expected = buffer.getInteger(at: offset, endianness: .little, as: UInt32.self) ?? 0
            let actual = buffer.getSlice(at: start, length: BasicHeaderSegment.length + ahsLength).map(CRC32C.checksum) ?? 0
            guard expected == actual else {
                throw ISCSIProtocolError(.headerDigestMismatch, "opcode 0x\(String(header.rawOpcode, radix: 16))")
            }
            offset += 4
        }
        let data = buffer.getSlice(at: offset, length: dataLength) ?? ByteBuffer()
        offset += padded
        if dataDigestLength > 0 {
            let expected = buffer.getInteger(at: offset, endianness: .little, as: UInt32.self) ?? 0
            let actual = CRC32C.checksum(data, padding: padded - dataLength)
            buffer.moveReaderIndex(to: start + total)
            guard expected == actual else { return .dataDigestError(header) }
            return .pdu(ISCSIPDU(header: header, additionalHeaders: ahs, data: data))
        }
        buffer.moveReaderIndex(to: start + total)
        return .pdu(ISCSIPDU(header: header, additionalHeaders: ahs, data: data))
    }
}

// MARK: - Serializer

/// Writes PDUs with padding and, when negotiated, digests (RFC 7143 §11.2).
public struct PDUSerializer: Sendable {
    public var headerDigest = false
    public var dataDigest = false

    public init() {}

    /// Appends `pdu` to `out`; DataSegmentLength and TotalAHSLength are set from the PDU's contents.
    public func write(_ pdu: ISCSIPDU, into out: inout ByteBuffer) {
        let dataLength = pdu.data.readableBytes
        writeHeader(pdu, dataLength: dataLength, into: &out)
        if dataLength > 0 {
            var data = pdu.data
            out.writeBuffer(&data)
            writeTrailer(for: pdu.data, into: &out)
        }
    }

    /// Appends the header (BHS, AHS, header digest) of a PDU whose data
    /// segment of `dataLength` bytes the caller sends separately, followed by
    /// `writeTrailer(for:into:)`: large Data-In goes out without a copy.
    public func writeHeader(_ pdu: ISCSIPDU, dataLength: Int, into out: inout ByteBuffer) {
        var header = pdu.header
        header.dataSegmentLength = dataLength
        header.totalAHSLength = pdu.additionalHeaders.count / 4
        let headerStart = out.writerIndex
        out.writeBytes(header.bytes)
        out.writeBytes(pdu.additionalHeaders)
        if headerDigest {
            let digest = out.getSlice(at: headerStart, length: out.writerIndex - headerStart).map(CRC32C.checksum) ?? 0
            out.writeInteger(digest, endianness: .little)
        }
    }

    /// Appends the padding and data digest that follow a data segment.
    public func writeTrailer(for data: ByteBuffer, into out: inout ByteBuffer) {
        let dataLength = data.readableBytes
        guard dataLength > 0 else { return }
        let padding = (4 - dataLength % 4) % 4
        if padding > 0 { out.writeRepeatingByte(0, count: padding) }
        if dataDigest {
            out.writeInteger(CRC32C.checksum(data, padding: padding), endianness: .little)
        }
    }

    /// The encoded size of a PDU, for buffer reservation.
    public func encodedLength(_ pdu: ISCSIPDU) -> Int {
        let dataLength = pdu.data.readableBytes
        return BasicHeaderSegment.length + pdu.additionalHeaders.count + (headerDigest ? 4 : 0)
            + ((dataLength + 3) & ~3) + (dataDigest && dataLength > 0 ? 4 : 0)
    }
}
