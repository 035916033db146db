// Per-daemon prefetch settings and per-mount options: shared by the configuration (LiveMountConfig), the
// control API and the mounts (LiveMount).

/// How a mount prefetches (the `[prefetch]` configuration table).
public struct PrefetchSettings: Sendable, Equatable, Codable {
    /// Bytes staged before the LUN goes live, at most.
    public var prestageBytes: UInt64
    /// The plan's first seconds that are pre-staged.
    public var prestageSeconds: Double
    /// How long pre-staging may hold the LUN back, at most.
    public var prestageTimeoutSeconds: Double
    /// Bytes staged ahead of the guest and not yet read, at most (capped at a quarter of the cache).
    public var leadBytes: UInt64
    /// How far ahead of the guest, in the plan's time, entries are staged.
    public var leadSeconds: Double
    /// Plan entries being staged at once, at most (each fetches its chunks one at a time).
    public var maxInFlight: Int

    public init(
        prestageBytes: UInt64 = 256 << 20, prestageSeconds: Double = 30, prestageTimeoutSeconds: Double = 30,
        leadBytes: UInt64 = 256 << 20, leadSeconds: Double = 30, maxInFlight: Int = 4
    ) {
        self.prestageBytes = prestageBytes
        self.prestageSeconds = prestageSeconds
        self.prestageTimeoutSeconds = prestageTimeoutSeconds
        self.leadBytes = leadBytes
        self.leadSeconds = leadSeconds
        self.maxInFlight = maxInFlight
    }
}

/// What one live mount does beyond serving its backup: which profile it belongs to, whether it follows that
/// profile's plan, and whether it records its boots.
public struct MountOptions: Sendable, Equatable, Codable {
    /// The profile its traces train and whose plan it follows; nil = the backup's VM name.
    public var profile: String?
    /// Follow the profile's prefetch plan (when it has one).
    public var prefetch: Bool
    /// Record the first this-many seconds of every boot (each new session login) as a trace; 0 = off.
    public var recordBootSeconds: Int

    public init(profile: String? = nil, prefetch: Bool = true, recordBootSeconds: Int = 0) {
        self.profile = profile
        self.prefetch = prefetch
        self.recordBootSeconds = recordBootSeconds
    }

    /// The longest boot recording accepted (one hour).
    public static let maximumRecordSeconds = 3600
}

/// What a mount's prefetcher did: the figures `livemount mount status` and the metrics show.
public struct PrefetchStatistics: Sendable, Equatable, Codable {
    /// The profile whose plan is followed.
    public var profile: String = ""
    /// Plan entries and their bytes.
    public var planEntries: Int = 0
    public var planBytes: UInt64 = 0
    /// following, diverged or finished.
    public var phase: String = ""
    /// The furthest plan entry the guest has read (−1: none yet).
    public var position: Int = 0
    /// Bytes staged before the LUN went live, and how long that took (seconds).
    public var prestagedBytes: UInt64 = 0
    public var prestageSeconds: Double = 0
    /// Bytes the prefetcher fetched from backup storage.
    public var stagedBytes: UInt64 = 0
    /// Of those, bytes the guest then read.
    public var usedBytes: UInt64 = 0
    /// Guest-read bytes that were staged and ready when asked for.
    public var hitBytes: UInt64 = 0
    /// Guest-read bytes that had to wait for backup storage (not staged, or still being staged).
    public var missBytes: UInt64 = 0
    /// Guest-read bytes already cached before this mount staged anything (a warm cache): in neither figure.
    public var warmBytes: UInt64 = 0
    /// used / staged.
    public var precision: Double = 0
    /// hit / (hit + miss).
    public var recall: Double = 0
    /// Median and 10th percentile of how long staged chunks waited for the guest (seconds).
    public var leadTimeMedian: Double = 0
    public var leadTimeP10: Double = 0
    /// Guest files of the profile staged with the pre-stage set, and those that could not be found.
    public var filesStaged: Int = 0
    public var fileProblems: [String] = []

    public init() {}
}

/// A recording in progress, as status shows it.
public struct RecordingStatus: Sendable, Equatable, Codable {
    /// The trace id once its first reads are stored.
    public var trace: Int64?
    public var profile: String
    public var reads: Int
    /// Seconds it stops after by itself (nil: when stopped).
    public var limitSeconds: Int?

    public init(trace: Int64?, profile: String, reads: Int, limitSeconds: Int?) {
        self.trace = trace
        self.profile = profile
        self.reads = reads
        self.limitSeconds = limitSeconds
    }
}
