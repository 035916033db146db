import CLibISCSI
import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// A synchronous iSCSI initiator for one LUN, wrapping libiscsi's sync API.
///
/// Used by the end-to-end tests (our target as server, libiscsi as initiator),
/// as the relocation destination for a SAN LUN (through `RemoteISCSIDevice`)
/// and as the trace replay client.
///
/// ## URL format
/// ```
/// iscsi://[<user>[%<password>]@]<host>[:<port>]/<target-iqn>/<lun>
/// ```
/// - `host` is a name, an IPv4 address or a bracketed IPv6 address; the port
///   defaults to 3260.
/// - `target-iqn` is URL-encoded with `%` as the escape: `iqn.2024-01.io.x%3Adisk`
///   is the target `iqn.2024-01.io.x:disk`.
/// - `user%password` sets the initiator's CHAP credentials (one-way CHAP);
///   the `chap:` argument of `connect` overrides them, and `mutualChap:` adds
///   the target's credentials (mutual CHAP).
/// - Example: `iscsi://127.0.0.1:3260/iqn.2024-01.io.livemount%3Avm1/1`.
///
/// ## Threads
/// A client owns one libiscsi context, which is not thread-safe: use a client
/// from one thread at a time (one client per thread). Every call blocks that
/// thread until the target answers or the context's timeout expires; never call
/// it from the Swift concurrency pool (`RemoteISCSIDevice` runs clients on
/// dedicated threads). It is `@unchecked Sendable` only so that it can be
/// handed to the thread that will own it.
///
/// ## Errors
/// A failure throws `ISCSIClientError`; transport failures carry libiscsi's
/// `iscsi_get_error()` text, SCSI failures carry the status and sense bytes.
public final class ISCSIClient: @unchecked Sendable {
    /// One-way or mutual CHAP credentials.
    public typealias Credentials = (user: String, secret: String)

    /// A target reported by a SendTargets discovery (RFC 7143 §12.3).
    public struct DiscoveredTarget: Sendable, Equatable {
        public var targetName: String
        /// `host:port,portal-group-tag` strings as the target sent them.
        public var addresses: [String]
    }

    /// Result of READ CAPACITY (16) (SBC-4 §5.20).
    public struct Capacity: Sendable, Equatable {
        public var blockCount: UInt64
        public var blockSize: Int
        /// LBPME: logical block provisioning (UNMAP) is enabled.
        public var provisioningEnabled: Bool
        /// LBPRZ: unmapped blocks read as zeros.
        public var unmappedReadsZero: Bool
    }

    /// The parts of the Block Limits VPD page (SBC-4 §6.6.3) that size requests; 0 means "not reported".
    public struct BlockLimits: Sendable, Equatable {
        /// WSNZ: a WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 (the whole rest of the medium) is refused.
        public var writeSameNonZero: Bool
        /// MAXIMUM TRANSFER LENGTH, in blocks.
        public var maximumTransferLength: UInt32
        /// MAXIMUM UNMAP LBA COUNT, in blocks.
        public var maximumUnmapLBACount: UInt32
        /// MAXIMUM WRITE SAME LENGTH, in blocks.
        public var maximumWriteSameLength: UInt64
    }

    /// The outcome of a command sent with `execute`.
    public struct CommandResult: Sendable, Equatable {
        /// SCSI status byte (SAM-5 §5.3): 0x00 GOOD, 0x02 CHECK CONDITION, ...
        public var status: Int
        /// Sense data bytes (SPC-4 §4.5) when the status is CHECK CONDITION.
        public var sense: [UInt8]
        /// Data-in bytes (empty for no data or on CHECK CONDITION).
        public var dataIn: [UInt8]
    }

    private var context: OpaquePointer?
    private let timeoutSeconds: Int32
    /// LUN of the connected session.
    public private(set) var lun: Int32 = 0
    /// Target name of the connected session.
    public private(set) var targetName: String?
    /// Block size learnt from READ CAPACITY (16); needed for READ/WRITE.
    public private(set) var blockSize: Int?

    /// Creates an unconnected client; every command waits at most `timeoutSeconds`.
    public init(timeoutSeconds: Int = 30) {
        self.timeoutSeconds = Int32(clamping: timeoutSeconds)
    }

    deinit {
        if let context { iscsi_destroy_context(context) }
    }

    // MARK: - Sessions

    /// Logs in to the target and LUN named by `url` (see the type's doc comment).
    ///
    /// - Parameters:
    ///   - initiatorName: this initiator's IQN.
    ///   - chap: one-way CHAP credentials (override any in the URL).
    ///   - mutualChap: the credentials the target must prove (mutual CHAP).
    ///   - headerDigest: require CRC32C header digests.
    public func connect(
        url: String,
        initiatorName: String,
        chap: Credentials? = nil,
        mutualChap: Credentials? = nil,
        headerDigest: Bool = false
    ) throws(ISCSIClientError) {
        if let context {
            iscsi_destroy_context(context)
            self.context = nil
        }
        guard let context = iscsi_create_context(initiatorName) else {
            throw ISCSIClientError(.invalidArgument, "cannot create an iSCSI context for \(initiatorName)")
        }
        self.context = context
        iscsi_set_timeout(context, timeoutSeconds)

        guard let parsed = iscsi_parse_full_url(context, url) else {
            throw ISCSIClientError(.invalidArgument, "bad iSCSI URL \(url): \(lastError)")
        }
        defer { iscsi_destroy_url(parsed) }
        let portal = Self.string(parsed.pointee.portal)
        let target = Self.string(parsed.pointee.target)
        let urlUser = Self.string(parsed.pointee.user)
        let urlSecret = Self.string(parsed.pointee.passwd)
        let lun = parsed.pointee.lun

        iscsi_set_targetname(context, target)
        iscsi_set_session_type(context, ISCSI_SESSION_NORMAL)
        iscsi_set_header_digest(context, headerDigest ? ISCSI_HEADER_DIGEST_CRC32C : ISCSI_HEADER_DIGEST_NONE)
        let credentials = chap ?? (urlUser.isEmpty ? nil : (user: urlUser, secret: urlSecret))
        if let credentials {
            iscsi_set_initiator_username_pwd(context, credentials.user, credentials.secret)
        }
        if let mutualChap {
            guard credentials != nil else {
                throw ISCSIClientError(.invalidArgument, "mutual CHAP needs the initiator's CHAP credentials too")
            }
            iscsi_set_target_username_pwd(context, mutualChap.user, mutualChap.secret)
        }
        guard iscsi_full_connect_sync(context, portal, lun) == 0 else {
            throw ISCSIClientError(.loginFailed, "login to \(target) at \(portal) failed: \(lastError)")
        }
        self.lun = lun
        self.targetName = target
        self.blockSize = nil
    }

    /// Asks a portal for its targets with a discovery session and SendTargets=All.
    public static func discovery(
        portal: String,
        initiatorName: String,
        chap: Credentials? = nil,
        timeoutSeconds: Int = 30
    ) throws(ISCSIClientError) -> [DiscoveredTarget] {
        guard let context = iscsi_create_context(initiatorName) else {
            throw ISCSIClientError(.invalidArgument, "cannot create an iSCSI context for \(initiatorName)")
        }
        defer { iscsi_destroy_context(context) }
        iscsi_set_timeout(context, Int32(clamping: timeoutSeconds))
        iscsi_set_session_type(context, ISCSI_SESSION_DISCOVERY)
        if let chap { iscsi_set_initiator_username_pwd(context, chap.user, chap.secret) }
        guard iscsi_connect_sync(context, portal) == 0 else {
            throw ISCSIClientError(.connectFailed, "connect to \(portal) failed: \(errorText(context))")
        }
        guard iscsi_login_sync(context) == 0 else {
            throw ISCSIClientError(.loginFailed, "discovery login at \(portal) failed: \(errorText(context))")
        }
        guard let list = iscsi_discovery_sync(context) else {
            let message = errorText(context)
            iscsi_logout_sync(context)
            throw ISCSIClientError(.transport, "SendTargets at \(portal) failed: \(message)")
        }
        var targets: [DiscoveredTarget] = []
        var entry: UnsafeMutablePointer<iscsi_discovery_address>? = list
        while let current = entry {
            var addresses: [String] = []
            var portalEntry = current.pointee.portals
            while let address = portalEntry {
                if let text = address.pointee.portal { addresses.append(String(cString: text)) }
                portalEntry = address.pointee.next
            }
            let name = current.pointee.target_name.map { String(cString: $0) } ?? ""
            targets.append(DiscoveredTarget(targetName: name, addresses: addresses))
            entry = current.pointee.next
        }
        iscsi_free_discovery_data(context, list)
        iscsi_logout_sync(context)
        return targets
    }

    /// Logs out (RFC 7143 §11.14) and drops the connection.
    public func logout() throws(ISCSIClientError) {
        guard let context else { return }
        defer {
            iscsi_destroy_context(context)
            self.context = nil
        }
        guard iscsi_logout_sync(context) == 0 else {
            throw ISCSIClientError(.transport, "logout failed: \(lastError)")
        }
    }

    /// Whether a session is logged in.
    public var isLoggedIn: Bool {
        guard let context else { return false }
        return iscsi_is_logged_in(context) != 0
    }

    // MARK: - Commands

    /// INQUIRY (SPC-4 §6.6): standard data, or the VPD page `page` when `evpd`.
    public func inquiry(evpd: Bool = false, page: UInt8 = 0, allocLen: Int = 255) throws(ISCSIClientError) -> [UInt8] {
        let context = try connected()
        let task = iscsi_inquiry_sync(context, lun, evpd ? 1 : 0, Int32(page), Int32(allocLen))
        return try complete(task, "INQUIRY")
    }

    /// READ CAPACITY (16) (SBC-4 §5.20); also remembers the block size for `read`/`write`.
    public func readCapacity16() throws(ISCSIClientError) -> Capacity {
        // SERVICE ACTION IN (16), service action 0x10, allocation length 32.
        var cdb = [UInt8](repeating: 0, count: 16)
        cdb[0] = 0x9E
        cdb[1] = 0x10
        cdb[13] = 32
        let result = try execute(cdb: cdb, dataOut: nil, dataInLength: 32)
        try Self.requireGood(result, "READ CAPACITY (16)")
        let data = result.dataIn
        guard data.count >= 32 else {
            throw ISCSIClientError(.transport, "READ CAPACITY (16) returned \(data.count) bytes")
        }
        let lastLBA = data[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let length = data[8..<12].reduce(0) { $0 << 8 | Int($1) }
        let capacity = Capacity(
            blockCount: lastLBA + 1, blockSize: length,
            provisioningEnabled: data[14] & 0x80 != 0, unmappedReadsZero: data[14] & 0x40 != 0
        )
        blockSize = length
        return capacity
    }

    /// READ (16) of `blocks` blocks at `lba` (SBC-4 §5.17).
    public func read(lba: UInt64, blocks: Int) throws(ISCSIClientError) -> [UInt8] {
        let context = try connected()
        let size = try knownBlockSize()
        let task = iscsi_read16_sync(context, lun, lba, UInt32(blocks * size), Int32(size), 0, 0, 0, 0, 0)
        let data = try complete(task, "READ (16)")
        guard data.count == blocks * size else {
            throw ISCSIClientError(.transport, "READ (16) returned \(data.count) of \(blocks * size) bytes")
        }
        return data
    }

    /// READ (16) of `blocks` blocks at `lba` (SBC-4 §5.17), checked and dropped without being copied out: the
    /// trace replay's read. For up to `pollMicroseconds` the answer is polled for without sleeping (a sleeping
    /// thread is woken tens of µs late on a VM, more across CPUs), then waited for as `read` does.
    public func readDiscarding(lba: UInt64, blocks: Int, pollMicroseconds: Int = 0) throws(ISCSIClientError) {
        let context = try connected()
        let size = try knownBlockSize()
        let length = blocks * size
        let state = PolledCommand()
        let callback: iscsi_command_cb = { _, status, _, privateData in
            guard let privateData else { return }
            let state = Unmanaged<PolledCommand>.fromOpaque(privateData).takeUnretainedValue()
            state.status = status
            state.done = true
        }
        let opaque = Unmanaged.passRetained(state).toOpaque()
        defer { Unmanaged<PolledCommand>.fromOpaque(opaque).release() }
        guard
            let task = iscsi_read16_task(
                context, lun, lba, UInt32(length), Int32(size), 0, 0, 0, 0, 0, callback, opaque)
        else {
            throw ISCSIClientError(.transport, "READ (16) failed: \(lastError)")
        }
        defer {
            // A command abandoned on an error must leave libiscsi's queues before its task is freed.
            if !state.done { iscsi_scsi_cancel_task(context, task) }
            scsi_free_scsi_task(task)
        }
        let pollUntil = DispatchTime.now().uptimeNanoseconds + UInt64(max(0, pollMicroseconds)) * 1000
        // As libiscsi's own sync loop does: poll the socket, let the context service it (and its timeouts).
        while !state.done {
            var descriptor = pollfd(
                fd: iscsi_get_fd(context), events: Int16(truncatingIfNeeded: iscsi_which_events(context)), revents: 0)
            let polling = pollMicroseconds > 0 && DispatchTime.now().uptimeNanoseconds < pollUntil
            let ready = poll(&descriptor, 1, polling ? 0 : 1000)
            if ready < 0 {
                if errno == EINTR { continue }
                throw ISCSIClientError(.transport, "READ (16) failed: poll: \(String(cString: strerror(errno)))")
            }
            if ready == 0, polling { continue }
            guard iscsi_service(context, ready == 0 ? 0 : Int32(descriptor.revents)) == 0 else {
                throw ISCSIClientError(.transport, "READ (16) failed: \(lastError)")
            }
        }
        let status = Int(state.status)
        guard status == Int(SCSI_STATUS_GOOD.rawValue) else {
            if status >= 0x100 || status < 0 { throw ISCSIClientError(.transport, "READ (16) failed: \(lastError)") }
            let sense =
                status == Int(SCSI_STATUS_CHECK_CONDITION.rawValue)
                ? Self.senseBytes(fromSenseSegment: Self.dataIn(of: task)) : []
            try Self.requireGood(CommandResult(status: status, sense: sense, dataIn: []), "READ (16)")
            return
        }
        guard Int(task.pointee.datain.size) == length else {
            throw ISCSIClientError(.transport, "READ (16) returned \(task.pointee.datain.size) of \(length) bytes")
        }
    }

    /// WRITE (16) of `data` (whole blocks) at `lba`, with FUA when asked (SBC-4 §5.43).
    public func write(lba: UInt64, data: [UInt8], fua: Bool = false) throws(ISCSIClientError) {
        let context = try connected()
        let size = try knownBlockSize()
        guard data.count % size == 0 else {
            throw ISCSIClientError(.invalidArgument, "write of \(data.count) bytes is not whole \(size)-byte blocks")
        }
        var bytes = data
        let task = bytes.withUnsafeMutableBufferPointer { buffer in
            iscsi_write16_sync(
                context, lun, lba, buffer.baseAddress, UInt32(buffer.count), Int32(size), 0, 0, fua ? 1 : 0, 0, 0)
        }
        _ = try complete(task, "WRITE (16)")
    }

    /// SYNCHRONIZE CACHE (10) of the whole LUN (SBC-4 §5.24).
    public func synchronizeCache() throws(ISCSIClientError) {
        let context = try connected()
        _ = try complete(iscsi_synchronizecache10_sync(context, lun, 0, 0, 0, 0), "SYNCHRONIZE CACHE (10)")
    }

    /// TEST UNIT READY (SPC-4 §6.47).
    public func testUnitReady() throws(ISCSIClientError) {
        let context = try connected()
        _ = try complete(iscsi_testunitready_sync(context, lun), "TEST UNIT READY")
    }

    /// UNMAP of one range (SBC-4 §5.30).
    public func unmap(lba: UInt64, blocks: UInt32) throws(ISCSIClientError) {
        let context = try connected()
        var list = unmap_list(lba: lba, num: blocks)
        _ = try complete(iscsi_unmap_sync(context, lun, 0, 0, &list, 1), "UNMAP")
    }

    /// WRITE SAME (16) (SBC-4 §5.50): every one of `blocks` blocks from `lba` becomes `block` (one logical
    /// block of data-out). With `unmap` the UNMAP bit asks the target to deallocate the blocks instead where
    /// they would then read back as `block` (zeros on an LBPRZ LUN); either way they read back as `block`.
    ///
    /// `blocks` must not be 0: NUMBER OF LOGICAL BLOCKS 0 means "to the end of the medium".
    /// - Throws: `.scsiStatus` with the sense bytes when the target refuses it (ILLEGAL REQUEST, INVALID
    ///   COMMAND OPERATION CODE or INVALID FIELD IN CDB from a target without WRITE SAME or its UNMAP bit).
    public func writeSame16(lba: UInt64, blocks: UInt32, block: [UInt8], unmap: Bool) throws(ISCSIClientError) {
        let size = try knownBlockSize()
        guard blocks > 0 else { throw ISCSIClientError(.invalidArgument, "WRITE SAME (16) of 0 blocks") }
        guard block.count == size else {
            throw ISCSIClientError(
                .invalidArgument, "WRITE SAME (16) data is \(block.count) bytes, not one \(size)-byte block")
        }
        var cdb = [UInt8](repeating: 0, count: 16)
        cdb[0] = 0x93
        cdb[1] = unmap ? 0x08 : 0x00  // byte 1 bit 3: UNMAP
        for index in 0..<8 { cdb[2 + index] = UInt8(truncatingIfNeeded: lba >> (56 - 8 * UInt64(index))) }
        for index in 0..<4 { cdb[10 + index] = UInt8(truncatingIfNeeded: blocks >> (24 - 8 * UInt32(index))) }
        let result = try execute(cdb: cdb, dataOut: block, dataInLength: 0)
        try Self.requireGood(result, "WRITE SAME (16)")
    }

    /// Whether the target supports the command `opcode`, from REPORT SUPPORTED OPERATION CODES with
    /// REPORTING OPTIONS 001b (SPC-4 §6.35); nil when the target does not answer that command or
    /// `opcode` has service actions.
    public func supportsOperation(opcode: UInt8) throws(ISCSIClientError) -> Bool? {
        // MAINTENANCE IN, service action 0x0C; requested operation code in byte 3; allocation length 6...9.
        let allocation = 64
        let cdb: [UInt8] = [0xA3, 0x0C, 0x01, opcode, 0, 0, 0, 0, 0, UInt8(allocation), 0, 0]
        let result = try execute(cdb: cdb, dataOut: nil, dataInLength: allocation)
        guard result.status == 0, result.dataIn.count >= 2 else { return nil }
        // Byte 1 bits 2...0, SUPPORT: 001b not supported, 011b supported as the standard says, 101b vendor-specific.
        switch result.dataIn[1] & 0x07 {
        case 0b001: return false
        case 0b011, 0b101: return true
        default: return nil
        }
    }

    /// The Block Limits VPD page (SBC-4 §6.6.3); all zeros when the target does not have it.
    public func blockLimits() throws(ISCSIClientError) -> BlockLimits {
        let none = BlockLimits(
            writeSameNonZero: false, maximumTransferLength: 0, maximumUnmapLBACount: 0, maximumWriteSameLength: 0)
        let page: [UInt8]
        do throws(ISCSIClientError) {
            page = try inquiry(evpd: true, page: 0xB0, allocLen: 64)
        } catch {
            guard error.code == .scsiStatus else { throw error }
            return none
        }
        guard page.count >= 20, page[1] == 0xB0 else { return none }
        func field(_ range: Range<Int>) -> UInt64 {
            guard range.upperBound <= page.count else { return 0 }
            return page[range].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        }
        return BlockLimits(
            writeSameNonZero: page[4] & 0x01 != 0,
            maximumTransferLength: UInt32(truncatingIfNeeded: field(8..<12)),
            maximumUnmapLBACount: UInt32(truncatingIfNeeded: field(20..<24)),
            maximumWriteSameLength: field(36..<44)
        )
    }

    /// Sends any CDB and returns status, sense and data-in without judging them.
    ///
    /// - Parameters:
    ///   - cdb: the command descriptor block (6 to 16 bytes).
    ///   - dataOut: bytes to send (the command's Data-Out buffer), if any.
    ///   - dataInLength: the expected data-in length (0 for none).
    /// - Throws: only transport failures; a CHECK CONDITION is a result.
    public func execute(cdb: [UInt8], dataOut: [UInt8]?, dataInLength: Int) throws(ISCSIClientError) -> CommandResult {
        let context = try connected()
        guard (1...16).contains(cdb.count) else {
            throw ISCSIClientError(.invalidArgument, "CDB of \(cdb.count) bytes")
        }
        let direction: scsi_xfer_dir
        let expected: Int
        if let dataOut, !dataOut.isEmpty {
            direction = SCSI_XFER_WRITE
            expected = dataOut.count
        } else if dataInLength > 0 {
            direction = SCSI_XFER_READ
            expected = dataInLength
        } else {
            direction = SCSI_XFER_NONE
            expected = 0
        }
        var cdbBytes = cdb
        let created = cdbBytes.withUnsafeMutableBufferPointer { buffer in
            scsi_create_task(Int32(buffer.count), buffer.baseAddress, Int32(direction.rawValue), Int32(expected))
        }
        guard let task = created else { throw ISCSIClientError(.transport, "cannot allocate a SCSI task") }
        var outBytes = dataOut ?? []
        let finished = outBytes.withUnsafeMutableBufferPointer { buffer -> UnsafeMutablePointer<scsi_task>? in
            if buffer.isEmpty {
                return iscsi_scsi_command_sync(context, lun, task, nil)
            }
            var data = iscsi_data(size: buffer.count, data: buffer.baseAddress)
            return iscsi_scsi_command_sync(context, lun, task, &data)
        }
        guard let finished else {
            let message = lastError
            scsi_free_scsi_task(task)
            throw ISCSIClientError(.transport, "command 0x\(String(cdb[0], radix: 16)) failed: \(message)")
        }
        defer { scsi_free_scsi_task(finished) }
        let status = Int(finished.pointee.status)
        let payload = Self.dataIn(of: finished)
        guard status != Int(SCSI_STATUS_CHECK_CONDITION.rawValue) else {
            return CommandResult(status: status, sense: Self.senseBytes(fromSenseSegment: payload), dataIn: [])
        }
        guard status < 0x100 else {
            throw ISCSIClientError(.transport, "command 0x\(String(cdb[0], radix: 16)) failed: \(lastError)")
        }
        return CommandResult(status: status, sense: [], dataIn: payload)
    }

    // MARK: - Helpers

    private var lastError: String {
        guard let context else { return "no context" }
        return Self.errorText(context)
    }

    private static func errorText(_ context: OpaquePointer) -> String {
        guard let text = iscsi_get_error(context) else { return "unknown error" }
        return String(cString: text)
    }

    private func connected() throws(ISCSIClientError) -> OpaquePointer {
        guard let context else { throw ISCSIClientError(.notConnected, "not connected") }
        return context
    }

    private func knownBlockSize() throws(ISCSIClientError) -> Int {
        if let blockSize { return blockSize }
        return try readCapacity16().blockSize
    }

    /// Checks a finished task from a helper and returns its data-in; frees the task.
    private func complete(_ task: UnsafeMutablePointer<scsi_task>?, _ name: String) throws(ISCSIClientError) -> [UInt8]
    {
        guard let task else { throw ISCSIClientError(.transport, "\(name) failed: \(lastError)") }
        defer { scsi_free_scsi_task(task) }
        let status = Int(task.pointee.status)
        let payload = Self.dataIn(of: task)
        if status == Int(SCSI_STATUS_GOOD.rawValue) || status == Int(SCSI_STATUS_CONDITION_MET.rawValue) {
            return payload
        }
        let result = CommandResult(
            status: status,
            sense: status == Int(SCSI_STATUS_CHECK_CONDITION.rawValue)
                ? Self.senseBytes(fromSenseSegment: payload) : [],
            dataIn: []
        )
        if status >= 0x100 { throw ISCSIClientError(.transport, "\(name) failed: \(lastError)") }
        try Self.requireGood(result, name)
        return payload
    }

    private static func requireGood(_ result: CommandResult, _ name: String) throws(ISCSIClientError) {
        guard result.status == 0 else {
            throw ISCSIClientError(
                .scsiStatus, "\(name) ended with status 0x\(String(result.status, radix: 16))",
                status: result.status, sense: result.sense)
        }
    }

    private static func dataIn(of task: UnsafeMutablePointer<scsi_task>) -> [UInt8] {
        let size = Int(task.pointee.datain.size)
        guard size > 0, let data = task.pointee.datain.data else { return [] }
        return Array(UnsafeBufferPointer(start: data, count: size))
    }

    /// The sense bytes inside an iSCSI sense segment: a 2-byte SenseLength then
    /// the sense data (RFC 7143 §11.4.7.2).
    private static func senseBytes(fromSenseSegment segment: [UInt8]) -> [UInt8] {
        guard segment.count >= 2 else { return [] }
        let length = Int(segment[0]) << 8 | Int(segment[1])
        return Array(segment.dropFirst(2).prefix(length))
    }

    /// A C `char[N]` field as a Swift string.
    private static func string<T>(_ field: T) -> String {
        withUnsafeBytes(of: field) { raw in
            let bytes = raw.bindMemory(to: UInt8.self)
            let end = bytes.firstIndex(of: 0) ?? bytes.count
            return String(decoding: bytes[..<end], as: UTF8.self)
        }
    }
}

// MARK: - Errors

/// A failure of an `ISCSIClient` call.
public struct ISCSIClientError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// A bad URL, name or argument.
        case invalidArgument
        /// No session: `connect` was not called or failed.
        case notConnected
        /// The TCP connection could not be made.
        case connectFailed
        /// Login was refused (bad target name, CHAP failure, ...).
        case loginFailed
        /// The command did not complete (connection lost, timeout, protocol error).
        case transport
        /// The command completed with a status other than GOOD.
        case scsiStatus
    }
    public var code: Code
    public var message: String
    /// SCSI status byte for `.scsiStatus`.
    public var status: Int?
    /// Sense bytes for a CHECK CONDITION.
    public var sense: [UInt8]

    public init(_ code: Code, _ message: String, status: Int? = nil, sense: [UInt8] = []) {
        self.code = code
        self.message = message
        self.status = status
        self.sense = sense
    }

    /// Sense key, ASC and ASCQ decoded from fixed or descriptor sense (SPC-4 §4.5).
    public var senseCode: (key: UInt8, asc: UInt8, ascq: UInt8)? {
        guard let responseCode = sense.first.map({ $0 & 0x7F }) else { return nil }
        if (responseCode == 0x70 || responseCode == 0x71) && sense.count >= 14 {
            return (sense[2] & 0x0F, sense[12], sense[13])
        }
        if (responseCode == 0x72 || responseCode == 0x73) && sense.count >= 4 {
            return (sense[1] & 0x0F, sense[2], sense[3])
        }
        return nil
    }

    public var description: String {
        guard let senseCode else { return message }
        let hex = { (value: UInt8) in String(value, radix: 16) }
        return
            "\(message) (sense key 0x\(hex(senseCode.key)) ASC 0x\(hex(senseCode.asc)) ASCQ 0x\(hex(senseCode.ascq)))"
    }
}

/// The completion of one command sent through libiscsi's async API, set by its callback on the same thread.
private final class PolledCommand {
    var done = false
    var status: Int32 = 0
}
