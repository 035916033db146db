import BlockDevice
import NIOCore

/// Counters of the guest's I/O on a LUN, monotonic (the pump compares two samples).
public struct GuestLoadSample: Sendable, Equatable {
    /// Guest commands finished.
    public var operations: UInt64
    /// Their summed latency, in nanoseconds (commands answered inline count as zero).
    public var latencyNanoseconds: UInt64

    public init(operations: UInt64 = 0, latencyNanoseconds: UInt64 = 0) {
        self.operations = operations
        self.latencyNanoseconds = latencyNanoseconds
    }
}

/// What the pump is told of the guest's writes while it copies.
public protocol RelocationTap: AnyObject, Sendable {
    /// The guest wrote or unmapped `range` (the write has finished on the live mount).
    func guestWrote(_ range: Range<UInt64>)
    /// The live mount is about to make `ranges` durable (a SYNCHRONIZE CACHE or a FUA write); returns false if the
    /// pump could not record them as needing a copy, which fails that commit.
    func willCommit(_ ranges: [Range<UInt64>]) -> Bool
}

/// A live-mounted disk as the pump sees it (implemented by `LiveMountDevice`): its data with the guest's writes
/// applied, the guest's load, and the hooks for dirty tracking and the switchover.
public protocol RelocationSource: AnyObject, Sendable {
    var blockSize: Int { get }
    /// Size of the disk in bytes.
    var sizeInBytes: UInt64 { get }

    /// Whether `[offset, offset + length)` reads as zeros without reading it (zero chunks of the backup the guest
    /// did not write, and ranges the guest unmapped).
    func isKnownZero(offset: UInt64, length: Int) -> Bool
    /// The disk's bytes as the guest would read them now, fetched at background priority.
    func readForRelocation(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer
    /// Starts fetching the backup chunks under the range into the cache (background priority), without waiting.
    func stageForRelocation(offset: UInt64, length: Int)
    /// The guest's I/O so far.
    var guestLoad: GuestLoadSample { get }

    /// Starts (or, with nil, stops) telling `tap` of guest writes and commits.
    func setRelocationTap(_ tap: (any RelocationTap)?)
    /// Ranges written but not yet durable: after a `kill -9` they may read as before.
    func uncommittedRanges() -> [Range<UInt64>]
    /// Holds new guest writes (they wait) and returns once the writes in flight have finished.
    func holdWrites() async
    /// Lets held writes go on, to the live mount.
    func releaseWrites()
    /// From now on the LUN is served by `primary` (which the source then owns and closes); held writes go there.
    /// The live mount's overlay and cache slots are let go once the reads in flight on them have finished.
    func switchOver(to primary: any BlockDevice) async
}
