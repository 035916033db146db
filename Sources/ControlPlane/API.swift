import Prefetch
import Relocation

// MARK: - The control API's bodies (shared by livemountd and the livemount CLI)

/// `POST /v1/mounts`: live-mount a backup disk as a LUN of a served target.
public struct MountRequest: Codable, Sendable, Equatable {
    /// `VM` or `VM@ID`.
    public var backup: String
    /// The backup's disk; nil = its first disk.
    public var disk: String?
    public var target: String
    /// nil = the lowest free LUN of the target.
    public var lun: UInt64?
    public var readOnly: Bool?
    /// The profile its traces and plan belong to; nil = the VM's name.
    public var profile: String?
    /// Follow the profile's prefetch plan; nil = yes.
    public var prefetch: Bool?
    /// Record the first this-many seconds of every boot; nil or 0 = off.
    public var recordBootSeconds: Int?
    /// Start relocating the mount to this primary LUN once it is mounted (see `RelocationRequest.to`).
    public var relocateTo: String?

    public init(
        backup: String, disk: String? = nil, target: String, lun: UInt64? = nil, readOnly: Bool? = nil,
        profile: String? = nil, prefetch: Bool? = nil, recordBootSeconds: Int? = nil, relocateTo: String? = nil
    ) {
        self.relocateTo = relocateTo
        self.backup = backup
        self.disk = disk
        self.target = target
        self.lun = lun
        self.readOnly = readOnly
        self.profile = profile
        self.prefetch = prefetch
        self.recordBootSeconds = recordBootSeconds
    }
}

/// `GET /v1/mounts/TARGET/LUN`: one mount with its recording and prefetch figures.
public struct MountStatusInfo: Codable, Sendable, Equatable {
    public var mount: MountInfo
    /// The profile its traces and plan belong to.
    public var profile: String
    public var prefetchEnabled: Bool
    public var recordBootSeconds: Int
    /// The recording running now, if any.
    public var recording: RecordingStatus?
    /// The prefetcher's figures, when the mount follows a plan.
    public var prefetch: PrefetchStatistics?

    public init(
        mount: MountInfo, profile: String, prefetchEnabled: Bool, recordBootSeconds: Int, recording: RecordingStatus?,
        prefetch: PrefetchStatistics?
    ) {
        self.mount = mount
        self.profile = profile
        self.prefetchEnabled = prefetchEnabled
        self.recordBootSeconds = recordBootSeconds
        self.recording = recording
        self.prefetch = prefetch
    }
}

/// `POST /v1/mounts/TARGET/LUN/trace`: start or stop recording the mount's reads.
public struct TraceRecordRequest: Codable, Sendable, Equatable {
    /// `start` or `stop`.
    public var action: String
    /// Start: the profile (default: the mount's).
    public var profile: String?
    /// Start: stop by itself after this many seconds (default: when stopped).
    public var seconds: Int?

    public init(action: String, profile: String? = nil, seconds: Int? = nil) {
        self.action = action
        self.profile = profile
        self.seconds = seconds
    }
}

/// The answer to a `TraceRecordRequest`.
public struct TraceRecordResponse: Codable, Sendable, Equatable {
    /// `recording` or `stopped`.
    public var state: String
    public var profile: String
    /// The trace id (after stop; after start once reads were stored).
    public var trace: Int64?

    public init(state: String, profile: String, trace: Int64?) {
        self.state = state
        self.profile = profile
        self.trace = trace
    }
}

/// A mount as the API shows it (`GET /v1/mounts`, and the answer to mount and unmount).
public struct MountInfo: Codable, Sendable, Equatable {
    public var id: Int64
    public var target: String
    public var lun: UInt64
    public var vm: String
    public var backupID: Int64
    public var disk: String
    public var readOnly: Bool
    /// `configuration`, `api`, or `recall` (the recall of an archived LUN).
    public var origin: String
    /// `mounted`, or `kept` (unmounted, overlay kept).
    public var state: String

    public init(
        id: Int64, target: String, lun: UInt64, vm: String, backupID: Int64, disk: String, readOnly: Bool,
        origin: String, state: String
    ) {
        self.id = id
        self.target = target
        self.lun = lun
        self.vm = vm
        self.backupID = backupID
        self.disk = disk
        self.readOnly = readOnly
        self.origin = origin
        self.state = state
    }
}

/// `GET /v1/status`: the whole daemon at a glance.
public struct StatusInfo: Codable, Sendable, Equatable {
    public struct Target: Codable, Sendable, Equatable {
        public var name: String
        public var luns: [UInt64]
        /// Per LUN, what initiators did with it since it was added (or the daemon started).
        public var usage: [LUNUsageInfo]?

        public init(name: String, luns: [UInt64], usage: [LUNUsageInfo]? = nil) {
            self.name = name
            self.luns = luns
            self.usage = usage
        }
    }

    /// One LUN's media reads and writes and its last access (TEST UNIT READY, INQUIRY and the like do not count).
    public struct LUNUsageInfo: Codable, Sendable, Equatable {
        public var lun: UInt64
        public var reads: UInt64
        public var writes: UInt64
        /// ISO 8601 (UTC); nil when nothing has read or written it yet.
        public var lastAccess: String?
        /// Seconds since then.
        public var idleSeconds: Double?

        public init(lun: UInt64, reads: UInt64, writes: UInt64, lastAccess: String?, idleSeconds: Double?) {
            self.lun = lun
            self.reads = reads
            self.writes = writes
            self.lastAccess = lastAccess
            self.idleSeconds = idleSeconds
        }
    }

    /// The SSD-tier cache's counters.
    public struct Cache: Codable, Sendable, Equatable {
        public var hits: UInt64
        public var misses: UInt64
        public var fetches: UInt64
        public var bytesFetched: UInt64
        public var evictions: UInt64
        public var slotsUsed: Int
        public var slotCount: Int

        public init(
            hits: UInt64, misses: UInt64, fetches: UInt64, bytesFetched: UInt64, evictions: UInt64, slotsUsed: Int,
            slotCount: Int
        ) {
            self.hits = hits
            self.misses = misses
            self.fetches = fetches
            self.bytesFetched = bytesFetched
            self.evictions = evictions
            self.slotsUsed = slotsUsed
            self.slotCount = slotCount
        }
    }

    public var sessions: Int
    public var targets: [Target]
    public var mounts: [MountInfo]
    /// nil when the daemon has no repository and cache.
    public var cache: Cache?
    /// Archived LUNs (nil without a repository).
    public var placeholders: [PlaceholderInfo]?
    /// Every relocation the daemon knows, completed ones included (nil without a repository).
    public var relocations: [RelocationStatus]?
    /// The prefetcher of each mount that follows a plan.
    public var prefetch: [MountPrefetch]?

    /// One mount's prefetch figures.
    public struct MountPrefetch: Codable, Sendable, Equatable {
        public var target: String
        public var lun: UInt64
        public var statistics: PrefetchStatistics

        public init(target: String, lun: UInt64, statistics: PrefetchStatistics) {
            self.target = target
            self.lun = lun
            self.statistics = statistics
        }
    }

    public init(
        sessions: Int, targets: [Target], mounts: [MountInfo], cache: Cache?, placeholders: [PlaceholderInfo]? = nil,
        relocations: [RelocationStatus]? = nil, prefetch: [MountPrefetch]? = nil
    ) {
        self.sessions = sessions
        self.targets = targets
        self.mounts = mounts
        self.cache = cache
        self.placeholders = placeholders
        self.relocations = relocations
        self.prefetch = prefetch
    }
}

// MARK: - Relocation (issue 5)

/// `POST /v1/mounts/TARGET/LUN/relocation`: start relocating a live mount to its primary LUN.
/// The answer is the relocation's `RelocationStatus` (201).
///
/// The other relocation calls: `GET /v1/mounts/T/L/relocation` (its status), `POST .../relocation/pause`,
/// `POST .../relocation/resume`, `DELETE .../relocation` (cancel; the LUN stays a live mount), and
/// `GET /v1/relocations` (every relocation the daemon knows, completed ones included).
public struct RelocationRequest: Codable, Sendable, Equatable {
    /// The primary LUN: `/path`, `file:///path` (a file, created sparse if missing), a block device path, or
    /// `iscsi://[user[%secret]@]host[:port]/IQN/LUN`.
    public var to: String
    /// A ceiling for this relocation in MiB/s (nil: the daemon's `[relocation] max_rate_mib`).
    public var maxRateMiB: Int?

    public init(to: String, maxRateMiB: Int? = nil) {
        self.to = to
        self.maxRateMiB = maxRateMiB
    }
}

// MARK: - Archive and recall (issue 6)

/// An archived LUN: `GET /v1/placeholders`, and the answer to `POST /v1/targets/T/luns/N/archive` (201) and
/// `POST /v1/placeholders/T/N/recall`.
public struct PlaceholderInfo: Codable, Sendable, Equatable {
    public var target: String
    public var lun: UInt64
    /// The primary storage it was archived from and is recalled to.
    public var path: String
    public var sizeBytes: UInt64
    public var blockSize: Int
    /// `archived` (only the backup holds it), `recalling` (served as a live mount while it is relocated back),
    /// or `recalled` (back on primary storage; the placeholder goes at the next start).
    public var state: String
    /// The backup holding its data (`vm@backupID/disk`).
    public var backupID: Int64
    public var vm: String
    public var disk: String
    /// ISO 8601 (UTC).
    public var archivedAt: String
    /// The recall's live mount, when recalling.
    public var mountID: Int64?
    /// The relocation back to `path`: its phase and the share copied (0-1), when recalling.
    public var relocationPhase: String?
    public var relocationProgress: Double?

    public init(
        target: String, lun: UInt64, path: String, sizeBytes: UInt64, blockSize: Int, state: String, backupID: Int64,
        vm: String, disk: String, archivedAt: String, mountID: Int64? = nil, relocationPhase: String? = nil,
        relocationProgress: Double? = nil
    ) {
        self.target = target
        self.lun = lun
        self.path = path
        self.sizeBytes = sizeBytes
        self.blockSize = blockSize
        self.state = state
        self.backupID = backupID
        self.vm = vm
        self.disk = disk
        self.archivedAt = archivedAt
        self.mountID = mountID
        self.relocationPhase = relocationPhase
        self.relocationProgress = relocationProgress
    }
}

/// `GET /v1/archive/candidates[?idle=SECONDS]`: what the archive policy would archive now (a dry run).
public struct ArchiveCandidates: Codable, Sendable, Equatable {
    /// A LUN on primary storage idle at least `idleSeconds`.
    public struct Candidate: Codable, Sendable, Equatable {
        public var target: String
        public var lun: UInt64
        public var path: String
        public var sizeBytes: UInt64
        /// Seconds since its last read or write (or since the daemon started, if none).
        public var idleSeconds: Double
        public var reads: UInt64
        public var writes: UInt64
        /// ISO 8601 (UTC); nil when nothing read or wrote it since the daemon started.
        public var lastAccess: String?

        public init(
            target: String, lun: UInt64, path: String, sizeBytes: UInt64, idleSeconds: Double, reads: UInt64,
            writes: UInt64, lastAccess: String?
        ) {
            self.target = target
            self.lun = lun
            self.path = path
            self.sizeBytes = sizeBytes
            self.idleSeconds = idleSeconds
            self.reads = reads
            self.writes = writes
            self.lastAccess = lastAccess
        }
    }

    /// The idle time the candidates were chosen by (the `idle` query, else `[archive] idle_seconds`).
    public var idleSeconds: Int
    /// Whether the daemon archives them by itself (`[archive] idle_seconds` > 0).
    public var policyEnabled: Bool
    public var candidates: [Candidate]

    public init(idleSeconds: Int, policyEnabled: Bool, candidates: [Candidate]) {
        self.idleSeconds = idleSeconds
        self.policyEnabled = policyEnabled
        self.candidates = candidates
    }
}

// MARK: - Backups, traces, cache (issue 6)

/// A backup as `GET /v1/backups` and `GET /v1/backups/ID` show it.
public struct BackupView: Codable, Sendable, Equatable {
    public struct Disk: Codable, Sendable, Equatable {
        public var name: String
        public var sizeBytes: UInt64
        public var chunkSize: Int
        public var chunks: Int
        public var zeroChunks: Int
        /// Bytes of chunk files this backup added (compressed, its share of new data).
        public var storedBytes: UInt64

        public init(name: String, sizeBytes: UInt64, chunkSize: Int, chunks: Int, zeroChunks: Int, storedBytes: UInt64) {
            self.name = name
            self.sizeBytes = sizeBytes
            self.chunkSize = chunkSize
            self.chunks = chunks
            self.zeroChunks = zeroChunks
            self.storedBytes = storedBytes
        }
    }

    public var id: Int64
    public var vm: String
    /// ISO 8601 (UTC).
    public var createdAt: String
    public var configurationName: String
    public var disks: [Disk]
    /// Who holds it (live mounts, placeholders): it cannot be deleted while held.
    public var holds: [String]

    public init(id: Int64, vm: String, createdAt: String, configurationName: String, disks: [Disk], holds: [String]) {
        self.id = id
        self.vm = vm
        self.createdAt = createdAt
        self.configurationName = configurationName
        self.disks = disks
        self.holds = holds
    }
}

/// `POST /v1/profiles/PROFILE/train`: train the profile's prefetch plan from its traces (all of them by default).
public struct TrainRequest: Codable, Sendable, Equatable {
    /// Train from these traces only.
    public var traces: [Int64]?
    /// Drop extents read by a smaller share of the traces (0...1, default 0.25).
    public var minSupport: Double?
    /// Plan granularity in bytes (default: the traces' chunk size).
    public var granularity: Int?

    public init(traces: [Int64]? = nil, minSupport: Double? = nil, granularity: Int? = nil) {
        self.traces = traces
        self.minSupport = minSupport
        self.granularity = granularity
    }
}
