import ISCSIProtocol
import NIOCore

/// The Data-Out side of one write task (RFC 7143 §4.2.2.3-4, §11.7, §11.8):
/// immediate data, unsolicited Data-Out up to FirstBurstLength, then R2Ts of
/// at most MaxBurstLength, MaxOutstandingR2T at a time, until
/// ExpectedDataTransferLength bytes are in. Pure: it validates and counts;
/// the connection sends the R2Ts it asks for.
struct DataOutAssembler: Sendable {
    /// Negotiated limits that shape the transfer.
    struct Limits: Sendable {
        var firstBurstLength: Int
        var maxBurstLength: Int
        var maxOutstandingR2T: Int
        var initialR2T: Bool
        var dataPDUInOrder: Bool
    }

    /// One R2T the target sent and the Data-Out sequence answering it.
    private struct Solicitation {
        var targetTransferTag: UInt32
        var offset: Int
        var length: Int
        var received = 0
        var nextDataSN: UInt32 = 0
    }

    let expectedLength: Int
    private let limits: Limits
    private(set) var data: ByteBuffer
    /// Bytes received so far, wherever they landed.
    private(set) var received = 0
    /// The unsolicited sequence (immediate data + Data-Out with TTT 0xFFFFFFFF) is still open.
    private var unsolicitedOpen: Bool
    private var unsolicitedReceived = 0
    private var unsolicitedNextDataSN: UInt32 = 0
    /// Offset up to which R2Ts have been issued.
    private var solicitedUpTo = 0
    private var solicitations: [Solicitation] = []
    private(set) var nextR2TSN: UInt32 = 0

    /// A violation of the Data-Out rules. It ends the task, not the
    /// connection: the task gets CHECK CONDITION, ABORTED COMMAND with the
    /// DATA PHASE ERROR family ASC 4Bh (SPC-4 Annex F) whose qualifier is `ascq`.
    struct Violation: Error, Sendable, CustomStringConvertible {
        var description: String
        /// 00h data phase error, 02h too much write data, 05h data offset error.
        var ascq: UInt8 = 0x00
    }

    /// An R2T the connection must send.
    struct R2TRequest: Sendable, Equatable {
        var r2tSN: UInt32
        var targetTransferTag: UInt32
        var offset: Int
        var length: Int
    }

    /// Starts with the command's immediate data. `final` is the command's F bit:
    /// clear means unsolicited Data-Out PDUs follow (RFC 7143 §11.3.1).
    init(expectedLength: Int, immediateData: ByteBuffer, final: Bool, limits: Limits, allocator: ByteBufferAllocator)
        throws(Violation)
    {
        self.expectedLength = expectedLength
        self.limits = limits
        // Room for what may arrive unsolicited; solicited data gets its room when
        // its R2T goes out (nextR2Ts), so ExpectedDataTransferLength alone never
        // reserves memory beyond the connection's R2T budget.
        data = allocator.buffer(capacity: min(expectedLength, final ? immediateData.readableBytes : limits.firstBurstLength))
        let immediate = immediateData.readableBytes
        // RFC 7143 §13.14: unsolicited data (immediate included) never exceeds FirstBurstLength.
        guard immediate <= expectedLength else {
            throw Violation(
                description: "immediate data \(immediate) exceeds ExpectedDataTransferLength \(expectedLength)", ascq: 0x02)
        }
        guard immediate <= limits.firstBurstLength else {
            throw Violation(description: "immediate data \(immediate) exceeds FirstBurstLength \(limits.firstBurstLength)")
        }
        if !final && limits.initialR2T {
            throw Violation(description: "F=0 on a write command but InitialR2T=Yes forbids unsolicited Data-Out")
        }
        var immediateCopy = immediateData
        data.writeBuffer(&immediateCopy)
        received = immediate
        unsolicitedReceived = immediate
        unsolicitedOpen = !final && immediate < expectedLength
        solicitedUpTo = immediate
    }

    /// All the data is in.
    var isComplete: Bool { received >= expectedLength }

    /// Bytes solicited with R2Ts so far.
    var solicitedBytes: Int { solicitedUpTo - unsolicitedReceived }

    /// Whether the next R2T still has to be sent (so the task waits for budget).
    var needsR2T: Bool { !unsolicitedOpen && solicitedUpTo < expectedLength && solicitations.count < limits.maxOutstandingR2T }

    /// Takes one Data-Out PDU.
    mutating func receive(_ pdu: DataOutPDU) throws(Violation) {
        let length = pdu.data.readableBytes
        let offset = Int(pdu.bufferOffset)
        guard offset + length <= expectedLength else {
            throw Violation(
                description: "Data-Out [\(offset), +\(length)) beyond ExpectedDataTransferLength \(expectedLength)", ascq: 0x02)
        }
        if pdu.targetTransferTag == 0xFFFF_FFFF {
            // Unsolicited Data-Out (RFC 7143 §11.7.4).
            guard unsolicitedOpen else { throw Violation(description: "unsolicited Data-Out when none is allowed") }
            guard pdu.dataSN == unsolicitedNextDataSN else {
                throw Violation(description: "DataSN \(pdu.dataSN), expected \(unsolicitedNextDataSN)")
            }
            guard offset == unsolicitedReceived else {
                throw Violation(
                    description: "unsolicited Data-Out at offset \(offset), expected \(unsolicitedReceived)", ascq: 0x05)
            }
            guard unsolicitedReceived + length <= limits.firstBurstLength else {
                throw Violation(description: "unsolicited data exceeds FirstBurstLength \(limits.firstBurstLength)")
            }
            unsolicitedNextDataSN &+= 1
            unsolicitedReceived += length
            place(pdu.data, at: offset)
            solicitedUpTo = max(solicitedUpTo, unsolicitedReceived)
            if pdu.final { unsolicitedOpen = false }
            return
        }
        guard let index = solicitations.firstIndex(where: { $0.targetTransferTag == pdu.targetTransferTag }) else {
            throw Violation(description: "Data-Out for unknown Target Transfer Tag 0x\(String(pdu.targetTransferTag, radix: 16))")
        }
        var s = solicitations[index]
        guard pdu.dataSN == s.nextDataSN else {
            throw Violation(description: "DataSN \(pdu.dataSN), expected \(s.nextDataSN)")
        }
        // RFC 7143 §13.19 DataPDUInOrder=Yes: offsets ascend without gaps.
        guard offset == s.offset + s.received || !limits.dataPDUInOrder else {
            throw Violation(description: "Data-Out at offset \(offset), expected \(s.offset + s.received)", ascq: 0x05)
        }
        guard offset >= s.offset, offset + length <= s.offset + s.length else {
            throw Violation(description: "Data-Out [\(offset), +\(length)) outside the R2T's range")
        }
        s.nextDataSN &+= 1
        s.received += length
        place(pdu.data, at: offset)
        if s.received >= s.length || pdu.final {
            guard s.received == s.length else {
                throw Violation(description: "R2T sequence ended after \(s.received) of \(s.length) bytes")
            }
            solicitations.remove(at: index)
        } else {
            solicitations[index] = s
        }
    }

    /// The R2Ts to send now: none while unsolicited data may still come, then
    /// up to MaxOutstandingR2T at a time, soliciting at most `budget` bytes
    /// (the connection's memory bound). `makeTag` hands out Target Transfer Tags.
    mutating func nextR2Ts(budget: Int = .max, makeTag: () -> UInt32) -> [R2TRequest] {
        guard !unsolicitedOpen else { return [] }
        var out: [R2TRequest] = []
        var budget = budget
        while solicitations.count < limits.maxOutstandingR2T && solicitedUpTo < expectedLength {
            let length = min(limits.maxBurstLength, expectedLength - solicitedUpTo)
            guard length <= budget else { break }
            budget -= length
            let tag = makeTag()
            let request = R2TRequest(r2tSN: nextR2TSN, targetTransferTag: tag, offset: solicitedUpTo, length: length)
            solicitations.append(Solicitation(targetTransferTag: tag, offset: solicitedUpTo, length: length))
            nextR2TSN &+= 1
            solicitedUpTo += length
            out.append(request)
        }
        if !out.isEmpty { data.reserveCapacity(solicitedUpTo) }
        return out
    }

    /// The assembled Data-Out, once complete.
    var assembled: ByteBuffer { data }

    private mutating func place(_ bytes: ByteBuffer, at offset: Int) {
        if offset == data.writerIndex {
            var copy = bytes
            data.writeBuffer(&copy)
        } else {
            if offset > data.writerIndex { data.writeRepeatingByte(0, count: offset - data.writerIndex) }
            data.setBuffer(bytes, at: offset)
            data.moveWriterIndex(to: max(data.writerIndex, offset + bytes.readableBytes))
        }
        received += bytes.readableBytes
    }
}
