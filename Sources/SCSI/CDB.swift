// MARK: - Big-endian field access on a CDB or parameter list

extension Array where Element == UInt8 {
    /// Big-endian 16-bit field at `i`.
    @inline(__always) func be16(_ i: Int) -> UInt16 { UInt16(self[i]) << 8 | UInt16(self[i + 1]) }
    /// Big-endian 24-bit field at `i`.
    @inline(__always) func be24(_ i: Int) -> UInt32 { UInt32(self[i]) << 16 | UInt32(self[i + 1]) << 8 | UInt32(self[i + 2]) }
    /// Big-endian 32-bit field at `i`.
    @inline(__always) func be32(_ i: Int) -> UInt32 {
        UInt32(self[i]) << 24 | UInt32(self[i + 1]) << 16 | UInt32(self[i + 2]) << 8 | UInt32(self[i + 3])
    }
    /// Big-endian 64-bit field at `i`.
    @inline(__always) func be64(_ i: Int) -> UInt64 { UInt64(be32(i)) << 32 | UInt64(be32(i + 4)) }

    /// Stores `value` big-endian in `width` bytes at `i`.
    @inline(__always) mutating func put<T: FixedWidthInteger>(_ value: T, at i: Int, width: Int) {
        for k in 0..<width { self[i + k] = UInt8(truncatingIfNeeded: value >> ((width - 1 - k) * 8)) }
    }
}

// MARK: - Operation codes (SPC-4 §D.3, SBC-4 §5)

/// Operation codes this target knows, named as in SPC-4 / SBC-4.
enum Opcode {
    static let testUnitReady: UInt8 = 0x00
    static let requestSense: UInt8 = 0x03
    static let read6: UInt8 = 0x08
    static let write6: UInt8 = 0x0A
    static let inquiry: UInt8 = 0x12
    static let modeSelect6: UInt8 = 0x15
    static let reserve6: UInt8 = 0x16
    static let release6: UInt8 = 0x17
    static let modeSense6: UInt8 = 0x1A
    static let startStopUnit: UInt8 = 0x1B
    static let preventAllowMediumRemoval: UInt8 = 0x1E
    static let readCapacity10: UInt8 = 0x25
    static let read10: UInt8 = 0x28
    static let write10: UInt8 = 0x2A
    static let writeAndVerify10: UInt8 = 0x2E
    static let verify10: UInt8 = 0x2F
    static let preFetch10: UInt8 = 0x34
    static let synchronizeCache10: UInt8 = 0x35
    static let readDefectData10: UInt8 = 0x37
    static let writeSame10: UInt8 = 0x41
    static let unmap: UInt8 = 0x42
    static let modeSelect10: UInt8 = 0x55
    static let reserve10: UInt8 = 0x56
    static let release10: UInt8 = 0x57
    static let modeSense10: UInt8 = 0x5A
    static let persistentReserveIn: UInt8 = 0x5E
    static let persistentReserveOut: UInt8 = 0x5F
    static let extendedCopy: UInt8 = 0x83
    static let receiveCopyResults: UInt8 = 0x84
    static let read16: UInt8 = 0x88
    static let compareAndWrite: UInt8 = 0x89
    static let write16: UInt8 = 0x8A
    static let orWrite16: UInt8 = 0x8B
    static let writeAndVerify16: UInt8 = 0x8E
    static let verify16: UInt8 = 0x8F
    static let preFetch16: UInt8 = 0x90
    static let synchronizeCache16: UInt8 = 0x91
    static let writeSame16: UInt8 = 0x93
    static let serviceActionIn16: UInt8 = 0x9E
    static let reportLUNs: UInt8 = 0xA0
    static let maintenanceIn: UInt8 = 0xA3
    static let read12: UInt8 = 0xA8
    static let write12: UInt8 = 0xAA
    static let writeAndVerify12: UInt8 = 0xAE
    static let verify12: UInt8 = 0xAF
    static let readDefectData12: UInt8 = 0xB7

    /// SERVICE ACTION IN(16) service actions (SBC-4 §5.16, §5.8).
    static let saReadCapacity16: UInt16 = 0x10
    static let saGetLBAStatus: UInt16 = 0x12
    /// MAINTENANCE IN service actions (SPC-4 §6.35, §6.36).
    static let saReportSupportedOpcodes: UInt16 = 0x0C
    static let saReportSupportedTMFs: UInt16 = 0x0D
}

// MARK: - READ / WRITE / VERIFY family

/// The LBA, transfer length and flags shared by the READ, WRITE, VERIFY,
/// WRITE AND VERIFY, ORWRITE, PRE-FETCH and SYNCHRONIZE CACHE CDBs in their
/// 6-, 10-, 12- and 16-byte forms (SBC-4 §5).
struct ReadWriteCDB {
    var lba: UInt64
    var blocks: UInt32
    /// Byte 1 bits 7-5: RDPROTECT / WRPROTECT / VRPROTECT / ORPROTECT (0 for 6-byte CDBs).
    var protect: UInt8
    var dpo: Bool
    var fua: Bool
    /// Byte offset of the TRANSFER LENGTH field, for the sense field pointer.
    var lengthByte: Int

    /// Decodes the fields by CDB size (the operation code's group). READ(6) and
    /// WRITE(6) map a transfer length of 0 to 256 blocks (SBC-4 §5.13, §5.39).
    init(_ cdb: [UInt8]) {
        switch cdb[0] >> 5 {
        case 0:  // 6-byte
            lba = UInt64(cdb[1] & 0x1F) << 16 | UInt64(cdb[2]) << 8 | UInt64(cdb[3])
            blocks = cdb[4] == 0 ? 256 : UInt32(cdb[4])
            protect = 0
            dpo = false
            fua = false
            lengthByte = 4
            return
        case 1, 2:  // 10-byte
            lba = UInt64(cdb.be32(2))
            blocks = UInt32(cdb.be16(7))
            lengthByte = 7
        case 5:  // 12-byte
            lba = UInt64(cdb.be32(2))
            blocks = cdb.be32(6)
            lengthByte = 6
        default:  // 16-byte (group 4)
            lba = cdb.be64(2)
            blocks = cdb.be32(10)
            lengthByte = 10
        }
        protect = cdb[1] >> 5
        dpo = cdb[1] & 0x10 != 0
        fua = cdb[1] & 0x08 != 0
    }
}
