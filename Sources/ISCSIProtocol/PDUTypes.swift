import NIOCore

// Typed views of the PDUs (RFC 7143 §11). Each initiator PDU decodes from an
// `ISCSIPDU`; each target PDU encodes to one. Field offsets are the RFC's.

/// The fields every target PDU after login carries (RFC 7143 §11.2.1).
public struct SequenceNumbers: Sendable, Equatable {
    public var statSN: UInt32
    public var expCmdSN: UInt32
    public var maxCmdSN: UInt32
    public init(statSN: UInt32, expCmdSN: UInt32, maxCmdSN: UInt32) {
        self.statSN = statSN
        self.expCmdSN = expCmdSN
        self.maxCmdSN = maxCmdSN
    }
}

extension BasicHeaderSegment {
    fileprivate mutating func setSequenceNumbers(_ sn: SequenceNumbers, statSN includeStatSN: Bool = true) {
        if includeStatSN { setUInt32(sn.statSN, at: 24) }
        setUInt32(sn.expCmdSN, at: 28)
        setUInt32(sn.maxCmdSN, at: 32)
    }
}

// MARK: - SCSI Command (RFC 7143 §11.3)

public struct SCSICommandPDU: Sendable {
    public static let opcode = ISCSIOpcode.scsiCommand
    public var immediate: Bool
    public var final: Bool
    /// R bit: data flows to the initiator.
    public var read: Bool
    /// W bit: data flows to the target.
    public var write: Bool
    /// ATTR, 3 bits (SAM task attribute).
    public var attribute: UInt8
    public var lun: UInt64
    public var initiatorTaskTag: UInt32
    public var expectedDataTransferLength: UInt32
    public var cmdSN: UInt32
    public var expStatSN: UInt32
    /// The CDB: 16 bytes from the BHS, extended by an Extended CDB AHS (RFC 7143 §11.2.2.3).
    public var cdb: [UInt8]
    /// Immediate data.
    public var data: ByteBuffer

    public init(_ pdu: ISCSIPDU) throws(ISCSIProtocolError) {
        let h = pdu.header
        immediate = h.immediate
        final = h.final
        read = h.flags & 0x40 != 0
        write = h.flags & 0x20 != 0
        attribute = h.flags & 0x07
        lun = h.lun
        initiatorTaskTag = h.initiatorTaskTag
        expectedDataTransferLength = h.uint32(at: 20)
        cmdSN = h.uint32(at: 24)
        expStatSN = h.uint32(at: 28)
        cdb = Array(h.bytes[32..<48])
        var ahs = pdu.additionalHeaders[...]
        while ahs.count >= 4 {
            let length = Int(ahs[ahs.startIndex]) << 8 | Int(ahs[ahs.startIndex + 1])
            let type = ahs[ahs.startIndex + 2]
            let body = ahs.dropFirst(4)
            guard length >= 1, body.count >= length - 1 else {
                throw ISCSIProtocolError(.invalidPDUField, "AHS length \(length) exceeds TotalAHSLength")
            }
            if type == 1 {  // Extended CDB AHS: AHSLength counts the reserved byte too
                cdb += body.prefix(length - 1)
            }
            let consumed = 4 + ((length - 1 + 3) & ~3)
            ahs = ahs.dropFirst(min(consumed, ahs.count))
        }
        data = pdu.data
    }

    /// Builds the PDU (used by tests and the fuzz corpus).
    public init(
        lun: UInt64, initiatorTaskTag: UInt32, expectedDataTransferLength: UInt32, cmdSN: UInt32, expStatSN: UInt32,
        cdb: [UInt8], read: Bool, write: Bool, final: Bool = true, attribute: UInt8 = 1, immediate: Bool = false,
        data: ByteBuffer = ByteBuffer()
    ) {
        self.immediate = immediate
        self.final = final
        self.read = read
        self.write = write
        self.attribute = attribute
        self.lun = lun
        self.initiatorTaskTag = initiatorTaskTag
        self.expectedDataTransferLength = expectedDataTransferLength
        self.cmdSN = cmdSN
        self.expStatSN = expStatSN
        self.cdb = cdb
        self.data = data
    }

    public var pdu: ISCSIPDU {
        var h = BasicHeaderSegment(opcode: .scsiCommand)
        h.immediate = immediate
        h.flags = (final ? 0x80 : 0) | (read ? 0x40 : 0) | (write ? 0x20 : 0) | (attribute & 0x07)
        h.lun = lun
        h.initiatorTaskTag = initiatorTaskTag
        h.setUInt32(expectedDataTransferLength, at: 20)
        h.setUInt32(cmdSN, at: 24)
        h.setUInt32(expStatSN, at: 28)
        for (i, b) in cdb.prefix(16).enumerated() { h[32 + i] = b }
        var ahs: [UInt8] = []
        if cdb.count > 16 {
            let extra = Array(cdb[16...])
            let length = extra.count + 1
            ahs = [UInt8(length >> 8), UInt8(length & 0xFF), 1, 0] + extra
            while ahs.count % 4 != 0 { ahs.append(0) }
        }
        return ISCSIPDU(header: h, additionalHeaders: ahs, data: data)
    }
}

// MARK: - SCSI Response (RFC 7143 §11.4)

public struct SCSIResponsePDU: Sendable {
    /// iSCSI Response byte (RFC 7143 §11.4.3): 0x00 Command Completed at Target, 0x01 Target Failure.
    public var response: UInt8 = 0
    public var status: UInt8
    public var initiatorTaskTag: UInt32
    public var sequence: SequenceNumbers
    public var expDataSN: UInt32 = 0
    /// O bit (RFC 7143 §11.4.5.1).
    public var residualOverflow = false
    /// U bit.
    public var residualUnderflow = false
    public var residualCount: UInt32 = 0
    /// Sense data (without the 2-byte SenseLength prefix, which `pdu` adds, RFC 7143 §11.4.7).
    public var sense: [UInt8] = []

    public init(status: UInt8, initiatorTaskTag: UInt32, sequence: SequenceNumbers) {
        self.status = status
        self.initiatorTaskTag = initiatorTaskTag
        self.sequence = sequence
    }

    public var pdu: ISCSIPDU {
        var h = BasicHeaderSegment(opcode: .scsiResponse)
        h.flags = 0x80 | (residualOverflow ? 0x04 : 0) | (residualUnderflow ? 0x02 : 0)
        h[2] = response
        h[3] = status
        h.initiatorTaskTag = initiatorTaskTag
        h.setSequenceNumbers(sequence)
        h.setUInt32(expDataSN, at: 36)
        h.setUInt32(residualCount, at: 44)
        var data = ByteBuffer()
        if !sense.isEmpty {
            data.reserveCapacity(2 + sense.count)
            data.writeInteger(UInt16(sense.count))
            data.writeBytes(sense)
        }
        return ISCSIPDU(header: h, data: data)
    }
}

// MARK: - Data-Out (RFC 7143 §11.7)

public struct DataOutPDU: Sendable {
    public var final: Bool
    public var lun: UInt64
    public var initiatorTaskTag: UInt32
    public var targetTransferTag: UInt32
    public var expStatSN: UInt32
    public var dataSN: UInt32
    public var bufferOffset: UInt32
    public var data: ByteBuffer

    public init(_ pdu: ISCSIPDU) {
        let h = pdu.header
        final = h.final
        lun = h.lun
        initiatorTaskTag = h.initiatorTaskTag
        targetTransferTag = h.uint32(at: 20)
        expStatSN = h.uint32(at: 28)
        dataSN = h.uint32(at: 36)
        bufferOffset = h.uint32(at: 40)
        data = pdu.data
    }

    public init(
        final: Bool, lun: UInt64, initiatorTaskTag: UInt32, targetTransferTag: UInt32, expStatSN: UInt32,
        dataSN: UInt32, bufferOffset: UInt32, data: ByteBuffer
    ) {
        self.final = final
        self.lun = lun
        self.initiatorTaskTag = initiatorTaskTag
        self.targetTransferTag = targetTransferTag
        self.expStatSN = expStatSN
        self.dataSN = dataSN
        self.bufferOffset = bufferOffset
        self.data = data
    }

    public var pdu: ISCSIPDU {
        var h = BasicHeaderSegment(opcode: .dataOut)
        h.final = final
        h.lun = lun
        h.initiatorTaskTag = initiatorTaskTag
        h.setUInt32(targetTransferTag, at: 20)
        h.setUInt32(expStatSN, at: 28)
        h.setUInt32(dataSN, at: 36)
        h.setUInt32(bufferOffset, at: 40)
        return ISCSIPDU(header: h, data: data)
    }
}

// MARK: - Data-In (RFC 7143 §11.7)

public struct DataInPDU: Sendable {
    public var final = false
    /// A bit: acknowledgement requested (ErrorRecoveryLevel > 0 only).
    public var acknowledge = false
    /// S bit: status is in this PDU (phase collapse, RFC 7143 §11.7.3).
    public var status: UInt8?
    public var residualOverflow = false
    public var residualUnderflow = false
    public var residualCount: UInt32 = 0
    public var lun: UInt64 = 0
    public var initiatorTaskTag: UInt32
    public var targetTransferTag: UInt32 = 0xFFFF_FFFF
    public var sequence: SequenceNumbers
    public var dataSN: UInt32
    public var bufferOffset: UInt32
    public var data: ByteBuffer

    public init(initiatorTaskTag: UInt32, sequence: SequenceNumbers, dataSN: UInt32, bufferOffset: UInt32, data: ByteBuffer) {
        self.initiatorTaskTag = initiatorTaskTag
        self.sequence = sequence
        self.dataSN = dataSN
        self.bufferOffset = bufferOffset
        self.data = data
    }

    public var pdu: ISCSIPDU {
        var h = BasicHeaderSegment(opcode: .dataIn)
        var flags: UInt8 = final ? 0x80 : 0
        if acknowledge { flags |= 0x40 }
        if let status {
            // RFC 7143 §11.7.3: S implies F; residuals only meaningful with S.
            flags |= 0x81
            if residualOverflow { flags |= 0x04 }
            if residualUnderflow { flags |= 0x02 }
            h[3] = status
            h.setUInt32(residualCount, at: 44)
        }
        h.flags = flags
        h.lun = acknowledge ? lun : 0
        h.initiatorTaskTag = initiatorTaskTag
        h.setUInt32(targetTransferTag, at: 20)
        h.setSequenceNumbers(sequence, statSN: status != nil)
        h.setUInt32(dataSN, at: 36)
        h.setUInt32(bufferOffset, at: 40)
        return ISCSIPDU(header: h, data: data)
    }
}

// MARK: - Ready To Transfer (RFC 7143 §11.8)

public struct ReadyToTransferPDU: Sendable {
    public var lun: UInt64
    public var initiatorTaskTag: UInt32
    public var targetTransferTag: UInt32
    public var sequence: SequenceNumbers
    public var r2tSN: UInt32
    public var bufferOffset: UInt32
    public var desiredDataTransferLength: UInt32

    public init(
        lun: UInt64, initiatorTaskTag: UInt32, targetTransferTag: UInt32, sequence: SequenceNumbers, r2tSN: UInt32,
        bufferOffset: UInt32, desiredDataTransferLength: UInt32
    ) {
        self.lun = lun
        self.initiatorTaskTag = initiatorTaskTag
        self.targetTransferTag = targetTransferTag
        self.sequence = sequence
        self.r2tSN = r2tSN
        self.bufferOffset = bufferOffset
        self.desiredDataTransferLength = desiredDataTransferLength
    }

    public var pdu: ISCSIPDU {
        var h = BasicHeaderSegment(opcode: .readyToTransfer)
        h.flags = 0x80
        h.lun = lun
        h.initiatorTaskTag = initiatorTaskTag
        h.setUInt32(targetTransferTag, at: 20)
        // RFC 7143 §11.8: StatSN carries the next StatSN, which R2T does not advance.
        h.setSequenceNumbers(sequence)
        h.setUInt32(r2tSN, at: 36)
        h.setUInt32(bufferOffset, at: 40)
        h.setUInt32(desiredDataTransferLength, at: 44)
        return ISCSIPDU(header: h)
    }
}

// MARK: - NOP-Out / NOP-In (RFC 7143 §11.18, §11.19)

public struct NOPOutPDU: Sendable {
    public var immediate: Bool
    public var lun: UInt64
    public var initiatorTaskTag: UInt32
    public var targetTransferTag: UInt32
    public var cmdSN: UInt32
    public var expStatSN: UInt32
    public var data: ByteBuffer

    public init(_ pdu: ISCSIPDU) {
        let h = pdu.header
        immediate = h.immediate
        lun = h.lun
        initiatorTaskTag = h.initiatorTaskTag
        targetTransferTag = h.uint32(at: 20)
        cmdSN = h.uint32(at: 24)
        expStatSN = h.uint32(at: 28)
        data = pdu.data
    }
}

public struct NOPInPDU: Sendable {
    public var lun: UInt64 = 0
    public var initiatorTaskTag: UInt32
    public var targetTransferTag: UInt32
    public var sequence: SequenceNumbers
    public var data: ByteBuffer

    public init(initiatorTaskTag: UInt32, targetTransferTag: UInt32, sequence: SequenceNumbers, data: ByteBuffer = ByteBuffer()) {
        self.initiatorTaskTag = initiatorTaskTag
        self.targetTransferTag = targetTransferTag
        self.sequence = sequence
        self.data = data
    }

    public var pdu: ISCSIPDU {
        var h = BasicHeaderSegment(opcode: .nopIn)
        h.flags = 0x80
        h.lun = lun
        h.initiatorTaskTag = initiatorTaskTag
        h.setUInt32(targetTransferTag, at: 20)
        h.setSequenceNumbers(sequence)
        return ISCSIPDU(header: h, data: data)
    }
}

// MARK: - Login (RFC 7143 §11.12, §11.13)

/// Login stages (RFC 7143 §11.12.3 CSG/NSG).
public enum LoginStage: UInt8, Sendable {
    case securityNegotiation = 0
    case loginOperationalNegotiation = 1
    case fullFeaturePhase = 3
}

public struct LoginRequestPDU: Sendable {
    /// T bit.
    public var transit: Bool
    /// C bit: text continues in the next PDU.
    public var `continue`: Bool
    /// CSG, raw 2 bits (2 is reserved and must be rejected).
    public var currentStage: UInt8
    /// NSG, raw 2 bits.
    public var nextStage: UInt8
    public var versionMax: UInt8
    public var versionMin: UInt8
    /// ISID, 6 bytes as an integer (RFC 7143 §11.12.5).
    public var isid: UInt64
    public var tsih: UInt16
    public var initiatorTaskTag: UInt32
    public var cid: UInt16
    public var cmdSN: UInt32
    public var expStatSN: UInt32
    public var data: ByteBuffer

    public init(_ pdu: ISCSIPDU) {
        let h = pdu.header
        transit = h.flags & 0x80 != 0
        `continue` = h.flags & 0x40 != 0
        currentStage = (h.flags >> 2) & 0x03
        nextStage = h.flags & 0x03
        versionMax = h[2]
        versionMin = h[3]
        isid = h.uint64(at: 8) >> 16
        tsih = h.uint16(at: 14)
        initiatorTaskTag = h.initiatorTaskTag
        cid = h.uint16(at: 20)
        cmdSN = h.uint32(at: 24)
        expStatSN = h.uint32(at: 28)
        data = pdu.data
    }

    public init(
        transit: Bool, continue: Bool = false, currentStage: UInt8, nextStage: UInt8, isid: UInt64, tsih: UInt16 = 0,
        initiatorTaskTag: UInt32 = 0, cid: UInt16 = 0, cmdSN: UInt32 = 0, expStatSN: UInt32 = 0,
        data: ByteBuffer = ByteBuffer()
    ) {
        self.transit = transit
        self.continue = `continue`
        self.currentStage = currentStage
        self.nextStage = nextStage
        self.versionMax = 0
        self.versionMin = 0
        self.isid = isid
        self.tsih = tsih
        self.initiatorTaskTag = initiatorTaskTag
        self.cid = cid
        self.cmdSN = cmdSN
        self.expStatSN = expStatSN
        self.data = data
    }

    public var pdu: ISCSIPDU {
        var h = BasicHeaderSegment(opcode: .loginRequest)
        h.immediate = true
        h.flags = (transit ? 0x80 : 0) | (`continue` ? 0x40 : 0) | ((currentStage & 3) << 2) | (nextStage & 3)
        h[2] = versionMax
        h[3] = versionMin
        h.setUInt64(isid << 16 | UInt64(tsih), at: 8)
        h.initiatorTaskTag = initiatorTaskTag
        h.setUInt16(cid, at: 20)
        h.setUInt32(cmdSN, at: 24)
        h.setUInt32(expStatSN, at: 28)
        return ISCSIPDU(header: h, data: data)
    }
}

/// Login status classes and details (RFC 7143 §11.13.5).
public struct LoginStatus: Sendable, Equatable {
    public var statusClass: UInt8
    public var detail: UInt8
    public init(statusClass: UInt8, detail: UInt8) {
        self.statusClass = statusClass
        self.detail = detail
    }
    public static let success = LoginStatus(statusClass: 0, detail: 0)
    public static let initiatorError = LoginStatus(statusClass: 2, detail: 0)
    public static let authenticationFailure = LoginStatus(statusClass: 2, detail: 1)
    public static let authorizationFailure = LoginStatus(statusClass: 2, detail: 2)
    public static let targetNotFound = LoginStatus(statusClass: 2, detail: 3)
    public static let targetRemoved = LoginStatus(statusClass: 2, detail: 4)
    public static let unsupportedVersion = LoginStatus(statusClass: 2, detail: 5)
    public static let tooManyConnections = LoginStatus(statusClass: 2, detail: 6)
    public static let missingParameter = LoginStatus(statusClass: 2, detail: 7)
    public static let cantIncludeInSession = LoginStatus(statusClass: 2, detail: 8)
    public static let sessionTypeNotSupported = LoginStatus(statusClass: 2, detail: 9)
    public static let sessionDoesNotExist = LoginStatus(statusClass: 2, detail: 0x0A)
    public static let invalidDuringLogin = LoginStatus(statusClass: 2, detail: 0x0B)
    public static let targetError = LoginStatus(statusClass: 3, detail: 0)
    public static let serviceUnavailable = LoginStatus(statusClass: 3, detail: 1)
    public static let outOfResources = LoginStatus(statusClass: 3, detail: 2)
}

public struct LoginResponsePDU: Sendable {
    public var transit: Bool
    public var `continue` = false
    public var currentStage: UInt8
    public var nextStage: UInt8
    public var versionMax: UInt8 = 0
    public var versionActive: UInt8 = 0
    public var isid: UInt64
    public var tsih: UInt16
    public var initiatorTaskTag: UInt32
    public var sequence: SequenceNumbers
    public var status: LoginStatus
    public var data: ByteBuffer

    public init(
        transit: Bool, currentStage: UInt8, nextStage: UInt8, isid: UInt64, tsih: UInt16, initiatorTaskTag: UInt32,
        sequence: SequenceNumbers, status: LoginStatus, data: ByteBuffer = ByteBuffer()
    ) {
        self.transit = transit
        self.currentStage = currentStage
        self.nextStage = nextStage
        self.isid = isid
        self.tsih = tsih
        self.initiatorTaskTag = initiatorTaskTag
        self.sequence = sequence
        self.status = status
        self.data = data
    }

    public init(_ pdu: ISCSIPDU) {
        let h = pdu.header
        transit = h.flags & 0x80 != 0
        `continue` = h.flags & 0x40 != 0
        currentStage = (h.flags >> 2) & 0x03
        nextStage = h.flags & 0x03
        versionMax = h[2]
        versionActive = h[3]
        isid = h.uint64(at: 8) >> 16
        tsih = h.uint16(at: 14)
        initiatorTaskTag = h.initiatorTaskTag
        sequence = SequenceNumbers(statSN: h.uint32(at: 24), expCmdSN: h.uint32(at: 28), maxCmdSN: h.uint32(at: 32))
        status = LoginStatus(statusClass: h[36], detail: h[37])
        data = pdu.data
    }

    public var pdu: ISCSIPDU {
        var h = BasicHeaderSegment(opcode: .loginResponse)
        h.flags = (transit ? 0x80 : 0) | (`continue` ? 0x40 : 0) | ((currentStage & 3) << 2) | (nextStage & 3)
        h[2] = versionMax
        h[3] = versionActive
        h.setUInt64(isid << 16 | UInt64(tsih), at: 8)
        h.initiatorTaskTag = initiatorTaskTag
        h.setSequenceNumbers(sequence)
        h[36] = status.statusClass
        h[37] = status.detail
        return ISCSIPDU(header: h, data: data)
    }
}

// MARK: - Text (RFC 7143 §11.10, §11.11)

public struct TextRequestPDU: Sendable {
    public var immediate: Bool
    public var final: Bool
    public var `continue`: Bool
    public var lun: UInt64
    public var initiatorTaskTag: UInt32
    public var targetTransferTag: UInt32
    public var cmdSN: UInt32
    public var expStatSN: UInt32
    public var data: ByteBuffer

    public init(_ pdu: ISCSIPDU) {
        let h = pdu.header
        immediate = h.immediate
        final = h.final
        `continue` = h.flags & 0x40 != 0
        lun = h.lun
        initiatorTaskTag = h.initiatorTaskTag
        targetTransferTag = h.uint32(at: 20)
        cmdSN = h.uint32(at: 24)
        expStatSN = h.uint32(at: 28)
        data = pdu.data
    }
}

public struct TextResponsePDU: Sendable {
    public var final: Bool
    public var `continue` = false
    public var lun: UInt64 = 0
    public var initiatorTaskTag: UInt32
    public var targetTransferTag: UInt32
    public var sequence: SequenceNumbers
    public var data: ByteBuffer

    public init(final: Bool, initiatorTaskTag: UInt32, targetTransferTag: UInt32, sequence: SequenceNumbers, data: ByteBuffer) {
        self.final = final
        self.initiatorTaskTag = initiatorTaskTag
        self.targetTransferTag = targetTransferTag
        self.sequence = sequence
        self.data = data
    }

    public var pdu: ISCSIPDU {
        var h = BasicHeaderSegment(opcode: .textResponse)
        h.flags = (final ? 0x80 : 0) | (`continue` ? 0x40 : 0)
        h.lun = lun
        h.initiatorTaskTag = initiatorTaskTag
        h.setUInt32(targetTransferTag, at: 20)
        h.setSequenceNumbers(sequence)
        return ISCSIPDU(header: h, data: data)
    }
}

// MARK: - Logout (RFC 7143 §11.14, §11.15)

public struct LogoutRequestPDU: Sendable {
    /// Reason code: 0 close the session, 1 close the connection, 2 remove the connection for recovery.
    public var reasonCode: UInt8
    public var immediate: Bool
    public var initiatorTaskTag: UInt32
    public var cid: UInt16
    public var cmdSN: UInt32
    public var expStatSN: UInt32

    public init(_ pdu: ISCSIPDU) {
        let h = pdu.header
        reasonCode = h.flags & 0x7F
        immediate = h.immediate
        initiatorTaskTag = h.initiatorTaskTag
        cid = h.uint16(at: 20)
        cmdSN = h.uint32(at: 24)
        expStatSN = h.uint32(at: 28)
    }
}

public struct LogoutResponsePDU: Sendable {
    /// 0 closed successfully, 1 CID not found, 2 recovery not supported, 3 cleanup failed.
    public var response: UInt8
    public var initiatorTaskTag: UInt32
    public var sequence: SequenceNumbers
    public var time2Wait: UInt16 = 0
    public var time2Retain: UInt16 = 0

    public init(response: UInt8, initiatorTaskTag: UInt32, sequence: SequenceNumbers) {
        self.response = response
        self.initiatorTaskTag = initiatorTaskTag
        self.sequence = sequence
    }

    public var pdu: ISCSIPDU {
        var h = BasicHeaderSegment(opcode: .logoutResponse)
        h.flags = 0x80
        h[2] = response
        h.initiatorTaskTag = initiatorTaskTag
        h.setSequenceNumbers(sequence)
        h.setUInt16(time2Wait, at: 40)
        h.setUInt16(time2Retain, at: 42)
        return ISCSIPDU(header: h)
    }
}

// MARK: - Task Management (RFC 7143 §11.5, §11.6)

public struct TaskManagementRequestPDU: Sendable {
    /// Function (RFC 7143 §11.5.1): 1 ABORT TASK, 2 ABORT TASK SET, 3 CLEAR ACA, 4 CLEAR TASK SET,
    /// 5 LOGICAL UNIT RESET, 6 TARGET WARM RESET, 7 TARGET COLD RESET, 8 TASK REASSIGN.
    public var function: UInt8
    public var immediate: Bool
    public var lun: UInt64
    public var initiatorTaskTag: UInt32
    public var referencedTaskTag: UInt32
    public var cmdSN: UInt32
    public var expStatSN: UInt32
    public var refCmdSN: UInt32

    public init(_ pdu: ISCSIPDU) {
        let h = pdu.header
        function = h.flags & 0x7F
        immediate = h.immediate
        lun = h.lun
        initiatorTaskTag = h.initiatorTaskTag
        referencedTaskTag = h.uint32(at: 20)
        cmdSN = h.uint32(at: 24)
        expStatSN = h.uint32(at: 28)
        refCmdSN = h.uint32(at: 32)
    }
}

public struct TaskManagementResponsePDU: Sendable {
    /// Response (RFC 7143 §11.6.1): 0 complete, 1 task does not exist, 2 LUN does not exist,
    /// 3 task still allegiant, 4 reassignment not supported, 5 function not supported,
    /// 6 authorization failed, 255 rejected.
    public var response: UInt8
    public var initiatorTaskTag: UInt32
    public var sequence: SequenceNumbers

    public init(response: UInt8, initiatorTaskTag: UInt32, sequence: SequenceNumbers) {
        self.response = response
        self.initiatorTaskTag = initiatorTaskTag
        self.sequence = sequence
    }

    public var pdu: ISCSIPDU {
        var h = BasicHeaderSegment(opcode: .taskManagementResponse)
        h.flags = 0x80
        h[2] = response
        h.initiatorTaskTag = initiatorTaskTag
        h.setSequenceNumbers(sequence)
        return ISCSIPDU(header: h)
    }
}

// MARK: - Reject (RFC 7143 §11.17)

public struct RejectPDU: Sendable {
    /// Reason (RFC 7143 §11.17.1).
    public enum Reason: UInt8, Sendable {
        case dataDigestError = 0x02
        case snackReject = 0x03
        case protocolError = 0x04
        case commandNotSupported = 0x05
        case immediateCommandRejected = 0x06
        case taskInProgress = 0x07
        case invalidDataAck = 0x08
        case invalidPDUField = 0x09
        case longOperationReject = 0x0A
        case waitingForLogout = 0x0C
    }
    public var reason: Reason
    public var sequence: SequenceNumbers
    public var dataSN: UInt32 = 0
    /// The complete header of the rejected PDU.
    public var rejectedHeader: [UInt8]

    public init(reason: Reason, sequence: SequenceNumbers, rejectedHeader: [UInt8]) {
        self.reason = reason
        self.sequence = sequence
        self.rejectedHeader = rejectedHeader
    }

    public var pdu: ISCSIPDU {
        var h = BasicHeaderSegment(opcode: .reject)
        h.flags = 0x80
        h[2] = reason.rawValue
        h.initiatorTaskTag = 0xFFFF_FFFF
        h.setSequenceNumbers(sequence)
        h.setUInt32(dataSN, at: 36)
        var data = ByteBuffer()
        data.writeBytes(rejectedHeader)
        return ISCSIPDU(header: h, data: data)
    }
}

// MARK: - Asynchronous Message (RFC 7143 §11.9)

public struct AsyncMessagePDU: Sendable {
    /// AsyncEvent: 0 SCSI async event, 1 logout requested, 2 connection drop, 3 session drop,
    /// 4 negotiation requested, 5 task termination.
    public var asyncEvent: UInt8
    public var lun: UInt64 = 0
    public var sequence: SequenceNumbers
    public var parameter1: UInt16 = 0
    public var parameter2: UInt16 = 0
    public var parameter3: UInt16 = 0
    public var data = ByteBuffer()

    public init(asyncEvent: UInt8, sequence: SequenceNumbers) {
        self.asyncEvent = asyncEvent
        self.sequence = sequence
    }

    public var pdu: ISCSIPDU {
        var h = BasicHeaderSegment(opcode: .asyncMessage)
        h.flags = 0x80
        h.lun = lun
        h.initiatorTaskTag = 0xFFFF_FFFF
        h.setSequenceNumbers(sequence)
        h[36] = asyncEvent
        h.setUInt16(parameter1, at: 38)
        h.setUInt16(parameter2, at: 40)
        h.setUInt16(parameter3, at: 42)
        return ISCSIPDU(header: h, data: data)
    }
}
