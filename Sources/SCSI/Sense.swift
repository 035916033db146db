import BlockDevice
import NIOCore

// MARK: - Sense data helpers (SPC-4 §4.5)

/// Lets CDB parsers and handlers use typed throws for a SCSI failure; the
/// failure is always turned back into a `SCSIResult` by the logical unit and
/// never reaches the transport as an error.
extension SenseData: Error {}

extension SenseData {
    /// ILLEGAL REQUEST with a sense-key-specific field pointer (SPC-4 §4.5.2.4.2).
    /// `commandData` true points into the CDB (C/D = 1), false into the parameter list.
    static func illegalRequest(asc: UInt8, ascq: UInt8, byte: Int, bit: Int?, commandData: Bool) -> SenseData {
        var s = SenseData(key: .illegalRequest, asc: asc, ascq: ascq)
        var flags: UInt8 = commandData ? 0x40 : 0
        if let bit { flags |= 0x08 | UInt8(bit & 0x07) }
        let pointer = UInt16(truncatingIfNeeded: byte)
        s.senseKeySpecific = (flags, UInt8(pointer >> 8), UInt8(pointer & 0xFF))
        return s
    }

    /// INVALID FIELD IN CDB 24/00, pointing at `byte` (and `bit` when given).
    static func invalidFieldInCDB(byte: Int, bit: Int? = nil) -> SenseData {
        illegalRequest(asc: 0x24, ascq: 0x00, byte: byte, bit: bit, commandData: true)
    }

    /// INVALID FIELD IN PARAMETER LIST 26/00, pointing into the Data-Out parameter list.
    static func invalidFieldInParameterList(byte: Int, bit: Int? = nil) -> SenseData {
        illegalRequest(asc: 0x26, ascq: 0x00, byte: byte, bit: bit, commandData: false)
    }

    /// INVALID COMMAND OPERATION CODE 20/00.
    static let invalidOpcode = SenseData(key: .illegalRequest, asc: 0x20, ascq: 0x00)
    /// LOGICAL BLOCK ADDRESS OUT OF RANGE 21/00.
    static let lbaOutOfRange = SenseData(key: .illegalRequest, asc: 0x21, ascq: 0x00)
    /// PARAMETER LIST LENGTH ERROR 1A/00.
    static let parameterListLengthError = SenseData(key: .illegalRequest, asc: 0x1A, ascq: 0x00)
    /// LOGICAL UNIT NOT SUPPORTED 25/00 (SPC-4 §4.5.5).
    static let logicalUnitNotSupported = SenseData(key: .illegalRequest, asc: 0x25, ascq: 0x00)
    /// SAVING PARAMETERS NOT SUPPORTED 39/00.
    static let savingParametersNotSupported = SenseData(key: .illegalRequest, asc: 0x39, ascq: 0x00)
    /// INVALID FIELD IN COMMAND INFORMATION UNIT 0E/03: the transport delivered
    /// less Data-Out than the CDB requires (FCP-4 §9.4.2 b, as libiscsi's residual tests accept).
    static let invalidFieldInInformationUnit = SenseData(key: .illegalRequest, asc: 0x0E, ascq: 0x03)
    /// WRITE PROTECTED 27/00 (SBC-4 §4.11).
    static let writeProtected = SenseData(key: .dataProtect, asc: 0x27, ascq: 0x00)
    /// SPACE ALLOCATION FAILED WRITE PROTECT 27/07 (SBC-4 §4.7.3.7).
    static let spaceAllocationFailed = SenseData(key: .dataProtect, asc: 0x27, ascq: 0x07)
    /// WRITE ERROR 0C/00.
    static let writeError = SenseData(key: .mediumError, asc: 0x0C, ascq: 0x00)
    /// LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE 04/00.
    static let notReady = SenseData(key: .notReady, asc: 0x04, ascq: 0x00)
    /// INTERNAL TARGET FAILURE 44/00.
    static let internalTargetFailure = SenseData(key: .hardwareError, asc: 0x44, ascq: 0x00)

    /// UNRECOVERED READ ERROR 11/00 with INFORMATION = the first LBA of the request.
    static func unrecoveredReadError(lba: UInt64) -> SenseData {
        SenseData(key: .mediumError, asc: 0x11, ascq: 0x00, information: fixedFormatInformation(lba))
    }

    /// INFORMATION for fixed-format sense: only values that fit its 4 bytes
    /// (SPC-4 §4.5.3: otherwise VALID is 0 and the field is not reported).
    static func fixedFormatInformation(_ value: UInt64) -> UInt64? {
        value <= UInt64(UInt32.max) ? value : nil
    }

    /// MISCOMPARE DURING VERIFY OPERATION 1D/00 with INFORMATION = byte offset (SBC-4 §5.3).
    static func miscompare(offset: UInt64) -> SenseData {
        SenseData(key: .miscompare, asc: 0x1D, ascq: 0x00, information: offset)
    }

    // MARK: Unit attentions (SPC-4 §4.5.6, SAM-5 §5.14)

    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED 29/00.
    static let powerOnReset = SenseData(key: .unitAttention, asc: 0x29, ascq: 0x00)
    /// POWER ON OCCURRED 29/01.
    static let powerOnOccurred = SenseData(key: .unitAttention, asc: 0x29, ascq: 0x01)
    /// SCSI BUS RESET OCCURRED 29/02.
    static let busResetOccurred = SenseData(key: .unitAttention, asc: 0x29, ascq: 0x02)
    /// BUS DEVICE RESET FUNCTION OCCURRED 29/03.
    static let busDeviceReset = SenseData(key: .unitAttention, asc: 0x29, ascq: 0x03)
    /// MODE PARAMETERS CHANGED 2A/01.
    static let modeParametersChanged = SenseData(key: .unitAttention, asc: 0x2A, ascq: 0x01)
    /// CAPACITY DATA HAS CHANGED 2A/09.
    static let capacityDataChanged = SenseData(key: .unitAttention, asc: 0x2A, ascq: 0x09)
    /// REPORTED LUNS DATA HAS CHANGED 3F/0E.
    static let reportedLUNsDataChanged = SenseData(key: .unitAttention, asc: 0x3F, ascq: 0x0E)

    /// Maps a backing-store failure to sense data (SBC-4 §4.18).
    static func from(_ error: BlockDeviceError, lba: UInt64, isWrite: Bool) -> SenseData {
        switch error.code {
        case .readFailed: return .unrecoveredReadError(lba: lba)
        case .writeFailed:
            var s = SenseData.writeError
            s.information = fixedFormatInformation(lba)
            return s
        case .noSpace: return .spaceAllocationFailed
        case .writeProtected: return .writeProtected
        case .notReady: return .notReady
        case .outOfRange: return .lbaOutOfRange
        }
    }

    /// Descriptor-format sense data (SPC-4 §4.5.2): header, INFORMATION
    /// descriptor and sense-key-specific descriptor when present.
    var descriptorFormatBytes: [UInt8] {
        var b: [UInt8] = [0x72, key.rawValue, asc, ascq, 0, 0, 0, 0]
        if let information {
            b += [0x00, 0x0A, 0x80, 0]
            for shift in stride(from: 56, through: 0, by: -8) { b.append(UInt8(truncatingIfNeeded: information >> UInt64(shift))) }
        }
        if let s = senseKeySpecific {
            b += [0x02, 0x06, 0, 0, s.0 | 0x80, s.1, s.2, 0]
        }
        b[7] = UInt8(b.count - 8)
        return b
    }
}
