import BlockDevice

/// Sense data the copy manager returns (SPC-4 §6.4, annex D), and the
/// big-endian helpers its parameter parsing uses.
enum CopySense {
    /// ILLEGAL REQUEST, INVALID FIELD IN CDB, field pointer at `byte`.
    static func invalidFieldInCDB(byte: UInt16) -> SenseData {
        var sense = SenseData(key: .illegalRequest, asc: 0x24, ascq: 0x00)
        sense.senseKeySpecific = (0x40, UInt8(byte >> 8), UInt8(byte & 0xFF))
        return sense
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST, field pointer at `byte` of the parameter list.
    static func invalidFieldInParameterList(byte: Int) -> SenseData {
        var sense = SenseData(key: .illegalRequest, asc: 0x26, ascq: 0x00)
        let b = UInt16(clamping: byte)
        sense.senseKeySpecific = (0x00, UInt8(b >> 8), UInt8(b & 0xFF))
        return sense
    }

    static let parameterListLengthError = SenseData(key: .illegalRequest, asc: 0x1A, ascq: 0x00)
    /// ILLEGAL REQUEST, OPERATION IN PROGRESS: the list identifier is in use.
    static let operationInProgress = SenseData(key: .illegalRequest, asc: 0x00, ascq: 0x16)
    static let tooManyTargetDescriptors = SenseData(key: .illegalRequest, asc: 0x26, ascq: 0x06)
    static let unsupportedTargetDescriptorType = SenseData(key: .illegalRequest, asc: 0x26, ascq: 0x07)
    static let tooManySegmentDescriptors = SenseData(key: .illegalRequest, asc: 0x26, ascq: 0x08)
    static let unsupportedSegmentDescriptorType = SenseData(key: .illegalRequest, asc: 0x26, ascq: 0x09)
    static let unexpectedInexactSegment = SenseData(key: .illegalRequest, asc: 0x26, ascq: 0x0A)
    static let inlineDataLengthExceeded = SenseData(key: .illegalRequest, asc: 0x26, ascq: 0x0B)
    /// COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE: a CSCD that cannot be found or used.
    static let targetNotReachable = SenseData(key: .copyAborted, asc: 0x0D, ascq: 0x02)
    /// COPY ABORTED, NO ADDITIONAL SENSE: a segment outside its copy target's capacity.
    static let segmentOutOfRange = SenseData(key: .copyAborted, asc: 0x00, ascq: 0x00)

    /// COPY ABORTED with the additional sense code a copy target's failure maps to.
    static func copyAborted(_ error: BlockDeviceError) -> SenseData {
        switch error.code {
        case .readFailed: return SenseData(key: .copyAborted, asc: 0x11, ascq: 0x00)  // UNRECOVERED READ ERROR
        case .writeFailed: return SenseData(key: .copyAborted, asc: 0x0C, ascq: 0x00)  // WRITE ERROR
        case .noSpace: return SenseData(key: .copyAborted, asc: 0x27, ascq: 0x07)  // SPACE ALLOCATION FAILED
        case .writeProtected: return SenseData(key: .copyAborted, asc: 0x27, ascq: 0x00)  // WRITE PROTECTED
        case .notReady: return targetNotReachable
        case .outOfRange: return segmentOutOfRange
        }
    }

    static func be16(_ b: [UInt8], _ at: Int) -> Int {
        guard at >= 0, at + 2 <= b.count else { return 0 }
        return Int(b[at]) << 8 | Int(b[at + 1])
    }

    static func be32(_ b: [UInt8], _ at: Int) -> Int {
        guard at >= 0, at + 4 <= b.count else { return 0 }
        return (0..<4).reduce(0) { $0 << 8 | Int(b[at + $1]) }
    }

    static func be64(_ b: [UInt8], _ at: Int) -> UInt64 {
        guard at >= 0, at + 8 <= b.count else { return 0 }
        return (0..<8).reduce(UInt64(0)) { $0 << 8 | UInt64(b[at + $1]) }
    }

    static func put16(_ v: Int, _ b: inout [UInt8], at: Int) {
        b[at] = UInt8(truncatingIfNeeded: v >> 8)
        b[at + 1] = UInt8(truncatingIfNeeded: v)
    }

    static func put32(_ v: Int, _ b: inout [UInt8], at: Int) {
        for i in 0..<4 { b[at + i] = UInt8(truncatingIfNeeded: v >> (24 - 8 * i)) }
    }
}
