// Boot traces and prefetch plans: the shared vocabulary of recording, training, following and replay
// (../shared/DESIGN.md, Formats: Traces, Prefetch plan).

/// Where a recorded read was served from. A read that spans several sources reports the slowest one
/// (backup > cache > overlay > zero), since that is the one the guest waited for.
public enum ReadSource: String, Sendable, Codable, CaseIterable, Comparable {
    /// Blocks the backup holds as zero (elided chunks) or the overlay holds as unmapped.
    case zero
    /// The persistent write overlay (blocks the guest wrote).
    case overlay
    /// The SSD-tier read cache.
    case cache
    /// A chunk fetched from backup storage for this read.
    case backup

    private var rank: Int {
        switch self {
        case .zero: 0
        case .overlay: 1
        case .cache: 2
        case .backup: 3
        }
    }

    public static func < (lhs: ReadSource, rhs: ReadSource) -> Bool { lhs.rank < rhs.rank }
}

/// One read a mounted LUN served, as recorded.
///
/// Times are microseconds since the trace's start: the first command after login (or the start of
/// recording, when it was started by hand on a running session). `completed - issued` is the read's service
/// time; the gap between one read's completion and the next read's issue is the guest's think time, which
/// replay keeps.
public struct TraceRead: Sendable, Equatable, Hashable, Codable {
    /// When the target received the command (µs since the trace's start).
    public var issued: UInt64
    /// When the target sent its status (µs since the trace's start); never before `issued`.
    public var completed: UInt64
    /// First logical block.
    public var lba: UInt64
    /// Number of logical blocks.
    public var blocks: UInt32
    /// The slowest source that served any part of the read.
    public var source: ReadSource
    /// Whether every chunk of the read that came from the cache had been staged there by the prefetcher
    /// (and not yet read by the guest).
    public var prefetched: Bool

    public init(issued: UInt64, completed: UInt64, lba: UInt64, blocks: UInt32, source: ReadSource, prefetched: Bool) {
        self.issued = issued
        self.completed = max(completed, issued)
        self.lba = lba
        self.blocks = blocks
        self.source = source
        self.prefetched = prefetched
    }
}

/// What a trace describes: which disk, which profile, how it was recorded.
public struct TraceInfo: Sendable, Equatable, Codable {
    /// Row id in the trace store (0 before the trace is stored).
    public var id: Int64
    /// The profile the trace trains (by default the backup's VM name).
    public var profile: String
    /// The VM whose backup was mounted.
    public var vm: String
    /// The backup id, when known.
    public var backupID: String?
    /// The backup disk's name, when known.
    public var disk: String?
    /// The LUN's logical block size in bytes (512 or 4096): converts LBAs to byte offsets.
    public var blockSize: Int
    /// The backup's chunk size in bytes: the default granularity a plan is coalesced to.
    public var chunkSize: Int
    /// When recording started, in seconds since 1970 (UTC).
    public var recordedAt: Int64
    /// A free-form label ("cold boot", "imported from x.csv").
    public var note: String

    public init(
        id: Int64 = 0, profile: String, vm: String, backupID: String? = nil, disk: String? = nil,
        blockSize: Int = 512, chunkSize: Int, recordedAt: Int64, note: String = ""
    ) {
        self.id = id
        self.profile = profile
        self.vm = vm
        self.backupID = backupID
        self.disk = disk
        self.blockSize = blockSize
        self.chunkSize = chunkSize
        self.recordedAt = recordedAt
        self.note = note
    }
}

/// A recorded trace: its description and its reads in issue order.
public struct Trace: Sendable, Equatable, Codable {
    public var info: TraceInfo
    public var reads: [TraceRead]

    public init(info: TraceInfo, reads: [TraceRead]) {
        self.info = info
        self.reads = reads
    }
}

/// One extent of a prefetch plan: a byte range of the disk, aligned to the plan's granularity.
public struct PlanEntry: Sendable, Equatable, Hashable, Codable {
    /// Byte offset on the disk (a multiple of the plan's granularity).
    public var offset: UInt64
    /// Length in bytes (a multiple of the granularity, except at the end of the disk).
    public var length: UInt64
    /// Share of the training traces that read any part of this extent, in 0...1.
    public var support: Double
    /// Expected time of the guest's first access, µs since the trace's start (median over the traces that
    /// read it).
    public var expectedTime: UInt64

    public init(offset: UInt64, length: UInt64, support: Double, expectedTime: UInt64) {
        self.offset = offset
        self.length = length
        self.support = support
        self.expectedTime = expectedTime
    }
}

/// Where a plan entry came from.
public enum PlanOrigin: String, Sendable, Codable {
    /// Trained from boot traces.
    case trace
    /// The blocks of a guest file the profile names.
    case file
}

/// A profile's prefetch plan: entries ordered by expected first access.
public struct PrefetchPlan: Sendable, Equatable, Codable {
    /// The profile it belongs to.
    public var profile: String
    /// Coalescing granularity in bytes (the cache's chunk size).
    public var granularity: Int
    /// The traces it was trained from.
    public var traceIDs: [Int64]
    /// When it was trained, seconds since 1970 (UTC).
    public var createdAt: Int64
    /// The extents, ordered by `expectedTime` (ties by offset).
    public var entries: [PlanEntry]

    public init(profile: String, granularity: Int, traceIDs: [Int64], createdAt: Int64, entries: [PlanEntry]) {
        self.profile = profile
        self.granularity = granularity
        self.traceIDs = traceIDs
        self.createdAt = createdAt
        self.entries = entries
    }

    /// Total bytes the plan names.
    public var totalBytes: UInt64 { entries.reduce(0) { $0 + $1.length } }
}
