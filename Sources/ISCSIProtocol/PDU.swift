import NIOCore

// MARK: - Opcodes (RFC 7143 §11.2.1.2)

/// iSCSI opcodes: initiator opcodes 0x00-0x1F, target opcodes 0x20-0x3F.
public enum ISCSIOpcode: UInt8, Sendable {
    case nopOut = 0x00
    case scsiCommand = 0x01
    case taskManagementRequest = 0x02
    case loginRequest = 0x03
    case textRequest = 0x04
    case dataOut = 0x05
    case logoutRequest = 0x06
    case snackRequest = 0x10
    case nopIn = 0x20
    case scsiResponse = 0x21
    case taskManagementResponse = 0x22
    case loginResponse = 0x23
    case textResponse = 0x24
    case dataIn = 0x25
    case logoutResponse = 0x26
    case readyToTransfer = 0x31
    case asyncMessage = 0x32
    case reject = 0x3F
}

// MARK: - Basic Header Segment (RFC 7143 §11.2.1)

/// The 48-byte Basic Header Segment, kept as raw bytes with typed accessors
/// for the fields common to every PDU. Opcode-specific fields are read by the
/// typed PDU structs through `uint32(at:)` and friends.
public struct BasicHeaderSegment: Sendable, Equatable {
    public static let length = 48
    public private(set) var bytes: [UInt8]

    /// A zeroed header with the given opcode.
    public init(opcode: ISCSIOpcode) {
        bytes = [UInt8](repeating: 0, count: Self.length)
        bytes[0] = opcode.rawValue
    }

    /// Wraps exactly 48 header bytes.
    public init?(bytes: [UInt8]) {
        guard bytes.count == Self.length else { return nil }
        self.bytes = bytes
    }

    /// The raw 6-bit opcode.
    public var rawOpcode: UInt8 { bytes[0] & 0x3F }
    public var opcode: ISCSIOpcode? { ISCSIOpcode(rawValue: rawOpcode) }
    /// I bit: immediate delivery (RFC 7143 §11.2.1.2).
    public var immediate: Bool {
        get { bytes[0] & 0x40 != 0 }
        set { bytes[0] = newValue ? bytes[0] | 0x40 : bytes[0] & ~0x40 }
    }
    /// Byte 1: F bit and opcode-specific flags.
    public var flags: UInt8 {
        get { bytes[1] }
        set { bytes[1] = newValue }
    }
    /// F bit (bit 7 of byte 1).
    public var final: Bool {
        get { bytes[1] & 0x80 != 0 }
        set { bytes[1] = newValue ? bytes[1] | 0x80 : bytes[1] & ~0x80 }
    }
    /// TotalAHSLength in 4-byte words (byte 4).
    public var totalAHSLength: Int {
        get { Int(bytes[4]) }
        set { bytes[4] = UInt8(truncatingIfNeeded: newValue) }
    }
    /// DataSegmentLength in bytes, without padding (bytes 5-7).
    public var dataSegmentLength: Int {
        get { Int(bytes[5]) << 16 | Int(bytes[6]) << 8 | Int(bytes[7]) }
        set {
            bytes[5] = UInt8((newValue >> 16) & 0xFF)
            bytes[6] = UInt8((newValue >> 8) & 0xFF)
            bytes[7] = UInt8(newValue & 0xFF)
        }
    }
    /// LUN or opcode-specific (bytes 8-15).
    public var lun: UInt64 {
        get { uint64(at: 8) }
        set { setUInt64(newValue, at: 8) }
    }
    /// Initiator Task Tag (bytes 16-19).
    public var initiatorTaskTag: UInt32 {
        get { uint32(at: 16) }
        set { setUInt32(newValue, at: 16) }
    }

    public func uint16(at offset: Int) -> UInt16 {
        UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }
    public func uint32(at offset: Int) -> UInt32 {
        UInt32(bytes[offset]) << 24 | UInt32(bytes[offset + 1]) << 16 | UInt32(bytes[offset + 2]) << 8
            | UInt32(bytes[offset + 3])
    }
    public func uint64(at offset: Int) -> UInt64 {
        UInt64(uint32(at: offset)) << 32 | UInt64(uint32(at: offset + 4))
    }
    public mutating func setUInt16(_ v: UInt16, at offset: Int) {
        bytes[offset] = UInt8(v >> 8)
        bytes[offset + 1] = UInt8(v & 0xFF)
    }
    public mutating func setUInt32(_ v: UInt32, at offset: Int) {
        bytes[offset] = UInt8(v >> 24)
        bytes[offset + 1] = UInt8((v >> 16) & 0xFF)
        bytes[offset + 2] = UInt8((v >> 8) & 0xFF)
        bytes[offset + 3] = UInt8(v & 0xFF)
    }
    public mutating func setUInt64(_ v: UInt64, at offset: Int) {
        setUInt32(UInt32(v >> 32), at: offset)
        setUInt32(UInt32(v & 0xFFFF_FFFF), at: offset + 4)
    }
    public subscript(offset: Int) -> UInt8 {
        get { bytes[offset] }
        set { bytes[offset] = newValue }
    }
}

// MARK: - A whole PDU

/// One iSCSI PDU: header, optional additional header segments, data segment
/// (without padding or digests, which belong to the codec).
public struct ISCSIPDU: Sendable {
    public var header: BasicHeaderSegment
    /// Additional Header Segments (RFC 7143 §11.2.2), raw; empty when none.
    public var additionalHeaders: [UInt8]
    public var data: ByteBuffer

    public init(header: BasicHeaderSegment, additionalHeaders: [UInt8] = [], data: ByteBuffer = ByteBuffer()) {
        self.header = header
        self.additionalHeaders = additionalHeaders
        self.data = data
    }

    public var opcode: ISCSIOpcode? { header.opcode }
}
