import Foundation

// MARK: - Persistent reservation state (SPC-4 §5.9)

/// The six persistent reservation types (SPC-4 §6.16.3.4, table 212).
enum PersistentReservationType: UInt8, Sendable, CaseIterable {
    case writeExclusive = 0x1
    case exclusiveAccess = 0x3
    case writeExclusiveRegistrantsOnly = 0x5
    case exclusiveAccessRegistrantsOnly = 0x6
    case writeExclusiveAllRegistrants = 0x7
    case exclusiveAccessAllRegistrants = 0x8

    /// Every registered I_T nexus is a reservation holder (SPC-4 §5.9.10).
    var isAllRegistrants: Bool { self == .writeExclusiveAllRegistrants || self == .exclusiveAccessAllRegistrants }

    /// Registrants Only: one holder, but every registrant may access.
    var isRegistrantsOnly: Bool {
        self == .writeExclusiveRegistrantsOnly || self == .exclusiveAccessRegistrantsOnly
    }

    /// Write Exclusive family: non-holders may still read.
    var isWriteExclusive: Bool {
        self == .writeExclusive || self == .writeExclusiveRegistrantsOnly || self == .writeExclusiveAllRegistrants
    }
}

/// Who a registration belongs to: an initiator port (or, for a TransportID
/// without an ISID, every port of that initiator, SPC-4 §7.6.4.6) seen
/// through one target port (or all of them with ALL_TG_PT, SPC-4 §5.9.7).
struct RegistrantID: Sendable, Hashable {
    /// iSCSI initiator name, lowercased (RFC 3722 names compare case-insensitively).
    var initiatorName: String
    /// The ISID, nil for "every initiator port with this name" (TransportID format 00b).
    var isid: UInt64?
    /// `TargetName,t,0xTPGT`, nil when registered through all target ports (ALL_TG_PT).
    var targetPortName: String?
    /// Relative target port identifier of the target port it registered through.
    var relativeTargetPortID: UInt16

    /// The registrant for exactly this I_T nexus (or its initiator port on all target ports).
    init(nexus: ITNexus, allTargetPorts: Bool = false) {
        self.initiatorName = nexus.initiatorName.lowercased()
        self.isid = nexus.isid
        self.targetPortName = allTargetPorts ? nil : nexus.targetPortName
        self.relativeTargetPortID = nexus.relativeTargetPortID
    }

    init(initiatorName: String, isid: UInt64?, targetPortName: String?, relativeTargetPortID: UInt16) {
        self.initiatorName = initiatorName.lowercased()
        self.isid = isid
        self.targetPortName = targetPortName
        self.relativeTargetPortID = relativeTargetPortID
    }

    /// Whether commands arriving on `nexus` come from this registrant.
    func matches(_ nexus: ITNexus) -> Bool {
        if let isid, isid != nexus.isid { return false }
        if let targetPortName, targetPortName != nexus.targetPortName { return false }
        return initiatorName == nexus.initiatorName.lowercased()
    }

    /// Whether this registrant and `other` can match a common I_T nexus.
    func overlaps(_ other: RegistrantID) -> Bool {
        guard initiatorName == other.initiatorName else { return false }
        if let a = isid, let b = other.isid, a != b { return false }
        if let a = targetPortName, let b = other.targetPortName, a != b { return false }
        return true
    }

    /// The one I_T nexus this registrant names, when it names exactly one.
    var exactNexus: ITNexus? {
        guard let isid, let targetPortName, let range = targetPortName.range(of: ",t,0x", options: .backwards) else {
            return nil
        }
        return ITNexus(
            initiatorName: initiatorName, isid: isid, targetName: String(targetPortName[..<range.lowerBound]),
            portalGroupTag: relativeTargetPortID)
    }
}

/// One registered reservation key (SPC-4 §5.9.7).
struct PersistentRegistration: Sendable, Equatable {
    var registrant: RegistrantID
    var key: UInt64
}

/// The persistent reservation itself (SPC-4 §5.9.9).
struct PersistentReservation: Sendable, Equatable {
    /// The holder; nil for the all-registrants types, where every registrant holds it.
    var holder: RegistrantID?
    var type: PersistentReservationType
    /// Always 0h (LU_SCOPE): the only scope SPC-4 keeps.
    var scope: UInt8 = 0
}

/// Everything a logical unit remembers about persistent reservations, and
/// what is saved to SQLite after every change.
struct PersistentReservationState: Sendable, Equatable {
    /// PRGENERATION (SPC-4 §6.15.2): bumped by REGISTER, REGISTER AND IGNORE
    /// EXISTING KEY, CLEAR, PREEMPT, PREEMPT AND ABORT and REGISTER AND MOVE.
    var generation: UInt32 = 0
    var registrations: [PersistentRegistration] = []
    var reservation: PersistentReservation?
    /// APTPL as the initiator last set it; reported as PTPL_A. The state is
    /// kept across restarts either way (LiveMount promises it).
    var activatePersistThroughPowerLoss = false

    var isEmpty: Bool { registrations.isEmpty && reservation == nil }

    /// Index of the registration commands on `nexus` act under.
    func registrationIndex(for nexus: ITNexus) -> Int? {
        registrations.firstIndex { $0.registrant.matches(nexus) }
    }

    /// Whether `nexus` holds the persistent reservation (SPC-4 §5.9.10).
    func isHolder(_ nexus: ITNexus) -> Bool {
        guard let reservation else { return false }
        if reservation.type.isAllRegistrants { return registrationIndex(for: nexus) != nil }
        guard let holder = reservation.holder else { return false }
        return holder.matches(nexus)
    }

    /// Whether the registration at `index` holds the reservation.
    func isHolder(registrationAt index: Int) -> Bool {
        guard let reservation else { return false }
        if reservation.type.isAllRegistrants { return true }
        return reservation.holder == registrations[index].registrant
    }

    mutating func bumpGeneration() {
        generation = generation &+ 1
    }
}

// MARK: - TransportIDs (SPC-4 §7.6.4.6, iSCSI)

/// An iSCSI TransportID: PROTOCOL IDENTIFIER 5h, FORMAT CODE 00b (name) or
/// 01b (name plus ",i,0x" and the ISID).
struct ISCSITransportID: Sendable, Equatable {
    static let protocolIdentifier: UInt8 = 0x5
    var initiatorName: String
    var isid: UInt64?

    /// The encoded TransportID, padded to a multiple of four, at least 24 bytes.
    var bytes: [UInt8] {
        var name = Array(initiatorName.utf8)
        if let isid { name += Array(",i,0x\(String(format6: isid))".utf8) }
        name.append(0)
        while name.count % 4 != 0 || name.count < 20 { name.append(0) }
        var out: [UInt8] = [((isid == nil ? 0 : 1) << 6) | Self.protocolIdentifier, 0]
        out += [UInt8(truncatingIfNeeded: name.count >> 8), UInt8(truncatingIfNeeded: name.count)]
        return out + name
    }

    /// Decodes one TransportID at the start of `bytes`; nil when malformed.
    /// Returns the TransportID and how many bytes it used.
    static func decode(_ bytes: ArraySlice<UInt8>) -> (ISCSITransportID, Int)? {
        guard bytes.count >= 4 else { return nil }
        let start = bytes.startIndex
        let format = bytes[start] >> 6
        guard bytes[start] & 0x0F == protocolIdentifier, format <= 1 else { return nil }
        let additionalLength = Int(bytes[start + 2]) << 8 | Int(bytes[start + 3])
        guard additionalLength >= 4, additionalLength % 4 == 0, bytes.count >= 4 + additionalLength else { return nil }
        let field = bytes[(start + 4)..<(start + 4 + additionalLength)]
        guard let nul = field.firstIndex(of: 0) else { return nil }
        guard let text = String(validating: field[field.startIndex..<nul], as: UTF8.self), !text.isEmpty else {
            return nil
        }
        if format == 0 {
            return (ISCSITransportID(initiatorName: text, isid: nil), 4 + additionalLength)
        }
        guard let separator = text.range(of: ",i,0x", options: [.caseInsensitive, .backwards]) else { return nil }
        let hex = text[separator.upperBound...]
        guard !hex.isEmpty, hex.count <= 12, let isid = UInt64(hex, radix: 16) else { return nil }
        return (
            ISCSITransportID(initiatorName: String(text[..<separator.lowerBound]), isid: isid), 4 + additionalLength
        )
    }
}
