import NIOCore

/// A store of fixed-size logical blocks that only moves data.
///
/// The SCSI layer owns every CDB check, LBA-range check and sense code; a
/// `BlockDevice` is handed requests that are already in range (as LIO's
/// `target_core_backend.h` hands its backends a narrow set of operations).
/// Offsets and lengths are in bytes and are multiples of `blockSize`.
public protocol BlockDevice: AnyObject, Sendable {
    /// Bytes per logical block (512 or 4096).
    var blockSize: Int { get }
    /// Number of logical blocks.
    var blockCount: UInt64 { get }
    /// Whether the backing store refuses writes (opened read-only).
    var isReadOnly: Bool { get }
    /// Whether `unmap` deallocates (and later reads return zeros).
    var supportsUnmap: Bool { get }

    /// Reads `length` bytes at `offset`.
    func read(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer
    /// The same bytes, only if they can be had at once without blocking (a
    /// page-cache hit, memory); nil sends the caller to `read`. Lets the
    /// target answer a READ on the connection's own thread.
    func readIfReady(offset: UInt64, length: Int) -> ByteBuffer?
    /// Starts reading `length` bytes at `offset` and calls `completion` once
    /// with the bytes or the error, on whatever thread finishes the read (an
    /// I/O thread, or the caller's own before this returns). Returns false,
    /// without calling `completion`, when this device cannot serve the read
    /// that way now (the default): the caller then uses `read`. Lets the
    /// target answer a READ without a task and its executor hops.
    func readAsync(
        offset: UInt64, length: Int, completion: @escaping @Sendable (Result<ByteBuffer, BlockDeviceError>) -> Void
    ) -> Bool
    /// Writes `data` at `offset`; with `fua` the data is durable when this returns.
    func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(BlockDeviceError)
    /// Makes every completed write durable (SYNCHRONIZE CACHE).
    func flush() async throws(BlockDeviceError)
    /// Deallocates `length` bytes at `offset`; later reads of the range return zeros.
    func unmap(offset: UInt64, length: Int) async throws(BlockDeviceError)
    /// Whether the range is known to be deallocated (GET LBA STATUS). Devices that
    /// cannot tell return `.mapped`.
    func allocationStatus(offset: UInt64, length: Int) async throws(BlockDeviceError) -> [AllocationExtent]
    /// Releases the device's resources (file descriptors, io contexts).
    func close() async
    /// A session logged in to the device's target (a new I_T nexus): a guest (re)booting. Live mounts start
    /// their per-boot trace recording here; other devices ignore it.
    func sessionStarted()
}

/// One run of blocks with the same provisioning status, for GET LBA STATUS
/// (SBC-4 §5.8).
public struct AllocationExtent: Sendable, Equatable {
    public enum Status: Sendable, Equatable {
        case mapped
        case deallocated
    }
    public var offset: UInt64
    public var length: UInt64
    public var status: Status
    public init(offset: UInt64, length: UInt64, status: Status) {
        self.offset = offset
        self.length = length
        self.status = status
    }
}

extension BlockDevice {
    /// Capacity in bytes.
    public var capacity: UInt64 { blockCount * UInt64(blockSize) }

    public func allocationStatus(offset: UInt64, length: Int) async throws(BlockDeviceError) -> [AllocationExtent] {
        [AllocationExtent(offset: offset, length: UInt64(length), status: .mapped)]
    }

    public func readIfReady(offset: UInt64, length: Int) -> ByteBuffer? { nil }

    public func sessionStarted() {}

    public func readAsync(
        offset: UInt64, length: Int, completion: @escaping @Sendable (Result<ByteBuffer, BlockDeviceError>) -> Void
    ) -> Bool { false }
}

/// A failure of a backing store, mapped by the SCSI layer to sense data.
public struct BlockDeviceError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The medium could not be read (EIO, corrupt or missing chunk): MEDIUM ERROR.
        case readFailed
        /// The medium could not be written (EIO): MEDIUM ERROR / WRITE ERROR.
        case writeFailed
        /// No space left on the backing store (ENOSPC): SPACE ALLOCATION FAILED.
        case noSpace
        /// The device is read-only: DATA PROTECT / WRITE PROTECTED.
        case writeProtected
        /// The device was closed or is being switched: NOT READY.
        case notReady
        /// The request is outside the device (a bug in the caller).
        case outOfRange
    }
    public var code: Code
    public var errno: Int32?
    private var detail: String

    public init(_ code: Code, errno: Int32? = nil, _ detail: String = "") {
        self.code = code
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        var s = "\(code)"
        if let errno { s += " (errno \(errno))" }
        if !detail.isEmpty { s += ": \(detail)" }
        return s
    }

    public static func readFailed(_ detail: String, errno: Int32? = nil) -> Self {
        .init(.readFailed, errno: errno, detail)
    }
    public static func writeFailed(_ detail: String, errno: Int32? = nil) -> Self {
        .init(.writeFailed, errno: errno, detail)
    }
    public static func noSpace(_ detail: String, errno: Int32? = nil) -> Self { .init(.noSpace, errno: errno, detail) }
    public static func writeProtected(_ detail: String, errno: Int32? = nil) -> Self {
        .init(.writeProtected, errno: errno, detail)
    }
    public static func notReady(_ detail: String) -> Self { .init(.notReady, detail) }
    public static func outOfRange(_ detail: String) -> Self { .init(.outOfRange, detail) }
}
