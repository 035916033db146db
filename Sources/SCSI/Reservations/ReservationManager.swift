import Foundation
import NIOCore
import Synchronization

/// A unit attention one command establishes for another nexus.
struct UnitAttentionRequest: Sendable {
    var nexus: ITNexus
    var sense: SenseData
}

/// Persistent reservations (SPC-4 §5.9, PERSISTENT RESERVE IN/OUT) and SPC-2
/// RESERVE/RELEASE for one logical unit, and the reservation conflict check
/// every command passes through.
///
/// Persistence: with a state directory, the persistent reservation state is
/// written to `reservations.sqlite` (one row per LU key) after every change
/// and loaded by `init`, whatever APTPL the initiator set: LiveMount keeps
/// registrations and reservations across restarts so a cluster's fencing
/// survives a daemon upgrade. PTPL_A in REPORT CAPABILITIES reports the APTPL
/// value the initiator last set. SPC-2 reservations are never persistent.
///
/// RESERVE/RELEASE in the presence of persistent reservations follow SPC-4's
/// "Exceptions to SPC-2 RESERVE and RELEASE behavior" (spc4r17 §5.7.3; CRH = 1,
/// SPC-3 §5.6.3): a holder, or a
/// registrant of a Registrants Only / All Registrants reservation, gets GOOD
/// and nothing changes; anyone else gets RESERVATION CONFLICT while any
/// registration exists.
final class ReservationManager: Sendable {
    /// PERSISTENT RESERVE OUT service actions (SPC-4 §6.16.2, table 210).
    enum OutServiceAction: UInt8 {
        case register = 0x00
        case reserve = 0x01
        case release = 0x02
        case clear = 0x03
        case preempt = 0x04
        case preemptAndAbort = 0x05
        case registerAndIgnoreExistingKey = 0x06
        case registerAndMove = 0x07
    }

    /// PERSISTENT RESERVE IN service actions (SPC-4 §6.15.1, table 194).
    enum InServiceAction: UInt8 {
        case readKeys = 0x00
        case readReservation = 0x01
        case reportCapabilities = 0x02
        case readFullStatus = 0x03
    }

    /// Most registrations one LU keeps (INSUFFICIENT REGISTRATION RESOURCES beyond).
    static let maximumRegistrations = 256

    private struct State {
        var persistent: PersistentReservationState
        /// The I_T nexus holding an SPC-2 reservation (SPC-2 §5.5.1).
        var spc2Holder: ITNexus?
        /// Nexuses seen recently, to address unit attentions to registrants
        /// named without an ISID or through all target ports.
        var knownNexuses: Set<ITNexus> = []
    }

    private let lunKey: String
    private let store: ReservationStore?
    private let state: Mutex<State>

    /// `stateDirectory` nil → memory only. `lunKey` is a stable name for the LU (target name + "/" + LUN).
    init(lunKey: String, stateDirectory: String?) throws {
        self.lunKey = lunKey
        if let stateDirectory {
            let store = try ReservationStore(directory: stateDirectory)
            self.store = store
            let loaded = try store.load(lunKey: lunKey) ?? PersistentReservationState()
            self.state = Mutex(State(persistent: loaded))
        } else {
            self.store = nil
            self.state = Mutex(State(persistent: PersistentReservationState()))
        }
    }

    // MARK: - Conflict check

    /// SPC-4 §5.9.1 table (commands allowed in the presence of various reservations) and SPC-2 reservations:
    /// true when `cdb` from `nexus` must get RESERVATION CONFLICT.
    func conflicts(cdb: [UInt8], nexus: ITNexus) -> Bool {
        state.withLock { state in
            if let holder = state.spc2Holder, holder != nexus,
                !ReservationAccessClass.allowedUnderSPC2Reservation(cdb)
            {
                return true
            }
            let pr = state.persistent
            if pr.isEmpty { return false }
            state.knownNexuses.insert(nexus)
            guard let reservation = pr.reservation, !pr.isHolder(nexus) else { return false }
            let registered = pr.registrationIndex(for: nexus) != nil
            return ReservationAccessClass.classify(cdb).conflicts(with: reservation.type, registered: registered)
        }
    }

    // MARK: - SPC-2 RESERVE / RELEASE

    /// What SPC-4's exceptions for RESERVE/RELEASE say when persistent
    /// reservation state exists (spc4r17 §5.7.3, as LIO's CRH handling reads it).
    private enum CompatibleReservationHandling {
        case proceed
        case goodWithoutAction
        case conflict
    }

    private static func compatibleHandling(_ pr: PersistentReservationState, nexus: ITNexus)
        -> CompatibleReservationHandling
    {
        if pr.isEmpty { return .proceed }
        guard pr.registrationIndex(for: nexus) != nil else { return .conflict }
        if let reservation = pr.reservation,
            pr.isHolder(nexus) || reservation.type.isRegistrantsOnly || reservation.type.isAllRegistrants
        {
            return .goodWithoutAction
        }
        return .conflict
    }

    /// RESERVE(6) 16h / RESERVE(10) 56h (SPC-2 §7.21, §7.22): reserves the whole LU for `nexus`.
    func reserve(cdb: [UInt8], nexus: ITNexus) -> SCSIResult {
        // RESERVE(10): third-party (3RDPTY) and LONGID reservations are not supported.
        if cdb.first == 0x56, cdb.count > 1, cdb[1] & 0x12 != 0 {
            return .checkCondition(ReservationSense.invalidFieldInCDB(byte: 1))
        }
        return state.withLock { state in
            switch Self.compatibleHandling(state.persistent, nexus: nexus) {
            case .conflict: return .reservationConflict
            case .goodWithoutAction: return .good
            case .proceed: break
            }
            if let holder = state.spc2Holder, holder != nexus { return .reservationConflict }
            state.spc2Holder = nexus
            return .good
        }
    }

    /// RELEASE(6) 17h / RELEASE(10) 57h (SPC-2 §7.17, §7.18): a release from a
    /// nexus that holds nothing is GOOD and changes nothing.
    func release(cdb: [UInt8], nexus: ITNexus) -> SCSIResult {
        if cdb.first == 0x57, cdb.count > 1, cdb[1] & 0x12 != 0 {
            return .checkCondition(ReservationSense.invalidFieldInCDB(byte: 1))
        }
        return state.withLock { state in
            switch Self.compatibleHandling(state.persistent, nexus: nexus) {
            case .conflict: return .reservationConflict
            case .goodWithoutAction: return .good
            case .proceed: break
            }
            if state.spc2Holder == nexus { state.spc2Holder = nil }
            return .good
        }
    }

    /// LUN reset / target reset effects (SPC-4 §5.9.3, SPC-2 reservations released).
    /// Persistent reservations and registrations are unaffected.
    func reset() {
        state.withLock { $0.spc2Holder = nil }
    }

    /// The I_T nexus is gone: its SPC-2 reservation goes with it; persistent state stays.
    func nexusReleased(_ nexus: ITNexus) {
        state.withLock { state in
            if state.spc2Holder == nexus { state.spc2Holder = nil }
            state.knownNexuses.remove(nexus)
        }
    }

    // MARK: - PERSISTENT RESERVE IN (SPC-4 §6.15)

    /// PERSISTENT RESERVE IN (5Eh): READ KEYS, READ RESERVATION, REPORT CAPABILITIES, READ FULL STATUS.
    func persistentReserveIn(cdb: [UInt8], nexus: ITNexus) -> SCSIResult {
        guard cdb.count >= 10 else { return .checkCondition(ReservationSense.invalidFieldInCDB(byte: 0)) }
        guard let action = InServiceAction(rawValue: cdb[1] & 0x1F) else {
            return .checkCondition(ReservationSense.invalidFieldInCDB(byte: 1))
        }
        let allocationLength = Int(ReservationBytes.be16(cdb, 7))
        let snapshot: PersistentReservationState? = state.withLock { state in
            if let holder = state.spc2Holder, holder != nexus { return nil }
            state.knownNexuses.insert(nexus)
            return state.persistent
        }
        guard let pr = snapshot else { return .reservationConflict }
        let bytes: [UInt8]
        switch action {
        case .readKeys: bytes = Self.readKeys(pr)
        case .readReservation: bytes = Self.readReservation(pr)
        case .reportCapabilities: bytes = Self.reportCapabilities(pr)
        case .readFullStatus: bytes = Self.readFullStatus(pr)
        }
        return ReservationBytes.dataIn(bytes, allocationLength: allocationLength)
    }

    /// READ KEYS parameter data (SPC-4 §6.15.2): ADDITIONAL LENGTH counts every key, whatever the allocation length.
    private static func readKeys(_ pr: PersistentReservationState) -> [UInt8] {
        var b: [UInt8] = []
        ReservationBytes.append32(pr.generation, to: &b)
        ReservationBytes.append32(UInt32(pr.registrations.count * 8), to: &b)
        for registration in pr.registrations { ReservationBytes.append64(registration.key, to: &b) }
        return b
    }

    /// READ RESERVATION parameter data (SPC-4 §6.15.3): the key is zero for all-registrants types.
    private static func readReservation(_ pr: PersistentReservationState) -> [UInt8] {
        var b: [UInt8] = []
        ReservationBytes.append32(pr.generation, to: &b)
        guard let reservation = pr.reservation else {
            ReservationBytes.append32(0, to: &b)
            return b
        }
        ReservationBytes.append32(16, to: &b)
        var key: UInt64 = 0
        if !reservation.type.isAllRegistrants, let holder = reservation.holder,
            let registration = pr.registrations.first(where: { $0.registrant == holder })
        {
            key = registration.key
        }
        ReservationBytes.append64(key, to: &b)
        b += [0, 0, 0, 0, 0, (reservation.scope << 4) | reservation.type.rawValue, 0, 0]
        return b
    }

    /// REPORT CAPABILITIES parameter data (SPC-4 §6.15.4).
    private static func reportCapabilities(_ pr: PersistentReservationState) -> [UInt8] {
        var b: [UInt8] = [0x00, 0x08]
        // CRH, SIP_C, ATP_C, PTPL_C.
        b.append(0x10 | 0x08 | 0x04 | 0x01)
        // TMV, ALLOW COMMANDS 001b, PTPL_A.
        b.append(0x80 | 0x10 | (pr.activatePersistThroughPowerLoss ? 0x01 : 0x00))
        // PERSISTENT RESERVATION TYPE MASK: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; EX_AC_AR.
        b += [0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01]
        b += [0, 0]
        return b
    }

    /// READ FULL STATUS parameter data (SPC-4 §6.15.5): one descriptor per registration, with its TransportID.
    private static func readFullStatus(_ pr: PersistentReservationState) -> [UInt8] {
        var descriptors: [UInt8] = []
        for (index, registration) in pr.registrations.enumerated() {
            let holder = pr.isHolder(registrationAt: index)
            let registrant = registration.registrant
            ReservationBytes.append64(registration.key, to: &descriptors)
            descriptors += [0, 0, 0, 0]
            descriptors.append((registrant.targetPortName == nil ? 0x02 : 0x00) | (holder ? 0x01 : 0x00))
            if holder, let reservation = pr.reservation {
                descriptors.append((reservation.scope << 4) | reservation.type.rawValue)
            } else {
                descriptors.append(0)
            }
            descriptors += [0, 0, 0, 0]
            ReservationBytes.append16(
                registrant.targetPortName == nil ? 0 : registrant.relativeTargetPortID, to: &descriptors)
            let transportID = ISCSITransportID(initiatorName: registrant.initiatorName, isid: registrant.isid).bytes
            ReservationBytes.append32(UInt32(transportID.count), to: &descriptors)
            descriptors += transportID
        }
        var b: [UInt8] = []
        ReservationBytes.append32(pr.generation, to: &b)
        ReservationBytes.append32(UInt32(descriptors.count), to: &b)
        return b + descriptors
    }

    // MARK: - PERSISTENT RESERVE OUT (SPC-4 §6.16, §5.9.7-§5.9.11)

    /// The basic PERSISTENT RESERVE OUT parameter list (SPC-4 §6.16.3, table 214).
    private struct OutParameters {
        var reservationKey: UInt64
        var serviceActionReservationKey: UInt64
        var specifyInitiatorPorts: Bool
        var allTargetPorts: Bool
        var activatePersistThroughPowerLoss: Bool
        var transportIDs: [ISCSITransportID]
    }

    /// What one PERSISTENT RESERVE OUT decided: a status and the unit attentions it establishes.
    private typealias OutResult = (SCSIResult, [UnitAttentionRequest])

    /// PERSISTENT RESERVE OUT (5Fh).
    func persistentReserveOut(cdb: [UInt8], parameters: ByteBuffer, nexus: ITNexus) -> (
        SCSIResult, [UnitAttentionRequest]
    ) {
        guard cdb.count >= 10 else { return (.checkCondition(ReservationSense.invalidFieldInCDB(byte: 0)), []) }
        let listLength = Int(ReservationBytes.be32(cdb, 5))
        var (result, attentions) = persistentReserveOutChecked(
            cdb: cdb, listLength: listLength, parameters: parameters, nexus: nexus)
        result.dataOutLength = listLength
        return (result, attentions)
    }

    private func persistentReserveOutChecked(
        cdb: [UInt8], listLength: Int, parameters: ByteBuffer, nexus: ITNexus
    ) -> OutResult {
        guard let action = OutServiceAction(rawValue: cdb[1] & 0x1F) else {
            return (.checkCondition(ReservationSense.invalidFieldInCDB(byte: 1)), [])
        }
        let scope = cdb[2] >> 4
        let typeCode = cdb[2] & 0x0F
        let bytes =
            parameters.getBytes(at: parameters.readerIndex, length: min(parameters.readableBytes, listLength)) ?? []
        guard bytes.count == listLength, listLength >= 24 else {
            return (.checkCondition(ReservationSense.parameterListLengthError), [])
        }
        if action == .registerAndMove {
            return registerAndMove(bytes: bytes, nexus: nexus)
        }
        let specifyInitiatorPorts = bytes[20] & 0x08 != 0
        var transportIDs: [ISCSITransportID] = []
        if specifyInitiatorPorts {
            // SPC-4 §6.16.3: SPEC_I_PT is only valid with REGISTER.
            guard action == .register else {
                return (.checkCondition(ReservationSense.invalidFieldInParameterList), [])
            }
            guard listLength >= 28 else { return (.checkCondition(ReservationSense.parameterListLengthError), []) }
            let transportIDLength = Int(ReservationBytes.be32(bytes, 24))
            guard listLength == 28 + transportIDLength else {
                return (.checkCondition(ReservationSense.parameterListLengthError), [])
            }
            var offset = 28
            while offset < listLength {
                guard let (id, used) = ISCSITransportID.decode(bytes[offset..<listLength]) else {
                    return (.checkCondition(ReservationSense.invalidFieldInParameterList), [])
                }
                transportIDs.append(id)
                offset += used
            }
        } else if listLength != 24 {
            return (.checkCondition(ReservationSense.parameterListLengthError), [])
        }
        let p = OutParameters(
            reservationKey: ReservationBytes.be64(bytes, 0),
            serviceActionReservationKey: ReservationBytes.be64(bytes, 8),
            specifyInitiatorPorts: specifyInitiatorPorts, allTargetPorts: bytes[20] & 0x04 != 0,
            activatePersistThroughPowerLoss: bytes[20] & 0x01 != 0, transportIDs: transportIDs)

        return mutate(nexus: nexus) { pr, known in
            switch action {
            case .register, .registerAndIgnoreExistingKey:
                return Self.register(
                    &pr, p, ignoreExistingKey: action == .registerAndIgnoreExistingKey, nexus: nexus, known: known)
            case .reserve:
                return Self.reserve(&pr, p, scope: scope, typeCode: typeCode, nexus: nexus)
            case .release:
                return Self.release(&pr, p, scope: scope, typeCode: typeCode, nexus: nexus, known: known)
            case .clear:
                return Self.clear(&pr, p, nexus: nexus, known: known)
            case .preempt, .preemptAndAbort:
                // PREEMPT AND ABORT: the task-abort part belongs to the transport; the
                // reservation effects are those of PREEMPT (SPC-4 §5.9.11.5).
                return Self.preempt(&pr, p, scope: scope, typeCode: typeCode, nexus: nexus, known: known)
            case .registerAndMove:
                return (.checkCondition(ReservationSense.invalidFieldInCDB(byte: 1)), [])
            }
        }
    }

    /// Runs `body` on a copy of the state under the lock; saves and installs the
    /// copy when it changed. A failed save leaves the old state and answers
    /// HARDWARE ERROR, so GOOD always means "saved".
    private func mutate(
        nexus: ITNexus, _ body: (inout PersistentReservationState, Set<ITNexus>) -> OutResult
    ) -> OutResult {
        state.withLock { state -> OutResult in
            if let holder = state.spc2Holder, holder != nexus { return (.reservationConflict, []) }
            state.knownNexuses.insert(nexus)
            var pr = state.persistent
            let outcome = body(&pr, state.knownNexuses)
            guard pr != state.persistent else { return outcome }
            if let store {
                do {
                    try store.save(lunKey: lunKey, state: pr)
                } catch {
                    return (.checkCondition(ReservationSense.internalTargetFailure), [])
                }
            }
            state.persistent = pr
            return outcome
        }
    }

    /// The nexuses a unit attention for `registrant` goes to, except `excluding`.
    private static func nexuses(of registrant: RegistrantID, known: Set<ITNexus>, excluding: ITNexus) -> [ITNexus] {
        var result = Set(known.filter { registrant.matches($0) })
        if let exact = registrant.exactNexus { result.insert(exact) }
        result.remove(excluding)
        return result.sorted { $0.description < $1.description }
    }

    private static func attentions(
        _ sense: SenseData, for registrants: [RegistrantID], known: Set<ITNexus>, excluding: ITNexus
    ) -> [UnitAttentionRequest] {
        var seen = Set<ITNexus>()
        var out: [UnitAttentionRequest] = []
        for registrant in registrants {
            for n in nexuses(of: registrant, known: known, excluding: excluding) where seen.insert(n).inserted {
                out.append(UnitAttentionRequest(nexus: n, sense: sense))
            }
        }
        return out
    }

    /// REGISTER and REGISTER AND IGNORE EXISTING KEY (SPC-4 §5.9.7, §5.9.11.3).
    private static func register(
        _ pr: inout PersistentReservationState, _ p: OutParameters, ignoreExistingKey: Bool, nexus: ITNexus,
        known: Set<ITNexus>
    ) -> OutResult {
        let sark = p.serviceActionReservationKey
        if let index = pr.registrationIndex(for: nexus) {
            if !ignoreExistingKey && p.reservationKey != pr.registrations[index].key {
                return (.reservationConflict, [])
            }
            if p.specifyInitiatorPorts { return (.checkCondition(ReservationSense.invalidFieldInParameterList), []) }
            pr.activatePersistThroughPowerLoss = p.activatePersistThroughPowerLoss
            pr.bumpGeneration()
            if sark != 0 {
                pr.registrations[index].key = sark
                return (.good, [])
            }
            return (.good, unregister(&pr, index: index, nexus: nexus, known: known))
        }
        if !ignoreExistingKey && p.reservationKey != 0 { return (.reservationConflict, []) }
        // Unregistering an unregistered nexus: GOOD, nothing to do.
        if sark == 0 { return (.good, []) }
        var additions = [RegistrantID(nexus: nexus, allTargetPorts: p.allTargetPorts)]
        for id in p.transportIDs {
            let registrant = RegistrantID(
                initiatorName: id.initiatorName, isid: id.isid,
                targetPortName: p.allTargetPorts ? nil : nexus.targetPortName,
                relativeTargetPortID: nexus.relativeTargetPortID)
            // SPC-4 §5.9.7: naming an already registered I_T nexus is an error.
            if pr.registrations.contains(where: { $0.registrant.overlaps(registrant) }) {
                return (.checkCondition(ReservationSense.invalidFieldInParameterList), [])
            }
            if !additions.contains(where: { $0.overlaps(registrant) }) { additions.append(registrant) }
        }
        guard pr.registrations.count + additions.count <= maximumRegistrations else {
            return (.checkCondition(ReservationSense.insufficientRegistrationResources), [])
        }
        pr.registrations += additions.map { PersistentRegistration(registrant: $0, key: sark) }
        pr.activatePersistThroughPowerLoss = p.activatePersistThroughPowerLoss
        pr.bumpGeneration()
        return (.good, [])
    }

    /// Removes the registration at `index` and what goes with it (SPC-4 §5.9.11.3):
    /// a holder's reservation is released (RESERVATIONS RELEASED to the other
    /// registrants if it was Registrants Only); an all-registrants reservation
    /// ends with its last registrant.
    private static func unregister(
        _ pr: inout PersistentReservationState, index: Int, nexus: ITNexus, known: Set<ITNexus>
    ) -> [UnitAttentionRequest] {
        let removed = pr.registrations.remove(at: index)
        guard let reservation = pr.reservation else { return [] }
        if reservation.type.isAllRegistrants {
            if pr.registrations.isEmpty { pr.reservation = nil }
            return []
        }
        guard reservation.holder == removed.registrant else { return [] }
        pr.reservation = nil
        guard reservation.type.isRegistrantsOnly else { return [] }
        return attentions(
            ReservationSense.reservationsReleased, for: pr.registrations.map(\.registrant), known: known,
            excluding: nexus)
    }

    /// RESERVE (SPC-4 §5.9.9).
    private static func reserve(
        _ pr: inout PersistentReservationState, _ p: OutParameters, scope: UInt8, typeCode: UInt8, nexus: ITNexus
    ) -> OutResult {
        guard let index = pr.registrationIndex(for: nexus), pr.registrations[index].key == p.reservationKey else {
            return (.reservationConflict, [])
        }
        guard scope == 0 else { return (.checkCondition(ReservationSense.invalidFieldInCDB(byte: 2)), []) }
        guard let type = PersistentReservationType(rawValue: typeCode) else {
            return (.checkCondition(ReservationSense.invalidFieldInCDB(byte: 2)), [])
        }
        if let existing = pr.reservation {
            // The holder may repeat its own reservation; anything else conflicts.
            return (pr.isHolder(nexus) && existing.type == type && existing.scope == scope)
                ? (.good, []) : (.reservationConflict, [])
        }
        pr.reservation = PersistentReservation(
            holder: type.isAllRegistrants ? nil : pr.registrations[index].registrant, type: type, scope: scope)
        return (.good, [])
    }

    /// RELEASE (SPC-4 §5.9.11.2).
    private static func release(
        _ pr: inout PersistentReservationState, _ p: OutParameters, scope: UInt8, typeCode: UInt8, nexus: ITNexus,
        known: Set<ITNexus>
    ) -> OutResult {
        guard let index = pr.registrationIndex(for: nexus), pr.registrations[index].key == p.reservationKey else {
            return (.reservationConflict, [])
        }
        guard let reservation = pr.reservation, pr.isHolder(nexus) else { return (.good, []) }
        guard scope == reservation.scope, typeCode == reservation.type.rawValue else {
            return (.checkCondition(ReservationSense.invalidRelease), [])
        }
        pr.reservation = nil
        guard reservation.type.isRegistrantsOnly || reservation.type.isAllRegistrants else { return (.good, []) }
        return (
            .good,
            attentions(
                ReservationSense.reservationsReleased, for: pr.registrations.map(\.registrant), known: known,
                excluding: nexus)
        )
    }

    /// CLEAR (SPC-4 §5.9.11.6).
    private static func clear(
        _ pr: inout PersistentReservationState, _ p: OutParameters, nexus: ITNexus, known: Set<ITNexus>
    ) -> OutResult {
        guard let index = pr.registrationIndex(for: nexus), pr.registrations[index].key == p.reservationKey else {
            return (.reservationConflict, [])
        }
        let others = pr.registrations.map(\.registrant)
        pr.registrations = []
        pr.reservation = nil
        pr.bumpGeneration()
        return (.good, attentions(ReservationSense.reservationsPreempted, for: others, known: known, excluding: nexus))
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-4 §5.9.11.4).
    private static func preempt(
        _ pr: inout PersistentReservationState, _ p: OutParameters, scope: UInt8, typeCode: UInt8, nexus: ITNexus,
        known: Set<ITNexus>
    ) -> OutResult {
        guard let index = pr.registrationIndex(for: nexus), pr.registrations[index].key == p.reservationKey else {
            return (.reservationConflict, [])
        }
        let me = pr.registrations[index].registrant
        let sark = p.serviceActionReservationKey
        let type = PersistentReservationType(rawValue: typeCode)

        /// Removes every registration with key `sark` but the preempting one; nil when none had it.
        func removeRegistrations(keyed key: UInt64?) -> [RegistrantID]? {
            let matching = pr.registrations.filter { key == nil || $0.key == key }
            if key != nil && matching.isEmpty { return nil }
            let removed = matching.map(\.registrant).filter { $0 != me }
            pr.registrations.removeAll { removed.contains($0.registrant) }
            return removed
        }

        guard let reservation = pr.reservation else {
            // No reservation: remove the registrations SARK names (SPC-4 §5.9.11.4.2).
            guard sark != 0 else { return (.checkCondition(ReservationSense.invalidFieldInParameterList), []) }
            guard let removed = removeRegistrations(keyed: sark) else { return (.reservationConflict, []) }
            pr.bumpGeneration()
            return (
                .good, attentions(ReservationSense.registrationsPreempted, for: removed, known: known, excluding: nexus)
            )
        }
        let holderKey = reservation.holder.flatMap { h in pr.registrations.first { $0.registrant == h }?.key }
        let preemptsReservation = reservation.type.isAllRegistrants ? sark == 0 : sark == holderKey
        guard preemptsReservation else {
            // SARK names other registrants only: remove them, the reservation stays.
            guard sark != 0 else { return (.checkCondition(ReservationSense.invalidFieldInParameterList), []) }
            guard let removed = removeRegistrations(keyed: sark) else { return (.reservationConflict, []) }
            pr.bumpGeneration()
            if reservation.type.isAllRegistrants && pr.registrations.isEmpty { pr.reservation = nil }
            return (
                .good, attentions(ReservationSense.registrationsPreempted, for: removed, known: known, excluding: nexus)
            )
        }
        guard scope == 0, let type else { return (.checkCondition(ReservationSense.invalidFieldInCDB(byte: 2)), []) }
        // Preempt the reservation: remove the preempted registrations, then reserve for the preempting nexus.
        let removed = removeRegistrations(keyed: reservation.type.isAllRegistrants ? nil : sark) ?? []
        pr.reservation = PersistentReservation(holder: type.isAllRegistrants ? nil : me, type: type, scope: scope)
        pr.bumpGeneration()
        var out = attentions(ReservationSense.registrationsPreempted, for: removed, known: known, excluding: nexus)
        if reservation.type != type || reservation.scope != scope {
            let remaining = pr.registrations.map(\.registrant).filter { $0 != me }
            out += attentions(ReservationSense.reservationsReleased, for: remaining, known: known, excluding: nexus)
        }
        return (.good, out)
    }

    /// REGISTER AND MOVE (SPC-4 §5.9.8, parameter list table 216).
    private func registerAndMove(bytes: [UInt8], nexus: ITNexus) -> OutResult {
        let transportIDLength = Int(ReservationBytes.be32(bytes, 20))
        guard bytes.count >= 24 + transportIDLength else {
            return (.checkCondition(ReservationSense.parameterListLengthError), [])
        }
        let reservationKey = ReservationBytes.be64(bytes, 0)
        let sark = ReservationBytes.be64(bytes, 8)
        let unregisterSource = bytes[17] & 0x02 != 0
        let aptpl = bytes[17] & 0x01 != 0
        let relativeTargetPortID = ReservationBytes.be16(bytes, 18)
        let decoded = ISCSITransportID.decode(bytes[24..<(24 + transportIDLength)])
        return mutate(nexus: nexus) { pr, _ in
            guard let index = pr.registrationIndex(for: nexus), pr.registrations[index].key == reservationKey else {
                return (.reservationConflict, [])
            }
            guard let reservation = pr.reservation, !reservation.type.isAllRegistrants, pr.isHolder(nexus) else {
                return (.reservationConflict, [])
            }
            guard sark != 0, let (transportID, _) = decoded else {
                return (.checkCondition(ReservationSense.invalidFieldInParameterList), [])
            }
            // The destination sees the LU through the target port RELATIVE TARGET PORT IDENTIFIER names.
            let targetName =
                nexus.targetPortName.range(of: ",t,0x", options: .backwards).map {
                    String(nexus.targetPortName[..<$0.lowerBound])
                } ?? nexus.targetPortName
            let destination = RegistrantID(
                initiatorName: transportID.initiatorName, isid: transportID.isid,
                targetPortName: targetName + ",t,0x" + String(relativeTargetPortID, radix: 16),
                relativeTargetPortID: relativeTargetPortID)
            if destination.matches(nexus) {
                return (.checkCondition(ReservationSense.invalidFieldInParameterList), [])
            }
            let source = pr.registrations[index].registrant
            if let existing = pr.registrations.firstIndex(where: { $0.registrant == destination }) {
                pr.registrations[existing].key = sark
            } else {
                guard pr.registrations.count < Self.maximumRegistrations else {
                    return (.checkCondition(ReservationSense.insufficientRegistrationResources), [])
                }
                pr.registrations.append(PersistentRegistration(registrant: destination, key: sark))
            }
            pr.reservation = PersistentReservation(
                holder: destination, type: reservation.type, scope: reservation.scope)
            if unregisterSource { pr.registrations.removeAll { $0.registrant == source } }
            pr.activatePersistThroughPowerLoss = aptpl
            pr.bumpGeneration()
            return (.good, [])
        }
    }
}
