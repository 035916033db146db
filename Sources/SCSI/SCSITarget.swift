import BlockDevice
import Logging
import NIOCore
import Synchronization

/// How one logical unit is presented to initiators.
public struct LogicalUnitConfiguration: Sendable {
    /// The LUN it answers on.
    public var lun: UInt64
    /// The data store.
    public var device: any BlockDevice
    /// Write-protected (SBC-4 §4.11): writes get DATA PROTECT / WRITE PROTECTED.
    public var readOnly: Bool
    /// Unit serial number (VPD 80h).
    public var serialNumber: String
    /// NAA IEEE Registered designator, 64 bits (VPD 83h); also the EXTENDED COPY identifier.
    public var naaIdentifier: UInt64
    /// T10 vendor identification (INQUIRY bytes 8-15).
    public var vendor: String
    /// Product identification (INQUIRY bytes 16-31).
    public var product: String
    /// Product revision level (INQUIRY bytes 32-35).
    public var revision: String
    /// Whether the LU reports a volatile write cache (caching mode page WCE).
    public var writeCacheEnabled: Bool

    public init(
        lun: UInt64, device: any BlockDevice, readOnly: Bool = false, serialNumber: String, naaIdentifier: UInt64,
        vendor: String = "LIVEMNT", product: String = "LiveMount LUN", revision: String = "0001",
        writeCacheEnabled: Bool = true
    ) {
        self.lun = lun
        self.device = device
        self.readOnly = readOnly
        self.serialNumber = serialNumber
        self.naaIdentifier = naaIdentifier
        self.vendor = vendor
        self.product = product
        self.revision = revision
        self.writeCacheEnabled = writeCacheEnabled
    }
}

/// Task management functions the transport forwards (SAM-5 §7, RFC 7143 §11.5.1).
public enum TaskManagementFunction: Sendable {
    case abortTaskSet
    case clearTaskSet
    case logicalUnitReset
    case targetWarmReset
    case targetColdReset
}

/// Why a target could not be built or changed.
public struct SCSITargetError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// Two logical units were configured with the same LUN.
        case duplicateLUN
        /// The LUN does not fit the addressing this target reports (flat space, < 16384).
        case invalidLUN
        /// The reservation store under the state directory could not be opened.
        case reservationStore
        /// No logical unit has this LUN.
        case unknownLUN
        /// A replacement device differs in block size or capacity.
        case geometryMismatch
        /// The target was retired (removed from the server): it takes no new logical units.
        case retired
    }
    public var code: Code
    public var lun: UInt64
    private var detail: String

    init(_ code: Code, lun: UInt64, _ detail: String = "") {
        self.code = code
        self.lun = lun
        self.detail = detail
    }

    public var description: String { "LUN \(lun): \(code)" + (detail.isEmpty ? "" : ": \(detail)") }
}

/// The SCSI target device: its logical units, addressed by LUN, and the state
/// they share (the nexus registry for unit attentions, the EXTENDED COPY
/// directory). The transport calls only this type.
public final class SCSITarget: Sendable {
    /// The target's name (the iSCSI TargetName), for VPD 83h target designators.
    public let name: String

    private let stateDirectory: String?
    private let logger: Logger
    private let units = Mutex([UInt64: LogicalUnit]())
    private let nexusRegistry = NexusRegistry()
    private let copyEngine = ExtendedCopyEngine()
    /// Set, under the `units` lock, when the target is removed from its server: no LU may be added after that.
    private let isRetired = Atomic<Bool>(false)

    /// Builds the logical units. `stateDirectory` holds what must survive a
    /// restart (persistent reservations); nil keeps it in memory only.
    public init(name: String, logicalUnits: [LogicalUnitConfiguration], stateDirectory: String?, logger: Logger) throws {
        self.name = name
        self.stateDirectory = stateDirectory
        self.logger = logger
        var built: [UInt64: LogicalUnit] = [:]
        for configuration in logicalUnits {
            guard built[configuration.lun] == nil else { throw SCSITargetError(.duplicateLUN, lun: configuration.lun) }
            built[configuration.lun] = try makeUnit(configuration)
        }
        units.withLock { $0 = built }
    }

    private func makeUnit(_ configuration: LogicalUnitConfiguration) throws -> LogicalUnit {
        guard configuration.lun < 16384 else { throw SCSITargetError(.invalidLUN, lun: configuration.lun) }
        let reservations: ReservationManager
        do {
            reservations = try ReservationManager(lunKey: "\(name)/\(configuration.lun)", stateDirectory: stateDirectory)
        } catch {
            throw SCSITargetError(.reservationStore, lun: configuration.lun, "\(error)")
        }
        let resolver: CopyTargetResolver = { [weak self] designator in self?.resolveCopyTarget(designator) }
        var unitLogger = logger
        unitLogger[metadataKey: "lun"] = "\(configuration.lun)"
        return LogicalUnit(
            configuration: configuration, targetName: name, reservations: reservations, copyEngine: copyEngine,
            copyResolver: resolver, nexusRegistry: nexusRegistry, logger: unitLogger)
    }

    /// The configured LUNs, ascending.
    public var luns: [UInt64] { units.withLock { $0.keys.sorted() } }

    private func unit(_ lun: UInt64) -> LogicalUnit? { units.withLock { $0[lun] } }

    // MARK: - Commands

    /// Executes one command on `lun`. Never throws: every failure is a status
    /// and sense data. A LUN that does not exist answers INQUIRY with
    /// peripheral qualifier 011b, REPORT LUNS and REQUEST SENSE normally, and
    /// anything else with LOGICAL UNIT NOT SUPPORTED (SPC-4 §4.5.5, SAM-5 §5.9.6).
    public func execute(lun: UInt64, command: SCSICommand) async -> SCSIResult {
        guard let opcode = command.cdb.first else { return .checkCondition(.invalidOpcode) }
        if opcode == Opcode.reportLUNs { return reportLUNs(command) }
        guard let unit = enter(lun) else { return missingUnit(command) }
        defer { unit.commandsInFlight.subtract(1, ordering: .releasing) }
        unit.usage.note(opcode: opcode)
        return await unit.execute(command)
    }

    /// The LU behind `lun` with one more command counted in flight on it. The count is taken under the same
    /// lock `replaceDevice` swaps under, so a command either finds the new LU or is counted on the old one
    /// before the swap (and `replaceDevice` waits for it).
    private func enter(_ lun: UInt64) -> LogicalUnit? {
        units.withLock { table in
            guard let unit = table[lun] else { return nil }
            unit.commandsInFlight.add(1, ordering: .relaxed)
            return unit
        }
    }

    /// What initiators did with `lun` since it was added; nil for an unknown LUN.
    public func usage(lun: UInt64) -> LUNUsage.Snapshot? {
        unit(lun)?.usage.snapshot
    }

    /// The fast path for commands that need no waiting (today: READs whose
    /// data the device has at hand). Returns nil when the command must go
    /// through `execute(lun:command:)`; a non-nil result is exactly what
    /// `execute` would have answered.
    public func executeImmediately(lun: UInt64, command: SCSICommand) -> SCSIResult? {
        guard let unit = enter(lun) else { return nil }
        defer { unit.commandsInFlight.subtract(1, ordering: .releasing) }
        guard let result = unit.executeImmediately(command) else { return nil }
        if let opcode = command.cdb.first { unit.usage.note(opcode: opcode) }
        return result
    }

    /// The callback path for READs that need no task (data at hand, or a
    /// device that can read with a completion handler, `BlockDevice.readAsync`).
    /// Returns false, with no effect, when the command must go through
    /// `execute(lun:command:)`; after true, `completion` is called once, on
    /// any thread (possibly before this returns), with exactly what `execute`
    /// would have answered.
    public func executeWithCompletion(
        lun: UInt64, command: SCSICommand, completion: @escaping @Sendable (SCSIResult) -> Void
    ) -> Bool {
        guard let unit = enter(lun) else { return false }
        let started = unit.executeWithCompletion(command) { result in
            unit.commandsInFlight.subtract(1, ordering: .releasing)
            completion(result)
        }
        guard started else {
            unit.commandsInFlight.subtract(1, ordering: .releasing)
            return false
        }
        if let opcode = command.cdb.first { unit.usage.note(opcode: opcode) }
        return true
    }

    /// REPORT LUNS (SPC-4 §6.33), answered for any LUN. Clears REPORTED LUNS
    /// DATA HAS CHANGED for the nexus on every LU.
    private func reportLUNs(_ command: SCSICommand) -> SCSIResult {
        let cdb = command.cdb
        guard let descriptor = OpcodeTable.byOpcode[Int(Opcode.reportLUNs)].first else {
            return .checkCondition(.invalidOpcode)
        }
        do throws(SenseData) {
            try descriptor.validate(cdb)
            let select = cdb[2]
            guard select <= 0x02 else { throw .invalidFieldInCDB(byte: 2) }
            let allocation = Int(cdb.be32(6))
            guard allocation >= 16 else { throw .invalidFieldInCDB(byte: 6) }
            let all = units.withLock { $0 }
            // SELECT REPORT 01h asks for well-known LUs only; we have none.
            let reported = select == 0x01 ? [] : all.keys.sorted()
            var data = [UInt8](repeating: 0, count: 8)
            data.put(UInt32(reported.count * 8), at: 0, width: 4)
            for lun in reported {
                var entry = [UInt8](repeating: 0, count: 8)
                if lun < 256 {
                    entry[1] = UInt8(lun)  // peripheral device addressing (SAM-5 §4.7.7.2)
                } else {
                    entry.put(UInt16(0x4000 | (lun & 0x3FFF)), at: 0, width: 2)  // flat space addressing
                }
                data += entry
            }
            for unit in all.values { unit.clearUnitAttention(.reportedLUNsDataChanged, for: command.nexus) }
            return dataIn(data, allocationLength: allocation)
        } catch {
            return .checkCondition(error)
        }
    }

    /// A command for a LUN with no logical unit (SPC-4 §4.5.5, §6.6.2, §6.39).
    private func missingUnit(_ command: SCSICommand) -> SCSIResult {
        let cdb = command.cdb
        switch cdb[0] {
        case Opcode.inquiry where cdb.count >= 6 && cdb[1] & 0x01 == 0:
            let data = LogicalUnit.standardInquiryData(
                peripheral: 0x7F, vendor: "LIVEMNT", product: "LiveMount LUN", revision: "0001")
            return dataIn(data, allocationLength: Int(cdb.be16(3)))
        case Opcode.requestSense where cdb.count >= 6:
            let sense = SenseData.logicalUnitNotSupported
            return dataIn(
                cdb[1] & 0x01 != 0 ? sense.descriptorFormatBytes : sense.fixedFormatBytes,
                allocationLength: Int(cdb[4]))
        default:
            return .checkCondition(.logicalUnitNotSupported)
        }
    }

    // MARK: - Task management and nexus events

    /// Applies a task management function's effect on SCSI state (SAM-5 §7):
    /// LUN and target resets release SPC-2 reservations, restore the default
    /// mode parameters and establish a unit attention for every nexus (29/03
    /// for LOGICAL UNIT RESET and TARGET WARM RESET, 29/01 for TARGET COLD RESET). Returns false when the LUN does
    /// not exist. The transport aborts its own tasks before calling this.
    public func taskManagement(_ function: TaskManagementFunction, lun: UInt64, nexus: ITNexus) async -> Bool {
        switch function {
        case .abortTaskSet, .clearTaskSet:
            return unit(lun) != nil
        case .logicalUnitReset:
            guard let unit = unit(lun) else { return false }
            unit.reset(reporting: .busDeviceReset)
            return true
        case .targetWarmReset:
            // SAM-5 §6.3.3: a target reset is a logical unit reset of every LU.
            for unit in units.withLock({ Array($0.values) }) { unit.reset(reporting: .busDeviceReset) }
            return true
        case .targetColdReset:
            // RFC 7143 §11.5.1: a cold reset is a warm reset plus a power-on.
            for unit in units.withLock({ Array($0.values) }) { unit.reset(reporting: .powerOnOccurred) }
            return true
        }
    }

    /// A new I_T nexus exists (a session logged in). The first command on it
    /// gets POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    public func nexusEstablished(_ nexus: ITNexus) {
        nexusRegistry.insert(nexus)
        for unit in units.withLock({ Array($0.values) }) {
            unit.dropUnitAttentions(for: nexus)
            unit.queueUnitAttention(.powerOnReset, for: nexus)
            unit.device.sessionStarted()
        }
    }

    /// The I_T nexus is gone (session ended). Persistent reservations stay.
    public func nexusReleased(_ nexus: ITNexus) {
        nexusRegistry.remove(nexus)
        for unit in units.withLock({ Array($0.values) }) {
            unit.dropUnitAttentions(for: nexus)
            unit.reservations.nexusReleased(nexus)
        }
        copyEngine.nexusReleased(nexus)
    }

    // MARK: - Reconfiguration

    /// Adds a logical unit while the target runs. Existing nexuses get POWER
    /// ON on it and REPORTED LUNS DATA HAS CHANGED on the other LUs (SPC-4 §6.33).
    public func addLogicalUnit(_ configuration: LogicalUnitConfiguration) throws {
        let unit = try makeUnit(configuration)
        let others: [LogicalUnit] = try units.withLock { table in
            guard !isRetired.load(ordering: .relaxed) else { throw SCSITargetError(.retired, lun: configuration.lun) }
            guard table[configuration.lun] == nil else { throw SCSITargetError(.duplicateLUN, lun: configuration.lun) }
            table[configuration.lun] = unit
            return table.values.filter { $0 !== unit }
        }
        for nexus in nexusRegistry.all { unit.queueUnitAttention(.powerOnReset, for: nexus) }
        for other in others { other.establishUnitAttention(.reportedLUNsDataChanged, except: nil) }
    }

    /// Removes a logical unit; the remaining LUs report REPORTED LUNS DATA HAS
    /// CHANGED. The device is not closed (the caller owns it from here on).
    /// Returns false when there was no such LUN.
    @discardableResult
    public func removeLogicalUnit(lun: UInt64) -> Bool {
        let (removed, others) = units.withLock { table in (table.removeValue(forKey: lun), Array(table.values)) }
        guard removed != nil else { return false }
        for other in others { other.establishUnitAttention(.reportedLUNsDataChanged, except: nil) }
        return true
    }

    /// Puts `device` behind `lun` in place of its current device, and returns the old device once every
    /// command that was already running on it has finished (not closed: the caller owns it). The LU stays the
    /// same to initiators: same identifiers, reservations, mode parameters and usage, and no unit attention.
    /// `device` must have the same block size and capacity.
    @discardableResult
    public func replaceDevice(lun: UInt64, with device: any BlockDevice) async throws(SCSITargetError)
        -> any BlockDevice
    {
        let result: Result<LogicalUnit, SCSITargetError> = units.withLock { table in
            guard let old = table[lun] else { return .failure(SCSITargetError(.unknownLUN, lun: lun)) }
            guard old.blockSize == device.blockSize, old.device.blockCount == device.blockCount else {
                return .failure(
                    SCSITargetError(
                        .geometryMismatch, lun: lun,
                        "\(device.blockCount) blocks of \(device.blockSize) bytes for \(old.device.blockCount) of \(old.blockSize)"))
            }
            table[lun] = LogicalUnit(replacing: old, device: device)
            return .success(old)
        }
        let old = try result.get()
        while old.commandsInFlight.load(ordering: .acquiring) > 0 {
            try? await Task.sleep(for: .milliseconds(1))
        }
        return old.device
    }

    /// How `lun` is presented (identifiers, product, write protection), nil for an unknown LUN.
    public func configuration(lun: UInt64) -> LogicalUnitConfiguration? {
        unit(lun)?.configuration
    }

    /// Retires the target if it has no logical unit, atomically with `addLogicalUnit`: once this returns an
    /// empty list no LU can be added any more (the server is removing the target). Returns the LUNs it still
    /// has otherwise, and then leaves it unchanged.
    public func retireIfEmpty() -> [UInt64] {
        units.withLock { table in
            guard table.isEmpty else { return table.keys.sorted() }
            isRetired.store(true, ordering: .relaxed)
            return []
        }
    }

    /// Whether `lun` is write-protected (configured read-only, or its device is), nil for an unknown LUN.
    public func isWriteProtected(lun: UInt64) -> Bool? {
        unit(lun)?.isWriteProtected
    }

    /// The device behind `lun`, nil for an unknown LUN.
    public func device(lun: UInt64) -> (any BlockDevice)? {
        unit(lun)?.device
    }

    /// Tells the target that the device behind `lun` changed size: READ
    /// CAPACITY reports the new size and every nexus gets CAPACITY DATA HAS
    /// CHANGED. Returns the new block count, nil for an unknown LUN.
    @discardableResult
    public func capacityChanged(lun: UInt64) -> UInt64? {
        unit(lun)?.capacityChanged()
    }

    /// Finds the LU whose VPD 83h NAA designator is `designator` (EXTENDED COPY).
    private func resolveCopyTarget(_ designator: [UInt8]) -> CopyTargetDevice? {
        let all = units.withLock { Array($0.values) }
        guard let unit = all.first(where: { $0.naaDesignator == designator }) else { return nil }
        return CopyTargetDevice(device: unit.device, readOnly: unit.isWriteProtected)
    }

    /// Releases every logical unit's device.
    public func shutdown() async {
        let all = units.withLock { table in
            let values = Array(table.values)
            table.removeAll()
            return values
        }
        for unit in all { await unit.device.close() }
    }
}
