/// How a command fares against a reservation held by another I_T nexus:
/// the rows of SPC-4 §5.9.1 table 66 (SPC commands) and SBC-4 §4.17 table
/// 13 (block commands), folded into three patterns.
enum ReservationAccessClass: Sendable, Equatable {
    /// "Allowed" in every column: INQUIRY, REPORT LUNS, REQUEST SENSE, PR IN/OUT, TEST UNIT READY...
    case allowed
    /// Reads: allowed under the Write Exclusive types; under Exclusive Access
    /// only from registrants of RO/AR types.
    case read
    /// Writes and everything else: conflict under Write Exclusive and
    /// Exclusive Access, allowed from registrants under RO/AR types.
    case write
    /// RESERVE/RELEASE(6/10): decided by `ReservationManager.reserve/release`.
    case spc2Reservation

    /// Classifies `cdb` (SPC-4 table 66, SBC-4 table 13).
    static func classify(_ cdb: [UInt8]) -> ReservationAccessClass {
        guard let opcode = cdb.first else { return .write }
        switch opcode {
        case 0x00,  // TEST UNIT READY (ALLOW COMMANDS = 001b)
            0x03,  // REQUEST SENSE
            0x12,  // INQUIRY
            0x25,  // READ CAPACITY (10)
            0x4D,  // LOG SENSE
            0x5E,  // PERSISTENT RESERVE IN
            0x5F,  // PERSISTENT RESERVE OUT (its own key checks, SPC-4 §5.9.11)
            0xA0,  // REPORT LUNS
            0x86,  // ACCESS CONTROL IN
            0x87:  // ACCESS CONTROL OUT
            return .allowed
        case 0x16, 0x17, 0x56, 0x57:
            return .spc2Reservation
        case 0x08, 0x28, 0xA8, 0x88,  // READ (6/10/12/16)
            0x2F, 0xAF, 0x8F,  // VERIFY (10/12/16)
            0x34, 0x90,  // PRE-FETCH (10/16)
            0x37, 0xB7,  // READ DEFECT DATA (10/12)
            0x3E:  // READ LONG (10)
            return .read
        case 0x1B:  // START STOP UNIT: allowed with START=1 and POWER CONDITION=0 (SBC-4 table 13)
            guard cdb.count > 4 else { return .write }
            return (cdb[4] & 0x01) == 1 && (cdb[4] >> 4) == 0 ? .allowed : .write
        case 0x1E:  // PREVENT ALLOW MEDIUM REMOVAL: PREVENT=0 is allowed
            guard cdb.count > 4 else { return .write }
            return (cdb[4] & 0x03) == 0 ? .allowed : .write
        case 0x9E:  // SERVICE ACTION IN (16)
            guard cdb.count > 1 else { return .write }
            switch cdb[1] & 0x1F {
            case 0x10: return .allowed  // READ CAPACITY (16)
            case 0x11, 0x12: return .read  // READ LONG (16), GET LBA STATUS
            default: return .write
            }
        case 0xA3:  // MAINTENANCE IN
            guard cdb.count > 1 else { return .write }
            switch cdb[1] & 0x1F {
            // REPORT IDENTIFYING INFORMATION, TARGET PORT GROUPS, ALIASES, PRIORITY.
            case 0x05, 0x0A, 0x0B, 0x0E: return .allowed
            default: return .write  // REPORT SUPPORTED OPCODES / TMFs, REPORT TIMESTAMP
            }
        case 0xAB:  // SERVICE ACTION IN (12): READ MEDIA SERIAL NUMBER
            guard cdb.count > 1 else { return .write }
            return (cdb[1] & 0x1F) == 0x01 ? .allowed : .write
        default:
            // MODE SENSE/SELECT, WRITE*, UNMAP, SYNCHRONIZE CACHE, COMPARE AND
            // WRITE, EXTENDED COPY, RECEIVE COPY RESULTS, LOG SELECT, buffers...
            return .write
        }
    }

    /// Whether a nexus that does not hold the reservation gets RESERVATION
    /// CONFLICT: `registered` says whether it holds a registration.
    func conflicts(with type: PersistentReservationType, registered: Bool) -> Bool {
        switch self {
        case .allowed, .spc2Reservation:
            return false
        case .read:
            if type.isWriteExclusive { return false }
            return type == .exclusiveAccess || !registered
        case .write:
            if type == .writeExclusive || type == .exclusiveAccess { return true }
            return !registered
        }
    }

    /// Commands another initiator may still send while an SPC-2 reservation is
    /// held (SPC-2 §5.5.1): INQUIRY, REQUEST SENSE, REPORT LUNS, and RESERVE/RELEASE
    /// themselves, which `ReservationManager` decides.
    static func allowedUnderSPC2Reservation(_ cdb: [UInt8]) -> Bool {
        guard let opcode = cdb.first else { return false }
        return [0x03, 0x12, 0xA0, 0x16, 0x17, 0x56, 0x57].contains(opcode)
    }
}
