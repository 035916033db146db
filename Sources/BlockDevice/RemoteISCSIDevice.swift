import Foundation
import NIOCore
import Synchronization

/// A LUN on a remote iSCSI target, reached through a pool of `ISCSIClient`
/// sessions, as a `BlockDevice` (the relocation destination for a SAN LUN).
///
/// Each session runs on its own dedicated thread, because libiscsi's sync API
/// blocks; callers' async methods enqueue a job and suspend until a session
/// thread resumes them, so requests run in parallel up to the session count.
/// See `ISCSIClient` for the URL format. A request larger than
/// `maximumTransferBytes` is split and sent as several commands on one session.
public final class RemoteISCSIDevice: BlockDevice {
    public let blockSize: Int
    public let blockCount: UInt64
    public let isReadOnly: Bool
    /// LBPME from READ CAPACITY (16): the LUN accepts UNMAP.
    public let supportsUnmap: Bool
    /// The URL the sessions logged in to.
    public let url: String
    /// The largest data transfer per command.
    public let maximumTransferBytes: Int
    /// LBPRZ from READ CAPACITY (16): unmapped blocks read as zeros.
    public let unmappedReadsZero: Bool
    /// MAXIMUM WRITE SAME LENGTH from the Block Limits VPD page (SBC-4 §6.6.3), in blocks; 0 when not reported.
    public let maximumWriteSameBlocks: UInt64
    /// What REPORT SUPPORTED OPERATION CODES said about WRITE SAME (16) at login (nil: the target did not say).
    public let writeSameReported: Bool?
    /// Whether WRITE SAME (16) has not been refused so far (`writeZeros` then falls back to writing zeros).
    public var writeSameSupported: Bool { writeSame.withLock { $0.refused == false } }

    /// What the target said about WRITE SAME (16): refused outright, or only with the UNMAP bit.
    private struct WriteSameState {
        var refused = false
        var unmapRefused = false
    }
    private let writeSame: Mutex<WriteSameState>

    private let jobs: JobQueue

    /// Logs `connections` sessions in to the LUN at `url` (each on its own
    /// thread; this suspends, it does not block the caller) and reads its
    /// capacity and write protection.
    public static func connect(
        url: String,
        initiatorName: String,
        connections: Int = 4,
        chap: ISCSIClient.Credentials? = nil,
        mutualChap: ISCSIClient.Credentials? = nil,
        headerDigest: Bool = false,
        maximumTransferBytes: Int = 1 << 20
    ) async throws(ISCSIClientError) -> RemoteISCSIDevice {
        let count = max(1, connections)
        let credentials = chap.map { CredentialsBox(user: $0.user, secret: $0.secret) }
        let mutual = mutualChap.map { CredentialsBox(user: $0.user, secret: $0.secret) }
        let result = await withCheckedContinuation {
            (continuation: CheckedContinuation<Result<Login, ISCSIClientError>, Never>) in
            let thread = Thread {
                continuation.resume(
                    returning: Result { () throws(ISCSIClientError) -> Login in
                        var clients: [ISCSIClient] = []
                        for _ in 0..<count {
                            let client = ISCSIClient()
                            try client.connect(
                                url: url, initiatorName: initiatorName, chap: credentials?.tuple,
                                mutualChap: mutual?.tuple, headerDigest: headerDigest)
                            clients.append(client)
                        }
                        let capacity = try clients[0].readCapacity16()
                        let modeSense = try clients[0].execute(
                            cdb: [0x1A, 0x00, 0x3F, 0x00, 0xFF, 0x00], dataOut: nil, dataInLength: 255)
                        // MODE SENSE (6) header byte 2 bit 7 is WP (SBC-4 §6.5.1).
                        let writeProtected =
                            modeSense.status == 0 && modeSense.dataIn.count > 2
                            && modeSense.dataIn[2] & 0x80 != 0
                        for client in clients.dropFirst() { _ = try client.readCapacity16() }
                        let limits = try clients[0].blockLimits()
                        let writeSame = try clients[0].supportsOperation(opcode: 0x93)
                        return Login(
                            clients: clients, capacity: capacity, writeProtected: writeProtected, limits: limits,
                            writeSame: writeSame)
                    })
            }
            thread.name = "iscsi login"
            thread.start()
        }
        let login = try result.get()
        return RemoteISCSIDevice(url: url, login: login, maximumTransferBytes: maximumTransferBytes)
    }

    deinit {
        // Without close(): let the session threads log out and exit.
        jobs.requestStop()
    }

    private init(url: String, login: Login, maximumTransferBytes: Int) {
        self.url = url
        self.blockSize = login.capacity.blockSize
        self.blockCount = login.capacity.blockCount
        self.supportsUnmap = login.capacity.provisioningEnabled
        self.isReadOnly = login.writeProtected
        self.unmappedReadsZero = login.capacity.unmappedReadsZero
        self.maximumWriteSameBlocks = login.limits.maximumWriteSameLength
        self.writeSameReported = login.writeSame
        self.writeSame = Mutex(WriteSameState(refused: login.writeSame == false))
        self.maximumTransferBytes = max(
            login.capacity.blockSize, maximumTransferBytes / login.capacity.blockSize * login.capacity.blockSize)
        self.jobs = JobQueue(clients: login.clients, name: "iscsi \(url)")
    }

    // MARK: - BlockDevice

    public func read(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer {
        let (lba, blocks) = try blocksFor(offset: offset, length: length)
        let size = blockSize
        let step = maximumTransferBytes / size
        let result = await run { client -> Result<[UInt8], BlockDeviceError> in
            var data: [UInt8] = []
            data.reserveCapacity(blocks * size)
            var done = 0
            while done < blocks {
                let count = min(step, blocks - done)
                do throws(ISCSIClientError) {
                    data += try client.read(lba: lba + UInt64(done), blocks: count)
                } catch {
                    return .failure(Self.map(error, writing: false))
                }
                done += count
            }
            return .success(data)
        }
        return ByteBuffer(bytes: try result.get())
    }

    public func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(BlockDeviceError) {
        guard !isReadOnly else { throw .writeProtected("\(url) is write-protected") }
        let (lba, blocks) = try blocksFor(offset: offset, length: data.readableBytes)
        let bytes = Array(data.readableBytesView)
        let size = blockSize
        let step = maximumTransferBytes / size
        let result = await run { client -> Result<Void, BlockDeviceError> in
            var done = 0
            while done < blocks {
                let count = min(step, blocks - done)
                do throws(ISCSIClientError) {
                    try client.write(
                        lba: lba + UInt64(done), data: Array(bytes[done * size..<(done + count) * size]), fua: fua)
                } catch {
                    return .failure(Self.map(error, writing: true))
                }
                done += count
            }
            return .success(())
        }
        try result.get()
    }

    public func flush() async throws(BlockDeviceError) {
        let result = await run { client -> Result<Void, BlockDeviceError> in
            do throws(ISCSIClientError) {
                try client.synchronizeCache()
                return .success(())
            } catch {
                return .failure(Self.map(error, writing: true))
            }
        }
        try result.get()
    }

    public func unmap(offset: UInt64, length: Int) async throws(BlockDeviceError) {
        guard !isReadOnly else { throw .writeProtected("\(url) is write-protected") }
        guard supportsUnmap else { throw .writeFailed("\(url) does not support UNMAP") }
        let (lba, blocks) = try blocksFor(offset: offset, length: length)
        let result = await run { client -> Result<Void, BlockDeviceError> in
            var done = 0
            let step = 1 << 22
            while done < blocks {
                let count = min(step, blocks - done)
                do throws(ISCSIClientError) {
                    try client.unmap(lba: lba + UInt64(done), blocks: UInt32(count))
                } catch {
                    return .failure(Self.map(error, writing: true))
                }
                done += count
            }
            return .success(())
        }
        try result.get()
    }

    /// Makes `[offset, offset + length)` read as zeros with WRITE SAME (16) of one zero block (SBC-4 §5.50),
    /// so no data crosses the wire; with `unmap` the UNMAP bit lets the target deallocate the blocks instead.
    ///
    /// Each command covers at most MAXIMUM WRITE SAME LENGTH blocks (65536 when the target does not say) and
    /// at most 256 MiB, so a target that writes the blocks answers well within the command timeout. When the
    /// target answers ILLEGAL REQUEST (INVALID COMMAND OPERATION CODE, or INVALID FIELD IN CDB), the device
    /// remembers it: a refused UNMAP bit is dropped, a refused WRITE SAME falls back to WRITE (16) of zeros
    /// in pieces of at most `maximumTransferBytes`, for this call and every later one.
    public func writeZeros(offset: UInt64, length: UInt64, unmap: Bool) async throws(BlockDeviceError) {
        guard !isReadOnly else { throw .writeProtected("\(url) is write-protected") }
        guard length <= UInt64(Int.max) else { throw .outOfRange("zeroing \(length) bytes at \(offset) of \(url)") }
        let (lba, blocks) = try blocksFor(offset: offset, length: Int(length))
        guard blocks > 0 else { return }
        let size = blockSize
        let perCommand = Self.writeSameBlocks(reported: maximumWriteSameBlocks, blockSize: size)
        let transferStep = maximumTransferBytes / size
        let result = await run { [self] client -> Result<Void, BlockDeviceError> in
            let zeroBlock = [UInt8](repeating: 0, count: size)
            var done = 0
            while done < blocks {
                let (refused, unmapRefused) = writeSame.withLock { ($0.refused, $0.unmapRefused) }
                let start = lba + UInt64(done)
                if refused {
                    let count = min(transferStep, blocks - done)
                    do throws(ISCSIClientError) {
                        try client.write(lba: start, data: [UInt8](repeating: 0, count: count * size))
                    } catch {
                        return .failure(Self.map(error, writing: true))
                    }
                    done += count
                    continue
                }
                let count = min(perCommand, blocks - done)
                let useUnmap = unmap && !unmapRefused
                do throws(ISCSIClientError) {
                    try client.writeSame16(lba: start, blocks: UInt32(count), block: zeroBlock, unmap: useUnmap)
                } catch {
                    guard Self.isUnsupported(error) else { return .failure(Self.map(error, writing: true)) }
                    // Retry the same blocks without the UNMAP bit, or with plain writes.
                    writeSame.withLock { state in
                        if useUnmap { state.unmapRefused = true } else { state.refused = true }
                    }
                    continue
                }
                done += count
            }
            return .success(())
        }
        try result.get()
    }

    /// Blocks per WRITE SAME command: the target's MAXIMUM WRITE SAME LENGTH (65536 if it reports none),
    /// capped at 256 MiB of blocks and at the 32-bit NUMBER OF LOGICAL BLOCKS field.
    static func writeSameBlocks(reported: UInt64, blockSize: Int) -> Int {
        let limit = reported > 0 ? reported : 65536
        let cap = UInt64((256 << 20) / blockSize)
        return Int(min(limit, cap, UInt64(UInt32.max)))
    }

    /// Whether a WRITE SAME failure is the target saying it does not do this: ILLEGAL REQUEST with INVALID
    /// COMMAND OPERATION CODE (ASC 0x20) or INVALID FIELD IN CDB (ASC 0x24) (SPC-4 §4.5.6).
    private static func isUnsupported(_ error: ISCSIClientError) -> Bool {
        guard error.code == .scsiStatus, let sense = error.senseCode, sense.key == 0x05 else { return false }
        return sense.asc == 0x20 || sense.asc == 0x24
    }

    /// GET LBA STATUS (SBC-4 §5.8), repeated until the range is covered; a
    /// target without it (or without provisioning) reports everything mapped.
    public func allocationStatus(offset: UInt64, length: Int) async throws(BlockDeviceError) -> [AllocationExtent] {
        let (lba, blocks) = try blocksFor(offset: offset, length: length)
        guard blocks > 0 else { return [] }
        let everythingMapped = [AllocationExtent(offset: offset, length: UInt64(length), status: .mapped)]
        guard supportsUnmap else { return everythingMapped }
        let size = UInt64(blockSize)
        let result = await run { client -> Result<[AllocationExtent], BlockDeviceError> in
            var extents: [AllocationExtent] = []
            var next = lba
            let end = lba + UInt64(blocks)
            while next < end {
                var cdb = [UInt8](repeating: 0, count: 16)
                cdb[0] = 0x9E
                cdb[1] = 0x12
                for index in 0..<8 { cdb[2 + index] = UInt8(truncatingIfNeeded: next >> (56 - 8 * UInt64(index))) }
                // ALLOCATION LENGTH is bytes 10...13 (SBC-4 §5.8.1).
                let allocation = 4096
                cdb[10] = UInt8(allocation >> 24 & 0xFF)
                cdb[11] = UInt8(allocation >> 16 & 0xFF)
                cdb[12] = UInt8(allocation >> 8 & 0xFF)
                cdb[13] = UInt8(allocation & 0xFF)
                let answer: ISCSIClient.CommandResult
                do throws(ISCSIClientError) {
                    answer = try client.execute(cdb: cdb, dataOut: nil, dataInLength: allocation)
                } catch {
                    return .failure(Self.map(error, writing: false))
                }
                guard answer.status == 0 else { return .success(everythingMapped) }
                let data = answer.dataIn
                var position = 8
                let progress = next
                while position + 16 <= data.count, next < end {
                    let start = data[position..<position + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                    let count = data[position + 8..<position + 12].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                    let provisioning = data[position + 12] & 0x0F
                    position += 16
                    let from = max(start, next)
                    let to = min(start + count, end)
                    guard to > from else { continue }
                    let status: AllocationExtent.Status = provisioning == 0 ? .mapped : .deallocated
                    if let last = extents.last, last.status == status, last.offset + last.length == from * size {
                        extents[extents.count - 1].length += (to - from) * size
                    } else {
                        extents.append(
                            AllocationExtent(offset: from * size, length: (to - from) * size, status: status))
                    }
                    next = to
                }
                if next == progress { return .success(everythingMapped) }
            }
            return .success(extents)
        }
        return try result.get()
    }

    /// Finishes queued requests, logs every session out and stops their threads.
    public func close() async {
        await jobs.shutdown()
    }

    // MARK: - Helpers

    private func blocksFor(offset: UInt64, length: Int) throws(BlockDeviceError) -> (lba: UInt64, blocks: Int) {
        let size = UInt64(blockSize)
        guard length >= 0, offset % size == 0, UInt64(length) % size == 0, offset <= capacity,
            UInt64(length) <= capacity - offset
        else {
            throw .outOfRange("offset \(offset) length \(length) is not whole blocks inside \(capacity) bytes")
        }
        return (offset / size, length / blockSize)
    }

    /// Runs `body` on a session thread and returns its result.
    private func run<T: Sendable>(
        _ body: @escaping @Sendable (ISCSIClient) -> Result<T, BlockDeviceError>
    ) async -> Result<T, BlockDeviceError> {
        await withCheckedContinuation { (continuation: CheckedContinuation<Result<T, BlockDeviceError>, Never>) in
            let accepted = jobs.push { client in continuation.resume(returning: body(client)) }
            if !accepted { continuation.resume(returning: .failure(.notReady("\(url) is closed"))) }
        }
    }

    /// Maps a client failure to the device error the SCSI layer turns into sense.
    private static func map(_ error: ISCSIClientError, writing: Bool) -> BlockDeviceError {
        if let sense = error.senseCode {
            switch (sense.key, sense.asc, sense.ascq) {
            case (0x07, 0x27, 0x07): return .noSpace(error.description)  // SPACE ALLOCATION FAILED WRITE PROTECT
            case (0x07, _, _): return .writeProtected(error.description)  // DATA PROTECT
            case (0x02, _, _): return .notReady(error.description)  // NOT READY
            default: break
            }
        }
        return writing ? .writeFailed(error.description) : .readFailed(error.description)
    }
}

// MARK: - Session threads

/// CHAP credentials in a `Sendable` box (tuples of strings are not).
private struct CredentialsBox: Sendable {
    var user: String
    var secret: String
    var tuple: ISCSIClient.Credentials { (user, secret) }
}

/// The sessions and LUN facts gathered at login.
private struct Login: @unchecked Sendable {
    var clients: [ISCSIClient]
    var capacity: ISCSIClient.Capacity
    var writeProtected: Bool
    var limits: ISCSIClient.BlockLimits
    var writeSame: Bool?
}

/// A FIFO of jobs served by one thread per `ISCSIClient`; each thread owns its
/// client, so no client is ever used by two threads.
private final class JobQueue: @unchecked Sendable {
    typealias Job = @Sendable (ISCSIClient) -> Void

    private let condition = NSCondition()
    private var jobs: [Job] = []
    private var head = 0
    private var stopping = false
    private var running: Int
    private var exitWaiters: [CheckedContinuation<Void, Never>] = []

    init(clients: [ISCSIClient], name: String) {
        running = clients.count
        for (index, client) in clients.enumerated() {
            let thread = Thread { [self] in serve(client) }
            thread.name = "\(name) #\(index)"
            thread.start()
        }
    }

    /// Queues a job; false once shutdown has begun.
    func push(_ job: @escaping Job) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !stopping else { return false }
        jobs.append(job)
        condition.signal()
        return true
    }

    /// Lets queued jobs finish and the threads log out and exit, without waiting.
    func requestStop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
    }

    /// Lets queued jobs finish, then logs out every session and waits for the threads.
    func shutdown() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            condition.lock()
            stopping = true
            let finished = running == 0
            if !finished { exitWaiters.append(continuation) }
            condition.broadcast()
            condition.unlock()
            if finished { continuation.resume() }
        }
    }

    private func serve(_ client: ISCSIClient) {
        while true {
            condition.lock()
            while head == jobs.count && !stopping { condition.wait() }
            guard head < jobs.count else {
                condition.unlock()
                break
            }
            let job = jobs[head]
            head += 1
            if head == jobs.count {
                jobs.removeAll(keepingCapacity: true)
                head = 0
            }
            condition.unlock()
            job(client)
        }
        try? client.logout()
        condition.lock()
        running -= 1
        let waiters = running == 0 ? exitWaiters : []
        if running == 0 { exitWaiters.removeAll() }
        condition.unlock()
        for waiter in waiters { waiter.resume() }
    }
}
