import BlockDevice
import Logging
import NIOCore
import Synchronization

/// The I_T nexuses that currently exist on a target, shared by its logical
/// units so that a command can establish a unit attention for "every other
/// nexus" (SAM-5 §5.14).
final class NexusRegistry: Sendable {
    private let nexuses = Mutex(Set<ITNexus>())

    func insert(_ nexus: ITNexus) { nexuses.withLock { _ = $0.insert(nexus) } }
    func remove(_ nexus: ITNexus) { nexuses.withLock { _ = $0.remove(nexus) } }
    var all: [ITNexus] { nexuses.withLock { Array($0) } }
}

/// One SCSI direct-access block device (SBC-4) over a `BlockDevice`.
///
/// Commands run concurrently: the hot path (READ/WRITE) takes no lock except
/// an atomic check for pending unit attentions; small mutable state (unit
/// attentions, mode parameters) sits behind `Mutex`es or atomics.
final class LogicalUnit: Sendable {
    /// Reads, writes and last access, for status and archive policies.
    let usage: LUNUsage
    /// Commands running on this LU object (`SCSITarget` counts them, so a device swap can wait for them).
    let commandsInFlight = Atomic<Int>(0)
    let lun: UInt64
    let configuration: LogicalUnitConfiguration
    let device: any BlockDevice
    let targetName: String
    let reservations: ReservationManager
    let copyEngine: ExtendedCopyEngine
    let copyResolver: CopyTargetResolver
    let nexusRegistry: NexusRegistry
    let logger: Logger

    /// Bytes per logical block, fixed for the life of the LU.
    let blockSize: Int
    /// Logical blocks, refreshed from the device by `capacityChanged()`.
    private let blockCountValue: Atomic<UInt64>
    /// Write-protected by configuration or by the backing store (SBC-4 §4.11).
    let hardWriteProtect: Bool
    /// Current mode parameters (MODE SELECT changes them).
    let mode: Mutex<ModeParameters>
    /// Fast copy of the control mode page SWP bit, read on every write.
    let softwareWriteProtect: Atomic<Bool>
    /// Fast copy of the caching mode page WCE bit: without a write cache every
    /// write is made durable before GOOD (DESIGN.md invariant 2).
    let writeCacheEnabled: Atomic<Bool>
    /// Serialises COMPARE AND WRITE / ORWRITE against overlapping writes.
    let rangeLock = RangeLock()
    /// Limits reported in the Block Limits VPD page and enforced on CDBs.
    let limits: BlockLimits

    /// Pending unit attentions per nexus, oldest first (SAM-5 §5.14).
    private let unitAttentions = Mutex([ITNexus: [SenseData]]())
    /// Number of queued unit attentions, so the hot path skips the lock when zero.
    private let pendingUnitAttentions = Atomic<Int>(0)

    init(
        configuration: LogicalUnitConfiguration, targetName: String, reservations: ReservationManager,
        copyEngine: ExtendedCopyEngine, copyResolver: @escaping CopyTargetResolver, nexusRegistry: NexusRegistry,
        logger: Logger, usage: LUNUsage = LUNUsage()
    ) {
        self.usage = usage
        self.lun = configuration.lun
        self.configuration = configuration
        self.device = configuration.device
        self.targetName = targetName
        self.reservations = reservations
        self.copyEngine = copyEngine
        self.copyResolver = copyResolver
        self.nexusRegistry = nexusRegistry
        self.logger = logger
        self.blockSize = configuration.device.blockSize
        self.blockCountValue = Atomic(configuration.device.blockCount)
        self.hardWriteProtect = configuration.readOnly || configuration.device.isReadOnly
        let defaults = ModeParameters.defaults(for: configuration)
        self.mode = Mutex(defaults)
        self.softwareWriteProtect = Atomic(defaults.softwareWriteProtect)
        self.writeCacheEnabled = Atomic(defaults.writeCacheEnabled)
        self.limits = BlockLimits(
            blockSize: configuration.device.blockSize,
            supportsUnmap: configuration.device.supportsUnmap || hardWriteProtect)
    }

    /// The same logical unit over another device of the same geometry: reservations, usage, mode parameters
    /// and pending unit attentions carry over, and no new unit attention is raised, so initiators see no change
    /// (an archived LUN's placeholder takes its place this way).
    convenience init(replacing old: LogicalUnit, device: any BlockDevice) {
        var configuration = old.configuration
        configuration.device = device
        self.init(
            configuration: configuration, targetName: old.targetName, reservations: old.reservations,
            copyEngine: old.copyEngine, copyResolver: old.copyResolver, nexusRegistry: old.nexusRegistry,
            logger: old.logger, usage: old.usage)
        let parameters = old.mode.withLock { $0 }
        mode.withLock { $0 = parameters }
        softwareWriteProtect.store(old.softwareWriteProtect.load(ordering: .relaxed), ordering: .relaxed)
        writeCacheEnabled.store(old.writeCacheEnabled.load(ordering: .relaxed), ordering: .relaxed)
        let pending = old.unitAttentions.withLock { $0 }
        unitAttentions.withLock { $0 = pending }
        pendingUnitAttentions.store(pending.values.reduce(0) { $0 + $1.count }, ordering: .relaxed)
    }

    /// Number of logical blocks.
    var blockCount: UInt64 { blockCountValue.load(ordering: .relaxed) }

    /// Whether medium-modifying commands get WRITE PROTECTED now.
    var isWriteProtected: Bool { hardWriteProtect || softwareWriteProtect.load(ordering: .relaxed) }

    /// Whether UNMAP and WRITE SAME with UNMAP deallocate (logical block provisioning, SBC-4 §4.7).
    /// Logical block provisioning is reported when the device can deallocate,
    /// and on write-protected LUs, which then refuse UNMAP with WRITE PROTECTED
    /// like every other medium-modifying command (libiscsi ReadOnly).
    var supportsUnmap: Bool { device.supportsUnmap || hardWriteProtect }

    /// log2(logical blocks per 4 KiB physical block), 0 for blocks of 4 KiB or more.
    var physicalBlockExponent: Int { blockSize >= 4096 ? 0 : (4096 / blockSize).trailingZeroBitCount }


    /// The 8 bytes of the NAA designator in VPD 83h (naaIdentifier, big-endian).
    var naaDesignator: [UInt8] {
        var b = [UInt8](repeating: 0, count: 8)
        b.put(configuration.naaIdentifier, at: 0, width: 8)
        return b
    }

    /// Re-reads the device's capacity; when it changed, every nexus gets
    /// CAPACITY DATA HAS CHANGED (SBC-4 §4.6). Returns the new block count.
    @discardableResult
    func capacityChanged() -> UInt64 {
        let new = device.blockCount
        let old = blockCountValue.exchange(new, ordering: .relaxed)
        if old != new { establishUnitAttention(.capacityDataChanged, except: nil) }
        return new
    }

    // MARK: - Unit attentions

    /// Queues `sense` for `nexus` (duplicates of a queued condition are dropped).
    func queueUnitAttention(_ sense: SenseData, for nexus: ITNexus) {
        unitAttentions.withLock { table in
            var queue = table[nexus] ?? []
            guard !queue.contains(sense), queue.count < 16 else { return }
            queue.append(sense)
            table[nexus] = queue
            pendingUnitAttentions.add(1, ordering: .relaxed)
        }
    }

    /// Queues `sense` for every existing nexus except `except`.
    func establishUnitAttention(_ sense: SenseData, except: ITNexus?) {
        for nexus in nexusRegistry.all where nexus != except { queueUnitAttention(sense, for: nexus) }
    }

    /// Removes and returns the oldest unit attention for `nexus`, if any.
    /// Whether any nexus has a unit attention queued (one atomic load).
    var hasPendingUnitAttentions: Bool { pendingUnitAttentions.load(ordering: .relaxed) > 0 }

    func takeUnitAttention(for nexus: ITNexus) -> SenseData? {
        guard pendingUnitAttentions.load(ordering: .relaxed) > 0 else { return nil }
        return unitAttentions.withLock { table -> SenseData? in
            guard var queue = table[nexus], !queue.isEmpty else { return nil }
            let first = queue.removeFirst()
            table[nexus] = queue.isEmpty ? nil : queue
            pendingUnitAttentions.subtract(1, ordering: .relaxed)
            return first
        }
    }

    /// Removes a specific queued condition (REPORT LUNS clears REPORTED LUNS DATA HAS CHANGED, SPC-4 §6.33).
    func clearUnitAttention(_ sense: SenseData, for nexus: ITNexus) {
        guard pendingUnitAttentions.load(ordering: .relaxed) > 0 else { return }
        unitAttentions.withLock { table in
            guard var queue = table[nexus], let i = queue.firstIndex(of: sense) else { return }
            queue.remove(at: i)
            table[nexus] = queue.isEmpty ? nil : queue
            pendingUnitAttentions.subtract(1, ordering: .relaxed)
        }
    }

    /// Forgets every condition queued for `nexus` (the nexus is gone).
    func dropUnitAttentions(for nexus: ITNexus) {
        unitAttentions.withLock { table in
            if let queue = table.removeValue(forKey: nexus) {
                pendingUnitAttentions.subtract(queue.count, ordering: .relaxed)
            }
        }
    }

    // MARK: - Resets

    /// LOGICAL UNIT RESET or a target reset (SAM-5 §6.3): SPC-2 reservations
    /// are released, mode parameters return to their defaults, and every
    /// nexus gets `sense`.
    func reset(reporting sense: SenseData) {
        reservations.reset()
        let defaults = ModeParameters.defaults(for: configuration)
        setMode(defaults)
        for nexus in nexusRegistry.all {
            dropUnitAttentions(for: nexus)
            queueUnitAttention(sense, for: nexus)
        }
    }

    /// Installs new current mode parameters and their fast copies.
    func setMode(_ parameters: ModeParameters) {
        mode.withLock { $0 = parameters }
        syncModeCopies()
    }

    /// Refreshes the atomics the hot path reads from the current mode parameters.
    func syncModeCopies() {
        mode.withLock { current in
            softwareWriteProtect.store(current.softwareWriteProtect, ordering: .relaxed)
            writeCacheEnabled.store(current.writeCacheEnabled, ordering: .relaxed)
        }
    }

    // MARK: - Dispatch

    /// Runs one command: unit attention, CDB validation from the opcode table,
    /// reservation check, write protection, then the command's handler.
    func execute(_ command: SCSICommand) async -> SCSIResult {
        let cdb = command.cdb
        guard let opcode = cdb.first else { return .checkCondition(.invalidOpcode) }

        // SAM-5 §5.14: INQUIRY, REPORT LUNS and REQUEST SENSE neither report nor clear a unit attention.
        if opcode != Opcode.inquiry && opcode != Opcode.reportLUNs && opcode != Opcode.requestSense,
            let ua = takeUnitAttention(for: command.nexus)
        {
            return .checkCondition(ua)
        }

        let descriptor: CommandDescriptor
        switch OpcodeTable.lookup(cdb, on: self) {
        case .success(let d): descriptor = d
        case .failure(let sense): return .checkCondition(sense)
        }

        var result: SCSIResult
        do throws(SenseData) {
            try descriptor.validate(cdb)
            if reservations.conflicts(cdb: cdb, nexus: command.nexus) {
                result = .reservationConflict
            } else if descriptor.modifiesMedium && isWriteProtected {
                result = .checkCondition(.writeProtected)
            } else {
                result = try await descriptor.handler(self, command)
            }
        } catch {
            result = .checkCondition(error)
        }
        if let dataOut = descriptor.dataOutLength, result.dataOutLength == nil, cdb.count >= descriptor.cdbLength {
            result.dataOutLength = dataOut(cdb, blockSize)
        }
        return result
    }

    /// The READ fast path (SBC-4 §5.13-5.16): answers at once when nothing
    /// needs waiting for, with the same checks as `execute`: no unit
    /// attention pending, a valid CDB, no reservation conflict, the data at
    /// hand. Nil means "use `execute`", never an error.
    func executeImmediately(_ command: SCSICommand) -> SCSIResult? {
        guard qualifiesForFastRead(command) else { return nil }
        return readImmediately(command)
    }

    /// The READ callback path: the checks of `executeImmediately`, then the
    /// data at hand or the device's `readAsync`; `completion` gets exactly
    /// what `execute` would have answered, on whatever thread ends the read.
    /// False, with no effect and no call of `completion`, means "use
    /// `execute`".
    func executeWithCompletion(_ command: SCSICommand, completion: @escaping @Sendable (SCSIResult) -> Void) -> Bool {
        guard qualifiesForFastRead(command) else { return false }
        return readWithCompletion(command, completion: completion)
    }

    /// Whether a command may skip `execute`'s dispatch: a READ(6/10/12/16)
    /// (SBC-4 §5.13-5.16) while no unit attention is pending for any nexus
    /// (SAM-5 §5.14), whose CDB is valid and which no reservation refuses
    /// (SPC-4 §5.13).
    private func qualifiesForFastRead(_ command: SCSICommand) -> Bool {
        let cdb = command.cdb
        guard let opcode = cdb.first,
            opcode == Opcode.read10 || opcode == Opcode.read16 || opcode == Opcode.read12 || opcode == Opcode.read6,
            !hasPendingUnitAttentions,
            case .success(let descriptor) = OpcodeTable.lookup(cdb, on: self),
            (try? descriptor.validate(cdb)) != nil,
            !reservations.conflicts(cdb: cdb, nexus: command.nexus)
        else { return false }
        return true
    }

    // MARK: - Shared checks

    /// Fails with LOGICAL BLOCK ADDRESS OUT OF RANGE when [lba, lba + blocks) is not on the medium.
    @inline(__always)
    func checkRange(lba: UInt64, blocks: UInt64) throws(SenseData) {
        let count = blockCount
        guard lba <= count, blocks <= count - lba else { throw .lbaOutOfRange }
    }

    /// The first `length` bytes of the command's Data-Out, or INVALID FIELD IN
    /// COMMAND INFORMATION UNIT when the transport delivered fewer. With
    /// `exact` (commands that transfer logical block data), an Expected Data
    /// Transfer Length different from what the CDB requires is refused the same
    /// way, before anything is written (FCP-4 §9.4.2 b; LIO does the same).
    @inline(__always)
    func dataOut(_ command: SCSICommand, length: Int, exact: Bool = true) throws(SenseData) -> ByteBuffer {
        guard command.dataOut.readableBytes >= length, !exact || Int(command.expectedDataTransferLength) == length,
            let slice = command.dataOut.getSlice(at: command.dataOut.readerIndex, length: length)
        else { throw .invalidFieldInInformationUnit }
        return slice
    }

    /// The logical block data of a WRITE or WRITE AND VERIFY whose Data-Out may
    /// disagree with the CDB. FCP-4 §9.4.2 a), which libiscsi's iSCSIResiduals
    /// tests expect: process the command but transfer no data beyond the
    /// Expected Data Transfer Length, so only the whole blocks received are
    /// written; surplus Data-Out is ignored. The transport reports the residual.
    @inline(__always)
    func blockDataOut(_ command: SCSICommand, blocks: UInt32) -> (data: ByteBuffer, blocks: UInt32) {
        let wanted = Int(blocks) * blockSize
        let available = min(command.dataOut.readableBytes, Int(command.expectedDataTransferLength))
        let usable = min(wanted, available - available % blockSize)
        let slice = command.dataOut.getSlice(at: command.dataOut.readerIndex, length: usable) ?? ByteBuffer()
        return (slice, UInt32(usable / blockSize))
    }

    /// Reads blocks from the device, mapping failures to sense data.
    func readBlocks(lba: UInt64, blocks: UInt64) async throws(SenseData) -> ByteBuffer {
        do {
            return try await device.read(offset: lba * UInt64(blockSize), length: Int(blocks) * blockSize)
        } catch {
            throw SenseData.from(error, lba: lba, isWrite: false)
        }
    }

    /// Writes blocks to the device, mapping failures to sense data. With the
    /// write cache disabled (WCE 0) every write is forced unit access.
    func writeBlocks(lba: UInt64, data: ByteBuffer, fua: Bool) async throws(SenseData) {
        let durable = fua || !writeCacheEnabled.load(ordering: .relaxed)
        do {
            try await device.write(offset: lba * UInt64(blockSize), data: data, fua: durable)
        } catch {
            throw SenseData.from(error, lba: lba, isWrite: true)
        }
    }
}

/// Builds a Data-In buffer from bytes, truncated to `allocationLength`.
@inline(__always)
func dataIn(_ bytes: [UInt8], allocationLength: Int) -> SCSIResult {
    let n = Swift.min(bytes.count, allocationLength)
    var buffer = ByteBufferAllocator().buffer(capacity: n)
    buffer.writeBytes(bytes.prefix(n))
    return .good(data: buffer)
}
