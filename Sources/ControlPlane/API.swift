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

    public init(backup: String, disk: String? = nil, target: String, lun: UInt64? = nil, readOnly: Bool? = nil) {
        self.backup = backup
        self.disk = disk
        self.target = target
        self.lun = lun
        self.readOnly = readOnly
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
    /// `configuration` or `api`.
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

        public init(name: String, luns: [UInt64]) {
            self.name = name
            self.luns = luns
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

    public init(sessions: Int, targets: [Target], mounts: [MountInfo], cache: Cache?) {
        self.sessions = sessions
        self.targets = targets
        self.mounts = mounts
        self.cache = cache
    }
}
