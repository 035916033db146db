/// How relocation pumps run (`[relocation]` in the configuration; DESIGN.md, relocation pump).
public struct RelocationSettings: Sendable, Equatable, Codable {
    /// Copy unit and dirty-tracking granularity, in bytes (a power of two, 64 KiB to 16 MiB; default 1 MiB).
    public var regionBytes: Int = 1 << 20
    /// Copies in flight while the guest is idle; their buffers are the staging buffer (each region's backup chunks
    /// are fetched while earlier regions are written).
    public var maxInFlight: Int = 8
    /// The pump's ceiling in MiB/s (0: no limit).
    public var maxRateMiB: Int = 0
    /// The pump's rate while the guest is doing I/O, in MiB/s (it backs off further when the guest's latency
    /// rises); 0: pause while the guest is busy.
    public var busyRateMiB: Int = 8
    /// How far ahead of the copy backup chunks are also staged into the cache, in MiB (0: only the copies in
    /// flight read ahead). For slow backup storage; with fast storage the cache fills cost more than they save.
    public var stageAheadMiB: Int = 0
    /// Seconds between checkpoints (a `kill -9` costs at most about this much copying).
    public var checkpointSeconds: Double = 2
    /// Verify the destination against the copied data before switching over.
    public var verify: Bool = true

    public init() {}

    /// Limits for configuration checks.
    public static let regionBytesRange = (64 << 10)...(16 << 20)
    public static let maxInFlightRange = 1...64
    public static let checkpointSecondsRange = 0.1...60.0

    /// Problems with these values, each naming its key (empty: valid).
    public func problems() -> [String] {
        var result: [String] = []
        if !Self.regionBytesRange.contains(regionBytes) || regionBytes & (regionBytes - 1) != 0 {
            result.append("region_kib: \(regionBytes >> 10) is not a power of two in 64...16384")
        }
        if !Self.maxInFlightRange.contains(maxInFlight) { result.append("max_in_flight: \(maxInFlight) out of range 1...64") }
        if maxRateMiB < 0 { result.append("max_rate_mib: \(maxRateMiB) must not be negative") }
        if busyRateMiB < 0 { result.append("busy_rate_mib: \(busyRateMiB) must not be negative") }
        if stageAheadMiB < 0 || stageAheadMiB > 4096 { result.append("stage_ahead_mib: \(stageAheadMiB) out of range 0...4096") }
        if !Self.checkpointSecondsRange.contains(checkpointSeconds) {
            result.append("checkpoint_seconds: \(checkpointSeconds) out of range 0.1...60")
        }
        return result
    }
}

/// Where a relocation is (persisted as text in the relocation store and shown by the API).
public enum RelocationPhase: String, Sendable, Codable, Equatable, CaseIterable {
    /// Copying regions in ascending order, then the regions the guest dirtied.
    case copying
    /// Reading the destination back and comparing it with the copied data.
    case verifying
    /// Guest writes held while the last dirty regions are copied and the LUN switches to the destination.
    case switching
    /// Paused by the operator; resumes where it was.
    case paused
    /// The LUN is served by the destination; the backup, overlay and cache slots are no longer used.
    case completed
    /// Cancelled by the operator; the LUN stays a live mount.
    case cancelled
    /// Stopped on an error (shown in `error`); resumable by `resume`.
    case failed

    /// Whether the pump has nothing more to do.
    public var isFinal: Bool { self == .completed || self == .cancelled }
}

/// A relocation's figures (`GET /v1/mounts/T/L/relocation`, `livemount relocate status`).
public struct RelocationStatus: Sendable, Codable, Equatable {
    public var target: String
    public var lun: UInt64
    /// The destination URL, with any CHAP secret removed.
    public var destination: String
    public var phase: RelocationPhase
    /// The disk's size.
    public var bytesTotal: UInt64
    /// Bytes copied so far, counting each region once (the sequential pass), so `bytesTotal - bytesDone` is what
    /// the first pass has left.
    public var bytesDone: UInt64
    /// Bytes still to copy: the rest of the first pass plus the dirty regions.
    public var bytesLeft: UInt64
    /// Bytes written to the destination in all (re-copies of dirty regions included).
    public var bytesWritten: UInt64
    /// Bytes skipped as zeros (not written, or zeroed without data).
    public var bytesZero: UInt64
    /// Regions the guest wrote after they were copied, waiting to be copied again.
    public var dirtyRegions: Int
    /// Bytes per second over the last few seconds.
    public var rateBytesPerSecond: Double
    /// Seconds to go at that rate (nil: unknown).
    public var etaSeconds: Double?
    /// Times the pump slowed down because the guest was busy or its latency rose.
    public var backoffs: UInt64
    /// Regions that verification found different and copied again.
    public var verifyMismatches: UInt64
    /// Times the pump resumed from a checkpoint after a restart.
    public var resumes: Int
    /// Seconds since 1970 the relocation started.
    public var startedAt: Int64
    /// Seconds since 1970 it completed, if it did.
    public var completedAt: Int64?
    /// Why it failed or paused on its own.
    public var error: String?

    public init(
        target: String, lun: UInt64, destination: String, phase: RelocationPhase, bytesTotal: UInt64,
        bytesDone: UInt64 = 0, bytesLeft: UInt64 = 0, bytesWritten: UInt64 = 0, bytesZero: UInt64 = 0,
        dirtyRegions: Int = 0, rateBytesPerSecond: Double = 0, etaSeconds: Double? = nil, backoffs: UInt64 = 0,
        verifyMismatches: UInt64 = 0, resumes: Int = 0, startedAt: Int64 = 0, completedAt: Int64? = nil,
        error: String? = nil
    ) {
        self.target = target
        self.lun = lun
        self.destination = destination
        self.phase = phase
        self.bytesTotal = bytesTotal
        self.bytesDone = bytesDone
        self.bytesLeft = bytesLeft
        self.bytesWritten = bytesWritten
        self.bytesZero = bytesZero
        self.dirtyRegions = dirtyRegions
        self.rateBytesPerSecond = rateBytesPerSecond
        self.etaSeconds = etaSeconds
        self.backoffs = backoffs
        self.verifyMismatches = verifyMismatches
        self.resumes = resumes
        self.startedAt = startedAt
        self.completedAt = completedAt
        self.error = error
    }
}
