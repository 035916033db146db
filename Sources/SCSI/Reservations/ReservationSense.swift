import NIOCore

/// Sense data and byte helpers the reservation code returns (SPC-4 §4.5.6, annex D).
enum ReservationSense {
    /// ILLEGAL REQUEST, INVALID FIELD IN CDB, with the field pointer at `byte`.
    static func invalidFieldInCDB(byte: UInt16) -> SenseData {
        var sense = SenseData(key: .illegalRequest, asc: 0x24, ascq: 0x00)
        sense.senseKeySpecific = (0x40, UInt8(byte >> 8), UInt8(byte & 0xFF))
        return sense
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST.
    static let invalidFieldInParameterList = SenseData(key: .illegalRequest, asc: 0x26, ascq: 0x00)
    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR.
    static let parameterListLengthError = SenseData(key: .illegalRequest, asc: 0x1A, ascq: 0x00)
    /// ILLEGAL REQUEST, INVALID RELEASE OF PERSISTENT RESERVATION (SPC-4 §5.9.11.2).
    static let invalidRelease = SenseData(key: .illegalRequest, asc: 0x26, ascq: 0x04)
    /// ILLEGAL REQUEST, INSUFFICIENT REGISTRATION RESOURCES (SPC-4 §5.9.7).
    static let insufficientRegistrationResources = SenseData(key: .illegalRequest, asc: 0x55, ascq: 0x04)
    /// HARDWARE ERROR, INTERNAL TARGET FAILURE: the state could not be saved.
    static let internalTargetFailure = SenseData(key: .hardwareError, asc: 0x44, ascq: 0x00)
    /// UNIT ATTENTION, RESERVATIONS PREEMPTED.
    static let reservationsPreempted = SenseData(key: .unitAttention, asc: 0x2A, ascq: 0x03)
    /// UNIT ATTENTION, RESERVATIONS RELEASED.
    static let reservationsReleased = SenseData(key: .unitAttention, asc: 0x2A, ascq: 0x04)
    /// UNIT ATTENTION, REGISTRATIONS PREEMPTED.
    static let registrationsPreempted = SenseData(key: .unitAttention, asc: 0x2A, ascq: 0x05)
}

/// Big-endian field access for CDBs and parameter lists, bounds-checked
/// (a short buffer reads as zeros; callers check lengths first).
enum ReservationBytes {
    static func be16(_ b: [UInt8], _ at: Int) -> UInt16 {
        guard at >= 0, at + 2 <= b.count else { return 0 }
        return UInt16(b[at]) << 8 | UInt16(b[at + 1])
    }

    static func be32(_ b: [UInt8], _ at: Int) -> UInt32 {
        guard at >= 0, at + 4 <= b.count else { return 0 }
        return (0..<4).reduce(UInt32(0)) { $0 << 8 | UInt32(b[at + $1]) }
    }

    static func be64(_ b: [UInt8], _ at: Int) -> UInt64 {
        guard at >= 0, at + 8 <= b.count else { return 0 }
        return (0..<8).reduce(UInt64(0)) { $0 << 8 | UInt64(b[at + $1]) }
    }

    static func append16(_ v: UInt16, to b: inout [UInt8]) {
        b += [UInt8(v >> 8), UInt8(v & 0xFF)]
    }

    static func append32(_ v: UInt32, to b: inout [UInt8]) {
        b += [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)]
    }

    static func append64(_ v: UInt64, to b: inout [UInt8]) {
        append32(UInt32(v >> 32), to: &b)
        append32(UInt32(v & 0xFFFF_FFFF), to: &b)
    }

    /// Data-In of `bytes` cut to the CDB's allocation length (SPC-4 §4.2.5.6).
    static func dataIn(_ bytes: [UInt8], allocationLength: Int) -> SCSIResult {
        .good(data: ByteBuffer(bytes: bytes.prefix(allocationLength)))
    }
}
