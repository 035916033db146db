import NIOCore

// MARK: - The contract between a transport and the SCSI layer

/// An I_T nexus: the initiator port and the target port a command came through
/// (SAM-5 §4.6). Persistent reservations and unit attentions are kept per nexus.
public struct ITNexus: Sendable, Hashable, CustomStringConvertible {
    /// Initiator port name, e.g. `iqn.1994-05.com.redhat:host,i,0x23d000000001` (RFC 7143 §4.2.7.1).
    public var initiatorPortName: String
    /// Initiator device name (the iSCSI InitiatorName), used for ACL-like policies.
    public var initiatorName: String
    /// The 6-byte ISID, part of the initiator port.
    public var isid: UInt64
    /// Target port name, `TargetName,t,0xTPGT`.
    public var targetPortName: String
    /// Relative target port identifier (VPD 83h, PR transport IDs); the TPGT here.
    public var relativeTargetPortID: UInt16

    public init(initiatorName: String, isid: UInt64, targetName: String, portalGroupTag: UInt16) {
        self.initiatorName = initiatorName
        self.isid = isid
        self.initiatorPortName = initiatorName + ",i,0x" + String(format6: isid)
        self.targetPortName = targetName + ",t,0x" + String(portalGroupTag, radix: 16, uppercase: false)
        self.relativeTargetPortID = portalGroupTag
    }

    public var description: String { "\(initiatorPortName) → \(targetPortName)" }
}

extension String {
    /// Twelve lowercase hex digits of a 48-bit ISID (RFC 7143 §4.2.7.1).
    init(format6 value: UInt64) {
        let hex = String(value & 0xFFFF_FFFF_FFFF, radix: 16)
        let padding = String(repeating: "0", count: Swift.max(0, 12 - hex.count))
        self = padding + hex
    }
}

/// Task attribute from the SCSI Command PDU (SAM-5 §8.5, RFC 7143 §11.3.1).
public enum TaskAttribute: UInt8, Sendable {
    case untagged = 0
    case simple = 1
    case ordered = 2
    case headOfQueue = 3
    case aca = 4
}

/// One SCSI command as the transport hands it to a logical unit, with all of
/// its Data-Out already gathered.
public struct SCSICommand: Sendable {
    /// The CDB, 6 to 16 (or 260 with AHS) bytes.
    public var cdb: [UInt8]
    /// The nexus the command arrived on.
    public var nexus: ITNexus
    /// Expected Data Transfer Length from the transport (RFC 7143 §11.3.3).
    public var expectedDataTransferLength: UInt32
    /// The transport said data flows to the target (W bit).
    public var isWrite: Bool
    /// The transport said data flows to the initiator (R bit).
    public var isRead: Bool
    /// All Data-Out bytes received (at most `expectedDataTransferLength`).
    public var dataOut: ByteBuffer
    public var taskAttribute: TaskAttribute
    /// Initiator Task Tag, for logs and ABORT TASK.
    public var taskTag: UInt32

    public init(
        cdb: [UInt8], nexus: ITNexus, expectedDataTransferLength: UInt32, isWrite: Bool, isRead: Bool,
        dataOut: ByteBuffer = ByteBuffer(), taskAttribute: TaskAttribute = .simple, taskTag: UInt32 = 0
    ) {
        self.cdb = cdb
        self.nexus = nexus
        self.expectedDataTransferLength = expectedDataTransferLength
        self.isWrite = isWrite
        self.isRead = isRead
        self.dataOut = dataOut
        self.taskAttribute = taskAttribute
        self.taskTag = taskTag
    }
}

/// SCSI status codes (SAM-5 §5.3).
public enum SCSIStatus: UInt8, Sendable {
    case good = 0x00
    case checkCondition = 0x02
    case conditionMet = 0x04
    case busy = 0x08
    case reservationConflict = 0x18
    case taskSetFull = 0x28
    case acaActive = 0x30
    case taskAborted = 0x40
}

/// What a logical unit answers to a command.
public struct SCSIResult: Sendable {
    public var status: SCSIStatus
    /// Fixed-format sense data with CHECK CONDITION.
    public var sense: SenseData?
    /// Data-In, possibly longer than the allocation length allows; the
    /// transport truncates to the Expected Data Transfer Length and reports
    /// the residual (RFC 7143 §11.4.5).
    public var dataIn: ByteBuffer?
    /// For commands with Data-Out: how many bytes the CDB asked for, so the
    /// transport can report a residual against the Expected Data Transfer
    /// Length. Nil when the command transfers no Data-Out.
    public var dataOutLength: Int?
    /// For a read cut short to the Expected Data Transfer Length (so the
    /// target never buffers data the initiator will not take): the length
    /// the CDB asked for, from which the transport reports the overflow
    /// residual. Nil when `dataIn` is the whole transfer.
    public var dataInLength: Int?

    public init(
        status: SCSIStatus, sense: SenseData? = nil, dataIn: ByteBuffer? = nil, dataOutLength: Int? = nil,
        dataInLength: Int? = nil
    ) {
        self.status = status
        self.sense = sense
        self.dataIn = dataIn
        self.dataOutLength = dataOutLength
        self.dataInLength = dataInLength
    }

    public static let good = SCSIResult(status: .good)
    public static func good(data: ByteBuffer) -> SCSIResult { SCSIResult(status: .good, dataIn: data) }
    public static func checkCondition(_ sense: SenseData) -> SCSIResult { SCSIResult(status: .checkCondition, sense: sense) }
    public static let reservationConflict = SCSIResult(status: .reservationConflict)
}

/// Sense keys (SPC-4 §4.5.6, table 52).
public enum SenseKey: UInt8, Sendable {
    case noSense = 0x0
    case recoveredError = 0x1
    case notReady = 0x2
    case mediumError = 0x3
    case hardwareError = 0x4
    case illegalRequest = 0x5
    case unitAttention = 0x6
    case dataProtect = 0x7
    case blankCheck = 0x8
    case copyAborted = 0xA
    case abortedCommand = 0xB
    case volumeOverflow = 0xD
    case miscompare = 0xE
}

/// A SCSI failure as a value (STYLE.md §3): sense key, ASC/ASCQ and the
/// optional INFORMATION and SENSE-KEY SPECIFIC fields of fixed-format sense
/// data (SPC-4 §4.5.3).
public struct SenseData: Sendable, Equatable, CustomStringConvertible {
    public var key: SenseKey
    public var asc: UInt8
    public var ascq: UInt8
    /// INFORMATION field (e.g. the first LBA in error, or the miscompare offset).
    public var information: UInt64?
    /// SENSE-KEY SPECIFIC, 3 bytes with SKSV set: for ILLEGAL REQUEST the field pointer.
    public var senseKeySpecific: (UInt8, UInt8, UInt8)?

    public init(key: SenseKey, asc: UInt8, ascq: UInt8, information: UInt64? = nil) {
        self.key = key
        self.asc = asc
        self.ascq = ascq
        self.information = information
    }

    public static func == (a: SenseData, b: SenseData) -> Bool {
        a.key == b.key && a.asc == b.asc && a.ascq == b.ascq && a.information == b.information
            && a.senseKeySpecific?.0 == b.senseKeySpecific?.0 && a.senseKeySpecific?.1 == b.senseKeySpecific?.1
            && a.senseKeySpecific?.2 == b.senseKeySpecific?.2
    }

    public var description: String {
        "sense \(key) asc 0x\(String(asc, radix: 16)) ascq 0x\(String(ascq, radix: 16))"
    }

    /// Fixed-format sense data, 18 bytes (SPC-4 §4.5.3).
    public var fixedFormatBytes: [UInt8] {
        var b = [UInt8](repeating: 0, count: 18)
        b[0] = 0x70 | (information != nil ? 0x80 : 0)
        b[2] = key.rawValue
        if let information {
            let v = UInt32(truncatingIfNeeded: information)
            b[3] = UInt8(v >> 24); b[4] = UInt8((v >> 16) & 0xFF); b[5] = UInt8((v >> 8) & 0xFF); b[6] = UInt8(v & 0xFF)
        }
        b[7] = 10
        b[12] = asc
        b[13] = ascq
        if let s = senseKeySpecific {
            b[15] = s.0 | 0x80
            b[16] = s.1
            b[17] = s.2
        }
        return b
    }
}
