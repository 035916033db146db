import NIOCore

// MARK: - Command descriptors

/// One supported command: its CDB usage data (SPC-4 §6.35.3, which both
/// drives the reserved-bit checks and answers REPORT SUPPORTED OPERATION
/// CODES), its properties and its handler. Modeled on tgt's `usr/sbc.c`
/// opcode table.
final class CommandDescriptor: Sendable {
    typealias Handler = @Sendable (LogicalUnit, SCSICommand) async throws(SenseData) -> SCSIResult
    typealias DataOutLength = @Sendable ([UInt8], Int) -> Int

    let name: String
    /// CDB usage data: byte 0 is the operation code, a set bit marks a field
    /// the device server uses; every other bit must be zero in a CDB.
    let usage: [UInt8]
    let serviceAction: UInt16?
    /// Writes or deallocates medium: refused on a write-protected LU.
    let modifiesMedium: Bool
    /// False for commands whose fields another component validates.
    let checksReservedBits: Bool
    /// Only offered when the LU supports logical block provisioning.
    let requiresUnmap: Bool
    /// Bytes of Data-Out the CDB requires (CDB, block size), nil when none.
    let dataOutLength: DataOutLength?
    /// Recommended command timeout reported with RCTD (SPC-4 §6.35.4).
    let timeoutSeconds: UInt32
    let handler: Handler

    var opcode: UInt8 { usage[0] }
    var cdbLength: Int { usage.count }

    init(
        _ name: String, _ usage: [UInt8], serviceAction: UInt16? = nil, modifiesMedium: Bool = false,
        checksReservedBits: Bool = true, requiresUnmap: Bool = false, timeout: UInt32 = 30,
        dataOut: DataOutLength? = nil, handler: @escaping Handler
    ) {
        self.name = name
        self.usage = usage
        self.serviceAction = serviceAction
        self.modifiesMedium = modifiesMedium
        self.checksReservedBits = checksReservedBits
        self.requiresUnmap = requiresUnmap
        self.dataOutLength = dataOut
        self.timeoutSeconds = timeout
        self.handler = handler
    }

    /// Generic CDB checks: length, NACA in the CONTROL byte (we don't support
    /// ACA, SAM-5 §5.10), and bits outside the usage data (reserved fields).
    @inline(__always)
    func validate(_ cdb: [UInt8]) throws(SenseData) {
        guard cdb.count >= cdbLength else { throw .invalidFieldInCDB(byte: cdb.count) }
        let control = cdbLength - 1
        if cdb[control] & 0x04 != 0 { throw .invalidFieldInCDB(byte: control, bit: 2) }
        guard checksReservedBits else { return }
        for i in 1..<control {
            let bad = cdb[i] & ~usage[i]
            if bad != 0 { throw .invalidFieldInCDB(byte: i, bit: 7 - bad.leadingZeroBitCount) }
        }
    }
}

// MARK: - The table

/// All commands of a direct-access LU, indexed by operation code; unused
/// slots answer INVALID COMMAND OPERATION CODE.
enum OpcodeTable {
    /// Data-Out of the READ/WRITE family: TRANSFER LENGTH blocks.
    static let blocksOut: CommandDescriptor.DataOutLength = { cdb, bs in Int(ReadWriteCDB(cdb).blocks) * bs }
    /// Data-Out of VERIFY: depends on BYTCHK (SBC-4 §5.35).
    static let verifyOut: CommandDescriptor.DataOutLength = { cdb, bs in
        switch (cdb[1] >> 1) & 0x03 {
        case 1: return Int(ReadWriteCDB(cdb).blocks) * bs
        case 3: return bs
        default: return 0
        }
    }

    /// Control byte usage: none of NACA / LINK are supported.
    private static let c: UInt8 = 0x00

    static let all: [CommandDescriptor] = [
        // SPC-4 commands
        CommandDescriptor("TEST UNIT READY", [0x00, 0, 0, 0, 0, c], timeout: 5) { lu, cmd throws(SenseData) in
            lu.testUnitReady(cmd)
        },
        CommandDescriptor("REQUEST SENSE", [0x03, 0x01, 0, 0, 0xFF, c], timeout: 5) { lu, cmd throws(SenseData) in
            lu.requestSense(cmd)
        },
        CommandDescriptor("INQUIRY", [0x12, 0x01, 0xFF, 0xFF, 0xFF, c], timeout: 5) { lu, cmd throws(SenseData) in
            try lu.inquiry(cmd)
        },
        CommandDescriptor(
            "MODE SELECT(6)", [0x15, 0x11, 0, 0, 0xFF, c], dataOut: { cdb, _ in Int(cdb[4]) }
        ) { lu, cmd throws(SenseData) in try lu.modeSelect(cmd) },
        CommandDescriptor("RESERVE(6)", [0x16, 0, 0, 0, 0, c], checksReservedBits: false) { lu, cmd throws(SenseData) in
            lu.reservations.reserve(cdb: cmd.cdb, nexus: cmd.nexus)
        },
        CommandDescriptor("RELEASE(6)", [0x17, 0, 0, 0, 0, c], checksReservedBits: false) { lu, cmd throws(SenseData) in
            lu.reservations.release(cdb: cmd.cdb, nexus: cmd.nexus)
        },
        CommandDescriptor("MODE SENSE(6)", [0x1A, 0x08, 0xFF, 0xFF, 0xFF, c]) { lu, cmd throws(SenseData) in
            try lu.modeSense(cmd)
        },
        CommandDescriptor("START STOP UNIT", [0x1B, 0x01, 0, 0x0F, 0xF7, c]) { lu, cmd throws(SenseData) in
            try lu.startStopUnit(cmd)
        },
        CommandDescriptor("PREVENT ALLOW MEDIUM REMOVAL", [0x1E, 0, 0, 0, 0x03, c]) { lu, cmd throws(SenseData) in
            try lu.preventAllowMediumRemoval(cmd)
        },
        CommandDescriptor(
            "MODE SELECT(10)", [0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, c], dataOut: { cdb, _ in Int(cdb.be16(7)) }
        ) { lu, cmd throws(SenseData) in try lu.modeSelect(cmd) },
        CommandDescriptor("RESERVE(10)", [0x56, 0, 0, 0, 0, 0, 0, 0, 0, c], checksReservedBits: false) {
            lu, cmd throws(SenseData) in lu.reservations.reserve(cdb: cmd.cdb, nexus: cmd.nexus)
        },
        CommandDescriptor("RELEASE(10)", [0x57, 0, 0, 0, 0, 0, 0, 0, 0, c], checksReservedBits: false) {
            lu, cmd throws(SenseData) in lu.reservations.release(cdb: cmd.cdb, nexus: cmd.nexus)
        },
        CommandDescriptor("MODE SENSE(10)", [0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, c]) { lu, cmd throws(SenseData) in
            try lu.modeSense(cmd)
        },
        CommandDescriptor(
            "PERSISTENT RESERVE IN", [0x5E, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, c], checksReservedBits: false
        ) { lu, cmd throws(SenseData) in lu.reservations.persistentReserveIn(cdb: cmd.cdb, nexus: cmd.nexus) },
        CommandDescriptor(
            "PERSISTENT RESERVE OUT", [0x5F, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, c], checksReservedBits: false,
            dataOut: { cdb, _ in Int(cdb.be32(5)) }
        ) { lu, cmd throws(SenseData) in await lu.persistentReserveOut(cmd) },
        CommandDescriptor(
            "EXTENDED COPY", [0x83, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, c], checksReservedBits: false,
            timeout: 120, dataOut: { cdb, _ in Int(cdb.be32(10)) }
        ) { lu, cmd throws(SenseData) in
            await lu.copyEngine.extendedCopy(
                cdb: cmd.cdb, parameters: cmd.dataOut, nexus: cmd.nexus, resolve: lu.copyResolver)
        },
        CommandDescriptor(
            "RECEIVE COPY RESULTS", [0x84, 0x1F, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, c],
            checksReservedBits: false
        ) { lu, cmd throws(SenseData) in lu.copyEngine.receiveCopyResults(cdb: cmd.cdb, nexus: cmd.nexus) },
        CommandDescriptor(
            "REPORT LUNS", [0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, c], timeout: 5
        ) { _, _ throws(SenseData) in
            // Answered by SCSITarget, which knows every LU; never reached.
            .checkCondition(.invalidOpcode)
        },
        CommandDescriptor(
            "REPORT SUPPORTED OPERATION CODES", [0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, c],
            serviceAction: Opcode.saReportSupportedOpcodes
        ) { lu, cmd throws(SenseData) in try lu.reportSupportedOperationCodes(cmd) },
        CommandDescriptor(
            "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", [0xA3, 0x0D, 0x80, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, c],
            serviceAction: Opcode.saReportSupportedTMFs
        ) { lu, cmd throws(SenseData) in lu.reportSupportedTaskManagementFunctions(cmd) },

        // SBC-4 commands
        CommandDescriptor("READ(6)", [0x08, 0x1F, 0xFF, 0xFF, 0xFF, c]) { lu, cmd throws(SenseData) in
            try await lu.read(cmd)
        },
        CommandDescriptor("WRITE(6)", [0x0A, 0x1F, 0xFF, 0xFF, 0xFF, c], modifiesMedium: true, dataOut: blocksOut) {
            lu, cmd throws(SenseData) in try await lu.write(cmd)
        },
        CommandDescriptor("READ CAPACITY(10)", [0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, c], timeout: 5) {
            lu, cmd throws(SenseData) in try lu.readCapacity10(cmd)
        },
        CommandDescriptor("READ(10)", [0x28, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, c]) {
            lu, cmd throws(SenseData) in try await lu.read(cmd)
        },
        CommandDescriptor(
            "WRITE(10)", [0x2A, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, c], modifiesMedium: true, dataOut: blocksOut
        ) { lu, cmd throws(SenseData) in try await lu.write(cmd) },
        CommandDescriptor(
            "WRITE AND VERIFY(10)", [0x2E, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, c], modifiesMedium: true,
            dataOut: blocksOut
        ) { lu, cmd throws(SenseData) in try await lu.writeAndVerify(cmd) },
        CommandDescriptor(
            "VERIFY(10)", [0x2F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, c], dataOut: verifyOut
        ) { lu, cmd throws(SenseData) in try await lu.verify(cmd) },
        CommandDescriptor("PRE-FETCH(10)", [0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, c]) {
            lu, cmd throws(SenseData) in try lu.preFetch(cmd)
        },
        CommandDescriptor("SYNCHRONIZE CACHE(10)", [0x35, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, c], timeout: 60) {
            lu, cmd throws(SenseData) in try await lu.synchronizeCache(cmd)
        },
        CommandDescriptor("READ DEFECT DATA(10)", [0x37, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, c]) {
            lu, cmd throws(SenseData) in lu.readDefectData(cmd)
        },
        CommandDescriptor(
            "WRITE SAME(10)", [0x41, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, c], modifiesMedium: true, timeout: 60,
            dataOut: { _, bs in bs }
        ) { lu, cmd throws(SenseData) in try await lu.writeSame(cmd) },
        CommandDescriptor(
            "UNMAP", [0x42, 0x01, 0, 0, 0, 0, 0x3F, 0xFF, 0xFF, c], modifiesMedium: true, requiresUnmap: true, timeout: 60,
            dataOut: { cdb, _ in Int(cdb.be16(7)) }
        ) { lu, cmd throws(SenseData) in try await lu.unmap(cmd) },
        CommandDescriptor(
            "READ(16)", [0x88, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, c]
        ) { lu, cmd throws(SenseData) in try await lu.read(cmd) },
        CommandDescriptor(
            "COMPARE AND WRITE", [0x89, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0x3F, c],
            modifiesMedium: true, dataOut: { cdb, bs in Int(cdb[13]) * 2 * bs }
        ) { lu, cmd throws(SenseData) in try await lu.compareAndWrite(cmd) },
        CommandDescriptor(
            "WRITE(16)", [0x8A, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, c],
            modifiesMedium: true, dataOut: blocksOut
        ) { lu, cmd throws(SenseData) in try await lu.write(cmd) },
        CommandDescriptor(
            "ORWRITE(16)", [0x8B, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, c],
            modifiesMedium: true, dataOut: blocksOut
        ) { lu, cmd throws(SenseData) in try await lu.orWrite(cmd) },
        CommandDescriptor(
            "WRITE AND VERIFY(16)",
            [0x8E, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, c],
            modifiesMedium: true, dataOut: blocksOut
        ) { lu, cmd throws(SenseData) in try await lu.writeAndVerify(cmd) },
        CommandDescriptor(
            "VERIFY(16)", [0x8F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, c],
            dataOut: verifyOut
        ) { lu, cmd throws(SenseData) in try await lu.verify(cmd) },
        CommandDescriptor(
            "PRE-FETCH(16)", [0x90, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, c]
        ) { lu, cmd throws(SenseData) in try lu.preFetch(cmd) },
        CommandDescriptor(
            "SYNCHRONIZE CACHE(16)",
            [0x91, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, c], timeout: 60
        ) { lu, cmd throws(SenseData) in try await lu.synchronizeCache(cmd) },
        CommandDescriptor(
            "WRITE SAME(16)", [0x93, 0xF9, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, c],
            modifiesMedium: true, timeout: 60, dataOut: { cdb, bs in cdb[1] & 0x01 != 0 ? 0 : bs }
        ) { lu, cmd throws(SenseData) in try await lu.writeSame(cmd) },
        CommandDescriptor(
            "READ CAPACITY(16)", [0x9E, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, c],
            serviceAction: Opcode.saReadCapacity16, timeout: 5
        ) { lu, cmd throws(SenseData) in try lu.readCapacity16(cmd) },
        CommandDescriptor(
            "GET LBA STATUS", [0x9E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, c],
            serviceAction: Opcode.saGetLBAStatus, requiresUnmap: true
        ) { lu, cmd throws(SenseData) in try await lu.getLBAStatus(cmd) },
        CommandDescriptor("READ(12)", [0xA8, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, c]) {
            lu, cmd throws(SenseData) in try await lu.read(cmd)
        },
        CommandDescriptor(
            "WRITE(12)", [0xAA, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, c], modifiesMedium: true,
            dataOut: blocksOut
        ) { lu, cmd throws(SenseData) in try await lu.write(cmd) },
        CommandDescriptor(
            "WRITE AND VERIFY(12)", [0xAE, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, c],
            modifiesMedium: true, dataOut: blocksOut
        ) { lu, cmd throws(SenseData) in try await lu.writeAndVerify(cmd) },
        CommandDescriptor(
            "VERIFY(12)", [0xAF, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, c], dataOut: verifyOut
        ) { lu, cmd throws(SenseData) in try await lu.verify(cmd) },
        CommandDescriptor("READ DEFECT DATA(12)", [0xB7, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, c]) {
            lu, cmd throws(SenseData) in lu.readDefectData(cmd)
        },
    ]

    /// Descriptors by operation code; several for opcodes with service actions.
    static let byOpcode: [[CommandDescriptor]] = {
        var table = [[CommandDescriptor]](repeating: [], count: 256)
        for d in all { table[Int(d.opcode)].append(d) }
        return table
    }()

    /// Whether `opcode` is one whose commands are told apart by a SERVICE ACTION field.
    static func hasServiceActions(_ opcode: UInt8) -> Bool {
        byOpcode[Int(opcode)].first?.serviceAction != nil
    }

    /// Finds the command for `cdb` on `lu`: INVALID COMMAND OPERATION CODE for
    /// an unknown opcode, INVALID FIELD IN CDB (service action field) for an
    /// unknown service action (SPC-4 §4.3.4.2).
    @inline(__always)
    static func lookup(_ cdb: [UInt8], on lu: LogicalUnit) -> Result<CommandDescriptor, SenseData> {
        let candidates = byOpcode[Int(cdb[0])]
        guard let first = candidates.first else { return .failure(.invalidOpcode) }
        if first.serviceAction == nil {
            if first.requiresUnmap && !lu.supportsUnmap { return .failure(.invalidOpcode) }
            return .success(first)
        }
        guard cdb.count > 1 else { return .failure(.invalidFieldInCDB(byte: 1, bit: 4)) }
        let sa = UInt16(cdb[1] & 0x1F)
        for d in candidates where d.serviceAction == sa {
            if d.requiresUnmap && !lu.supportsUnmap { break }
            return .success(d)
        }
        return .failure(.invalidFieldInCDB(byte: 1, bit: 4))
    }

    /// The commands `lu` offers, for REPORT SUPPORTED OPERATION CODES.
    static func supported(on lu: LogicalUnit) -> [CommandDescriptor] {
        all.filter { !$0.requiresUnmap || lu.supportsUnmap }
    }
}
