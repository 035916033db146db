import CLibAIO
import Dispatch
import Foundation
import Logging
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A raw image file or a block device driven through Linux AIO (libaio).
///
/// Modelled on tgt's `usr/bs_aio.c`: one io context per device, one I/O thread
/// that batches submissions into a single `io_submit` and reaps completions
/// when the AIO eventfd fires (see `AIOEngine`). Callers never block: every
/// method suspends on a continuation that the I/O thread (or, for the
/// synchronous calls `fallocate`, `lseek` and the `fdatasync` fallback, a
/// Dispatch worker) resumes; `readAsync` instead hands the I/O thread a
/// completion closure, so a caller outside Swift concurrency (an event loop)
/// gets its bytes with no task at all.
///
/// ## O_DIRECT
/// With `direct: true` the file is opened with O_DIRECT where the file system
/// allows it; when `open` fails with EINVAL the device logs it and falls back
/// to buffered I/O (still through libaio). O_DIRECT needs memory, offset and
/// length aligned to the file system's (or block device's) logical block size,
/// so data goes through pooled 4096-aligned bounce buffers. Requests that are
/// not aligned to that size (a 512-byte LUN on a 4 KiB file system):
/// - reads are widened to the aligned range, read with O_DIRECT, and the
///   requested part copied out;
/// - writes go through a second, buffered descriptor on the same file. Linux
///   keeps the page cache coherent with O_DIRECT (direct reads write back dirty
///   pages first, direct writes invalidate them), and `fdatasync` on either
///   descriptor covers the inode, so flush and FUA keep their meaning. This
///   avoids a read-modify-write, which would need range locks against
///   concurrent aligned writes to the same 4 KiB block.
///
/// ## Durability
/// A FUA write sets `RWF_DSYNC` on its iocbs (Linux 4.13+); `flush()` submits
/// `IOCB_CMD_FDSYNC` (Linux 4.18+) and, if the kernel refuses it, runs
/// `fdatasync` on a Dispatch worker.
///
/// ## Unmap and allocation status
/// Regular files punch holes with `fallocate(PUNCH_HOLE | KEEP_SIZE)` and
/// report holes with `SEEK_DATA`/`SEEK_HOLE`. Block devices use the same
/// `fallocate` mode, which the kernel turns into a zeroing discard or WRITE
/// ZEROES without fallback (`blkdev_fallocate`); unlike the `BLKDISCARD` ioctl
/// it guarantees that later reads return zeros, which is what `unmap` promises.
/// `supportsUnmap` is probed at open (a hole punched past end of file, which
/// changes no data, or the queue's `write_zeroes_max_bytes` in sysfs).
public final class AIOFileDevice: BlockDevice {
    /// The largest single iocb; larger requests are split and completed together.
    public static let maximumIOSize = 1 << 20

    public let blockSize: Int
    public let blockCount: UInt64
    public let isReadOnly: Bool
    public let supportsUnmap: Bool
    /// The path the device was opened from.
    public let path: String
    /// Whether I/O bypasses the page cache (false after an O_DIRECT fallback).
    public let isDirect: Bool
    /// Whether `path` is a block device (else a regular file).
    public let isBlockDevice: Bool
    /// The offset/length alignment O_DIRECT needs (1 when buffered).
    public let directAlignment: Int

    /// Size of the file or device in bytes (at least `capacity`).
    private let fileSize: UInt64
    /// The descriptor for aligned I/O (O_DIRECT when `isDirect`).
    private let fd: Int32
    /// A buffered descriptor for unaligned writes when `isDirect`; else `fd`.
    private let bufferedFD: Int32
    private let engine: AIOEngine
    private let pool = AlignedBufferPool(maximumSize: AIOFileDevice.maximumIOSize)
    private let logger: Logger

    /// Lifecycle and the count of synchronous calls running on Dispatch workers.
    private struct State {
        var aioFsyncUnsupported = false
        var blockingCalls = 0
        var closeWaiters: [CheckedContinuation<Void, Never>] = []
        var descriptorsClosed = false
    }
    private let state = Mutex(State())
    /// Set by `close()`; read lock-free on the I/O hot path.
    private let closed = Atomic<Bool>(false)

    // MARK: - Opening

    /// Opens a regular file or block device.
    ///
    /// - Parameters:
    ///   - path: the image file or block device.
    ///   - readOnly: open O_RDONLY; writes and unmaps then fail with `.writeProtected`.
    ///   - direct: use O_DIRECT where the file system allows it.
    ///   - blockSize: logical block size exposed to the SCSI layer (a power of two, 512...65536).
    ///   - logger: where the O_DIRECT fallback and other notes are logged.
    /// - Throws: `BlockDeviceOpenError` naming the path and the reason.
    public static func open(
        path: String,
        readOnly: Bool = false,
        direct: Bool = true,
        blockSize: Int = 512,
        logger: Logger = Logger(label: "livemount.blockdevice.aio")
    ) throws(BlockDeviceOpenError) -> AIOFileDevice {
        guard blockSize >= 512, blockSize <= 65536, blockSize & (blockSize - 1) == 0 else {
            throw BlockDeviceOpenError(
                .invalidConfiguration, path: path, "block size \(blockSize) is not a power of two in 512...65536")
        }
        let accessFlags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
        var isDirect = direct
        var fd: Int32 = -1
        if direct {
            fd = LinuxSystem.retryingOnEINTR { Glibc.open(path, accessFlags | LinuxSystem.oDirect) }
            if fd < 0 && errno == EINVAL {
                logger.notice(
                    "O_DIRECT not supported here; using buffered I/O through libaio",
                    metadata: ["path": "\(path)"]
                )
                isDirect = false
            }
        }
        if fd < 0 {
            fd = LinuxSystem.retryingOnEINTR { Glibc.open(path, accessFlags) }
        }
        guard fd >= 0 else { throw BlockDeviceOpenError(errno: errno, path: path, call: "open") }

        var bufferedFD = fd
        do throws(BlockDeviceOpenError) {
            var info = stat()
            guard fstat(fd, &info) == 0 else { throw BlockDeviceOpenError(errno: errno, path: path, call: "fstat") }
            let fileType = info.st_mode & S_IFMT
            let isBlockDevice = fileType == S_IFBLK
            guard isBlockDevice || fileType == S_IFREG else {
                throw BlockDeviceOpenError(.unsupportedFileType, path: path, "not a regular file or block device")
            }

            var fileSize = UInt64(max(0, info.st_size))
            var alignment = isDirect ? max(512, Int(info.st_blksize)) : 1
            if isBlockDevice {
                var bytes: UInt64 = 0
                guard ioctl(fd, LinuxSystem.blkGetSize64, &bytes) == 0 else {
                    throw BlockDeviceOpenError(errno: errno, path: path, call: "ioctl(BLKGETSIZE64)")
                }
                fileSize = bytes
                var sectorSize: Int32 = 0
                if isDirect, ioctl(fd, LinuxSystem.blkSSZGet, &sectorSize) == 0, sectorSize > 0 {
                    alignment = Int(sectorSize)
                }
            } else if isDirect && alignment > 512 && Self.directReadWorks(fd: fd, alignment: 512, size: fileSize) {
                // st_blksize is the file system's block, not the device's
                // sector: most files take 512-byte O_DIRECT I/O, and then a
                // 4 KiB read at a 512-byte offset is not widened to 8 KiB.
                alignment = 512
            }
            alignment = min(alignment, AlignedBufferPool.alignment)

            if isDirect {
                bufferedFD = LinuxSystem.retryingOnEINTR { Glibc.open(path, accessFlags) }
                guard bufferedFD >= 0 else {
                    bufferedFD = fd
                    throw BlockDeviceOpenError(errno: errno, path: path, call: "open (buffered)")
                }
            }

            let supportsUnmap =
                isBlockDevice
                ? Self.blockDeviceZeroesOnPunch(info.st_rdev)
                : Self.fileSupportsPunchHole(fd: fd, readOnly: readOnly, size: fileSize)

            let engine: AIOEngine
            do throws(AIOEngineSetupError) {
                engine = try AIOEngine(name: "aio \(path)")
            } catch {
                throw BlockDeviceOpenError(errno: error.errno, path: path, call: error.call)
            }
            return AIOFileDevice(
                path: path, fd: fd, bufferedFD: bufferedFD, engine: engine, blockSize: blockSize,
                fileSize: fileSize, isReadOnly: readOnly, isDirect: isDirect, isBlockDevice: isBlockDevice,
                directAlignment: alignment, supportsUnmap: supportsUnmap, logger: logger
            )
        } catch {
            if bufferedFD != fd { Glibc.close(bufferedFD) }
            Glibc.close(fd)
            throw error
        }
    }

    deinit {
        // Reached without close() only when no request is pending (each holds
        // the device), so the descriptors can go and the I/O thread may exit.
        let open = state.withLock { state -> Bool in
            defer { state.descriptorsClosed = true }
            return !state.descriptorsClosed
        }
        guard open else { return }
        engine.requestStop()
        if bufferedFD != fd { Glibc.close(bufferedFD) }
        Glibc.close(fd)
    }

    private init(
        path: String, fd: Int32, bufferedFD: Int32, engine: AIOEngine, blockSize: Int, fileSize: UInt64,
        isReadOnly: Bool, isDirect: Bool, isBlockDevice: Bool, directAlignment: Int, supportsUnmap: Bool,
        logger: Logger
    ) {
        self.path = path
        self.fd = fd
        self.bufferedFD = bufferedFD
        self.engine = engine
        self.blockSize = blockSize
        self.fileSize = fileSize
        self.blockCount = fileSize / UInt64(blockSize)
        self.isReadOnly = isReadOnly
        self.isDirect = isDirect
        self.isBlockDevice = isBlockDevice
        self.directAlignment = directAlignment
        self.supportsUnmap = supportsUnmap
        self.logger = logger
    }

    /// Whether the file system punches holes: punching past end of file with
    /// KEEP_SIZE changes no data and fails with EOPNOTSUPP where unsupported.
    private static func fileSupportsPunchHole(fd: Int32, readOnly: Bool, size: UInt64) -> Bool {
        guard !readOnly else { return false }
        let probeOffset = Int64((size + 1 << 20) & ~UInt64(4095))
        return LinuxSystem.fallocate(
            fd, mode: LinuxSystem.fallocPunchHole | LinuxSystem.fallocKeepSize, offset: probeOffset, length: 4096
        ) == 0
    }

    /// Whether an O_DIRECT read of `alignment` bytes at offset `alignment`
    /// succeeds: the smallest alignment the file and its device accept.
    private static func directReadWorks(fd: Int32, alignment: Int, size: UInt64) -> Bool {
        var memory: UnsafeMutableRawPointer?
        guard size >= UInt64(2 * alignment),
            posix_memalign(&memory, AlignedBufferPool.alignment, AlignedBufferPool.alignment) == 0, let buffer = memory
        else { return false }
        defer { free(buffer) }
        return pread(fd, buffer, alignment, off_t(alignment)) == alignment
    }

    /// Whether a block device can zero ranges without writing data (sysfs
    /// `queue/write_zeroes_max_bytes`), which `fallocate(PUNCH_HOLE)` needs.
    private static func blockDeviceZeroesOnPunch(_ device: dev_t) -> Bool {
        let device = UInt64(device)
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~UInt64(0xfff))
        let minor = (device & 0xff) | ((device >> 12) & ~UInt64(0xff))
        let path = "/sys/dev/block/\(major):\(minor)/queue/write_zeroes_max_bytes"
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return false }
        return (UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) > 0
    }

    // MARK: - BlockDevice

    public func read(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer {
        try checkRange(offset: offset, length: length)
        guard length > 0 else { return ByteBuffer() }
        try checkOpen()
        if let cached = readIfReady(offset: offset, length: length) { return cached }

        let (operation, start) = try makeReadOperation(offset: offset, length: length)
        let outcome = await engine.perform(operation)
        defer { release(operation) }
        if let error = Self.error(for: outcome, writing: false, path: path) { throw error }
        return Self.collect(operation, skip: Int(offset - start), length: length)
    }

    /// Reads `[offset, offset + length)` and hands the bytes to `body` where they landed (the bounce buffers, in
    /// order), without copying them into a `ByteBuffer`: for checksums and comparisons.
    public func inspect<T: Sendable>(
        offset: UInt64, length: Int, _ body: @escaping @Sendable ([UnsafeRawBufferPointer]) -> T
    ) async throws(BlockDeviceError) -> T {
        try checkRange(offset: offset, length: length)
        guard length > 0 else { return body([]) }
        try checkOpen()
        let (operation, start) = try makeReadOperation(offset: offset, length: length)
        let outcome = await engine.perform(operation)
        defer { release(operation) }
        if let error = Self.error(for: outcome, writing: false, path: path) { throw error }
        var pieces: [UnsafeRawBufferPointer] = []
        Self.forEachPiece(of: operation, skip: Int(offset - start), length: length) { pieces.append($0) }
        return body(pieces)
    }

    /// The callback form of `read`: the iocbs carry `completion`, which runs on
    /// the I/O thread as soon as the last one completes (no task, no executor
    /// hop). Returns false only for a request `read` would refuse (out of
    /// range, closed, no bounce buffer), so that `read` reports the error.
    public func readAsync(
        offset: UInt64, length: Int, completion: @escaping @Sendable (Result<ByteBuffer, BlockDeviceError>) -> Void
    ) -> Bool {
        guard length > 0, offset <= capacity, UInt64(length) <= capacity - offset,
            !closed.load(ordering: .relaxed),
            let made = try? makeReadOperation(offset: offset, length: length)
        else { return false }
        let (operation, start) = made
        let skip = Int(offset - start)
        let path = self.path
        engine.submit(operation) { [self] outcome in
            if let error = Self.error(for: outcome, writing: false, path: path) {
                release(operation)
                completion(.failure(error))
                return
            }
            let bytes = Self.collect(operation, skip: skip, length: length)
            release(operation)
            completion(.success(bytes))
        }
        return true
    }

    /// A read of `[offset, offset + length)` widened to the O_DIRECT alignment
    /// (the padding is read and dropped), and the widened start.
    private func makeReadOperation(offset: UInt64, length: Int) throws(BlockDeviceError) -> (AIOOperation, UInt64) {
        let alignment = UInt64(isDirect ? directAlignment : 1)
        let start = offset / alignment * alignment
        let end = (offset + UInt64(length) + alignment - 1) / alignment * alignment
        let requiredEnd = min(offset + UInt64(length), fileSize)
        let operation = try makeOperation(kind: .read, start: start, end: end, fd: fd, rwFlags: 0) { segment in
            let segmentEnd = UInt64(segment.offset) + UInt64(segment.length)
            if segmentEnd > requiredEnd {
                segment.required = max(0, Int(requiredEnd) - Int(segment.offset))
            }
        }
        return (operation, start)
    }

    /// Copies `length` bytes, from `skip` bytes into a finished read's bounce
    /// buffers, into a new `ByteBuffer`.
    private static func collect(_ operation: AIOOperation, skip: Int, length: Int) -> ByteBuffer {
        var result = ByteBufferAllocator().buffer(capacity: length)
        forEachPiece(of: operation, skip: skip, length: length) { result.writeBytes($0) }
        return result
    }

    /// Calls `body` with the `length` bytes from `skip` bytes into a finished read's bounce buffers, piece by
    /// piece, in order.
    private static func forEachPiece(
        of operation: AIOOperation, skip: Int, length: Int, _ body: (UnsafeRawBufferPointer) -> Void
    ) {
        var skip = skip
        var wanted = length
        for segment in operation.segments where wanted > 0 {
            guard let buffer = segment.buffer else { continue }
            if skip >= segment.length {
                skip -= segment.length
                continue
            }
            let count = min(segment.length - skip, wanted)
            body(UnsafeRawBufferPointer(start: buffer.address + skip, count: count))
            wanted -= count
            skip = 0
        }
    }

    /// Without O_DIRECT, data already in the page cache is copied out at once
    /// with `preadv2(RWF_NOWAIT)` on the caller's thread: no hop to the I/O
    /// thread and back. A miss (EAGAIN) or a short read returns nil and the
    /// read goes through libaio as usual, so the caller never blocks.
    public func readIfReady(offset: UInt64, length: Int) -> ByteBuffer? {
        guard !isDirect, length > 0, offset <= capacity, UInt64(length) <= capacity - offset else { return nil }
        // Admitted like a blocking call, so close() cannot close (and the
        // system reuse) the descriptor while this pread runs.
        guard admitCall() else { return nil }
        defer { finishCall() }
        return readFromPageCache(offset: offset, length: length)
    }

    /// Asks the kernel to read `offset ..< offset + length` into the page cache in the background
    /// (`posix_fadvise(POSIX_FADV_WILLNEED)`), so later `readIfReady` calls find it. Buffered descriptors only.
    public func adviseWillNeed(offset: UInt64, length: Int) {
        guard !isDirect, length > 0, offset <= capacity, admitCall() else { return }
        defer { finishCall() }
        _ = posix_fadvise(fd, off_t(offset), off_t(min(UInt64(length), capacity - offset)), POSIX_FADV_WILLNEED)
    }

    private func readFromPageCache(offset: UInt64, length: Int) -> ByteBuffer? {
        var buffer = ByteBufferAllocator().buffer(capacity: length)
        let copied = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { target -> Int in
            let n = livemount_preadv2(fd, target.baseAddress, length, Int64(offset), LinuxSystem.rwfNoWait)
            return n == length ? length : 0
        }
        return copied == length ? buffer : nil
    }

    public func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(BlockDeviceError) {
        guard !isReadOnly else { throw .writeProtected("\(path) is open read-only") }
        let length = data.readableBytes
        try checkRange(offset: offset, length: length)
        guard length > 0 else {
            if fua { try await flush() }
            return
        }
        try checkOpen()

        let alignment = UInt64(directAlignment)
        let aligned = !isDirect || (offset % alignment == 0 && UInt64(length) % alignment == 0)
        let operation = try makeOperation(
            kind: .write, start: offset, end: offset + UInt64(length),
            fd: aligned ? fd : bufferedFD, rwFlags: fua ? LinuxSystem.rwfDSync : 0
        ) { _ in }
        data.withUnsafeReadableBytes { source in
            var position = 0
            for segment in operation.segments {
                guard let buffer = segment.buffer, let base = source.baseAddress else { continue }
                buffer.address.copyMemory(from: base + position, byteCount: segment.length)
                position += segment.length
            }
        }
        let outcome = await engine.perform(operation)
        release(operation)
        if let error = Self.error(for: outcome, writing: true, path: path) { throw error }
    }

    public func flush() async throws(BlockDeviceError) {
        try checkOpen()
        let useAIO = state.withLock { !$0.aioFsyncUnsupported }
        if useAIO {
            let operation = AIOOperation(kind: .fdsync, segments: [.init(buffer: nil, length: 0, offset: 0, fd: fd)])
            let outcome = await engine.perform(operation)
            switch outcome {
            case .success:
                return
            case .failed(errno: EINVAL), .failed(errno: EOPNOTSUPP):
                state.withLock { $0.aioFsyncUnsupported = true }
                logger.notice("kernel refused IOCB_CMD_FDSYNC; flushing with fdatasync", metadata: ["path": "\(path)"])
            default:
                if let error = Self.error(for: outcome, writing: true, path: path) { throw error }
                return
            }
        }
        let descriptor = fd
        let result = try await runBlocking { () -> Int32 in
            fdatasync(descriptor) == 0 ? 0 : errno
        }
        if result != 0 { throw Self.writeError(errno: result, "fdatasync \(path)") }
    }

    public func unmap(offset: UInt64, length: Int) async throws(BlockDeviceError) {
        guard !isReadOnly else { throw .writeProtected("\(path) is open read-only") }
        try checkRange(offset: offset, length: length)
        guard supportsUnmap else { throw .writeFailed("\(path) does not support unmap", errno: EOPNOTSUPP) }
        guard length > 0 else { return }
        let descriptor = fd
        let result = try await runBlocking { () -> Int32 in
            let mode = LinuxSystem.fallocPunchHole | LinuxSystem.fallocKeepSize
            return LinuxSystem.retryingOnEINTR {
                LinuxSystem.fallocate(descriptor, mode: mode, offset: Int64(offset), length: Int64(length))
            } == 0 ? 0 : errno
        }
        if result != 0 { throw Self.writeError(errno: result, "fallocate(PUNCH_HOLE) \(path)") }
    }

    public func allocationStatus(offset: UInt64, length: Int) async throws(BlockDeviceError) -> [AllocationExtent] {
        try checkRange(offset: offset, length: length)
        guard length > 0 else { return [] }
        guard !isBlockDevice else { return [AllocationExtent(offset: offset, length: UInt64(length), status: .mapped)] }
        let descriptor = fd
        let block = UInt64(blockSize)
        let outcome = try await runBlocking { () -> Result<[AllocationExtent], BlockDeviceError> in
            Self.scanHoles(fd: descriptor, offset: offset, end: offset + UInt64(length), blockSize: block)
        }
        return try outcome.get()
    }

    public func close() async {
        closed.store(true, ordering: .sequentiallyConsistent)
        let waitForCalls = state.withLock { $0.blockingCalls > 0 }
        if waitForCalls {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let done = state.withLock { state -> Bool in
                    if state.blockingCalls == 0 { return true }
                    state.closeWaiters.append(continuation)
                    return false
                }
                if done { continuation.resume() }
            }
        }
        await engine.shutdown()
        let closeDescriptors = state.withLock { state -> Bool in
            defer { state.descriptorsClosed = true }
            return !state.descriptorsClosed
        }
        guard closeDescriptors else { return }
        if bufferedFD != fd { Glibc.close(bufferedFD) }
        Glibc.close(fd)
    }

    // MARK: - Helpers

    private func checkRange(offset: UInt64, length: Int) throws(BlockDeviceError) {
        guard length >= 0, offset <= capacity, UInt64(length) <= capacity - offset else {
            throw .outOfRange("offset \(offset) length \(length) outside \(capacity) bytes of \(path)")
        }
    }

    private func checkOpen() throws(BlockDeviceError) {
        if closed.load(ordering: .relaxed) { throw .notReady("\(path) is closed") }
    }

    /// Splits `[start, end)` into segments of at most `maximumIOSize`, each with a bounce buffer.
    private func makeOperation(
        kind: AIOOperation.Kind, start: UInt64, end: UInt64, fd: Int32, rwFlags: UInt32,
        adjust: (inout AIOOperation.Segment) -> Void
    ) throws(BlockDeviceError) -> AIOOperation {
        var segments: [AIOOperation.Segment] = []
        segments.reserveCapacity(Int((end - start) / UInt64(Self.maximumIOSize)) + 1)
        var position = start
        while position < end {
            let count = Int(min(UInt64(Self.maximumIOSize), end - position))
            guard let buffer = pool.take(size: count) else {
                for segment in segments { if let buffer = segment.buffer { pool.give(buffer) } }
                throw kind == .read
                    ? .readFailed("out of memory for bounce buffers") : .writeFailed("out of memory for bounce buffers")
            }
            var segment = AIOOperation.Segment(
                buffer: buffer, length: count, offset: Int64(position), fd: fd, rwFlags: rwFlags
            )
            adjust(&segment)
            segments.append(segment)
            position += UInt64(count)
        }
        return AIOOperation(kind: kind, segments: segments)
    }

    /// Returns an operation's bounce buffers to the pool.
    private func release(_ operation: AIOOperation) {
        for segment in operation.segments { if let buffer = segment.buffer { pool.give(buffer) } }
    }

    /// Runs a blocking system call on a Dispatch worker, never on the caller's thread.
    private func runBlocking<T: Sendable>(_ body: @escaping @Sendable () -> T) async throws(BlockDeviceError) -> T {
        guard admitCall() else { throw .notReady("\(path) is closed") }
        let value = await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
            DispatchQueue.global().async { continuation.resume(returning: body()) }
        }
        finishCall()
        return value
    }

    /// Counts a call that uses the descriptors outside the I/O engine. close()
    /// sets `closed` before it takes the lock to count such calls, so a call
    /// admitted here is always waited for.
    private func admitCall() -> Bool {
        state.withLock { state -> Bool in
            guard !closed.load(ordering: .sequentiallyConsistent) else { return false }
            state.blockingCalls += 1
            return true
        }
    }

    /// Ends a call counted by `admitCall`, waking close() after the last one.
    private func finishCall() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.blockingCalls -= 1
            guard state.blockingCalls == 0 else { return [] }
            defer { state.closeWaiters.removeAll() }
            return state.closeWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Walks `SEEK_DATA`/`SEEK_HOLE` over `[offset, end)`; a block counts as
    /// deallocated only when it lies wholly inside a hole.
    private static func scanHoles(
        fd: Int32, offset: UInt64, end: UInt64, blockSize: UInt64
    ) -> Result<[AllocationExtent], BlockDeviceError> {
        var holes: [Range<UInt64>] = []
        var position = offset
        while position < end {
            let data = lseek(fd, off_t(position), LinuxSystem.seekData)
            if data < 0 {
                let code = errno
                if code == ENXIO {
                    holes.append(position..<end)
                    break
                }
                if code == EINVAL || code == EOPNOTSUPP {
                    return .success([AllocationExtent(offset: offset, length: end - offset, status: .mapped)])
                }
                return .failure(.readFailed("lseek(SEEK_DATA)", errno: code))
            }
            let dataStart = UInt64(data)
            if dataStart > position { holes.append(position..<min(dataStart, end)) }
            guard dataStart < end else { break }
            let hole = lseek(fd, off_t(dataStart), LinuxSystem.seekHole)
            guard hole >= 0 else { return .failure(.readFailed("lseek(SEEK_HOLE)", errno: errno)) }
            position = UInt64(hole)
        }

        var extents: [AllocationExtent] = []
        func append(_ start: UInt64, _ stop: UInt64, _ status: AllocationExtent.Status) {
            guard stop > start else { return }
            if let last = extents.last, last.status == status, last.offset + last.length == start {
                extents[extents.count - 1].length += stop - start
            } else {
                extents.append(AllocationExtent(offset: start, length: stop - start, status: status))
            }
        }
        var cursor = offset
        for hole in holes {
            let holeStart = (hole.lowerBound + blockSize - 1) / blockSize * blockSize
            let holeEnd = hole.upperBound == end ? end : hole.upperBound / blockSize * blockSize
            guard holeEnd > holeStart else { continue }
            append(cursor, holeStart, .mapped)
            append(holeStart, holeEnd, .deallocated)
            cursor = holeEnd
        }
        append(cursor, end, .mapped)
        return .success(extents)
    }

    /// Maps the end of an AIO operation to the error the SCSI layer sees.
    private static func error(for outcome: AIOOperation.Outcome, writing: Bool, path: String) -> BlockDeviceError? {
        switch outcome {
        case .success:
            return nil
        case .closed:
            return .notReady("\(path) is closed")
        case .shortTransfer:
            return writing
                ? .writeFailed("short write to \(path)") : .readFailed("short read from \(path): end of file")
        case .failed(let code):
            return writing
                ? writeError(errno: code, "write to \(path)")
                : .readFailed("read from \(path): \(LinuxSystem.describe(errno: code))", errno: code)
        }
    }

    /// ENOSPC → no space, EROFS/EBADF → write protected, anything else → write failed.
    private static func writeError(errno code: Int32, _ what: String) -> BlockDeviceError {
        let detail = "\(what): \(LinuxSystem.describe(errno: code))"
        switch code {
        case ENOSPC, EDQUOT: return .noSpace(detail, errno: code)
        case EROFS, EBADF: return .writeProtected(detail, errno: code)
        default: return .writeFailed(detail, errno: code)
        }
    }
}

// MARK: - Open errors

/// Why a block device could not be opened; the description names the path.
public struct BlockDeviceOpenError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The path does not exist (ENOENT).
        case notFound
        /// Permission denied (EACCES, EPERM, EROFS for read-write).
        case permissionDenied
        /// The path is neither a regular file nor a block device.
        case unsupportedFileType
        /// A parameter (block size, URL) is invalid.
        case invalidConfiguration
        /// Another system call failed.
        case systemError
    }
    public var code: Code
    public var path: String
    public var errno: Int32?
    private var detail: String

    public init(_ code: Code, path: String, errno: Int32? = nil, _ detail: String) {
        self.code = code
        self.path = path
        self.errno = errno
        self.detail = detail
    }

    /// Classifies the errno of a failed system call on `path`.
    init(errno code: Int32, path: String, call: String) {
        let kind: Code
        switch code {
        case ENOENT, ENOTDIR: kind = .notFound
        case EACCES, EPERM, EROFS: kind = .permissionDenied
        default: kind = .systemError
        }
        self.init(kind, path: path, errno: code, "\(call): \(LinuxSystem.describe(errno: code))")
    }

    public var description: String { "cannot open \(path): \(detail)" }
}
