// MARK: - Backup LUNs, repository and cache tier settings

/// Which backup disk a live-mounted LUN serves: `VM[@ID][/DISK]` (the latest backup of VM when no id is
/// given; the backup's first disk when no disk is named).
public struct BackupReference: Sendable, Equatable, Hashable, CustomStringConvertible {
    public var vm: String
    public var backupID: Int64?
    public var disk: String?

    public init(vm: String, backupID: Int64? = nil, disk: String? = nil) {
        self.vm = vm
        self.backupID = backupID
        self.disk = disk
    }

    /// Parses `VM[@ID][/DISK]`. VM names may not contain '@' or '/'; the id is a positive integer.
    public static func parse(_ text: String) -> Result<BackupReference, LUNSpecificationError> {
        var rest = Substring(text)
        var disk: String?
        if let slash = rest.firstIndex(of: "/") {
            disk = String(rest[rest.index(after: slash)...])
            rest = rest[..<slash]
            if disk?.isEmpty == true { return .failure(.init("empty disk name after \"/\" in \"\(text)\"")) }
        }
        var id: Int64?
        if let at = rest.firstIndex(of: "@") {
            let idText = rest[rest.index(after: at)...]
            guard let value = Int64(idText), value > 0 else {
                return .failure(.init("\"\(idText)\" is not a backup id (a positive integer) in \"\(text)\""))
            }
            id = value
            rest = rest[..<at]
        }
        guard !rest.isEmpty else { return .failure(.init("missing VM name in \"\(text)\" (expected VM[@ID][/DISK])")) }
        return .success(BackupReference(vm: String(rest), backupID: id, disk: disk))
    }

    public var description: String {
        vm + (backupID.map { "@\($0)" } ?? "") + (disk.map { "/\($0)" } ?? "")
    }
}

/// `[repository]`: where backups live and how fast they may be read.
public struct RepositorySettings: Sendable, Equatable {
    /// The repository directory (catalog.sqlite + chunks/).
    public var path: String
    /// Latency added to every chunk read, in milliseconds: stands in for a deduplicating appliance or an
    /// object store in benchmarks and tests; 0 = none.
    public var readLatencyMilliseconds: Int
    /// Cap on the repository read rate in MiB/s (stored bytes); 0 = unlimited. Protects a busy appliance.
    public var readBandwidthMiBPerSecond: Int

    public init(path: String, readLatencyMilliseconds: Int = 0, readBandwidthMiBPerSecond: Int = 0) {
        self.path = path
        self.readLatencyMilliseconds = readLatencyMilliseconds
        self.readBandwidthMiBPerSecond = readBandwidthMiBPerSecond
    }
}

/// `[cache]`: the SSD-tier read cache file. Its SQLite index sits beside it (`PATH.index`).
public struct CacheSettings: Sendable, Equatable {
    /// The preallocated cache file.
    public var path: String
    /// Its size in bytes.
    public var size: UInt64
    /// Open it with O_DIRECT (off only for file systems without it, such as tmpfs).
    public var direct: Bool

    public init(path: String, size: UInt64, direct: Bool = true) {
        self.path = path
        self.size = size
        self.direct = direct
    }

    /// The smallest cache accepted: 16 slots of the default 1 MiB chunk.
    public static let minimumSize: UInt64 = 16 << 20
    /// The size when none is given (`--cache FILE`).
    public static let defaultSize: UInt64 = 1 << 30

    /// Parses `1073741824`, `512M`, `4G`, `4GiB`, `1T` (binary units).
    public static func parseSize(_ text: String) -> UInt64? {
        var digits = Substring(text)
        var multiplier: UInt64 = 1
        for (suffixes, value) in [
            (["TiB", "T", "t"], UInt64(1) << 40), (["GiB", "G", "g"], UInt64(1) << 30),
            (["MiB", "M", "m"], UInt64(1) << 20), (["KiB", "K", "k"], UInt64(1) << 10),
        ] {
            if let suffix = suffixes.first(where: { text.hasSuffix($0) }) {
                digits = digits.dropLast(suffix.count)
                multiplier = value
                break
            }
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let number = UInt64(digits) else {
            return nil
        }
        let (product, overflow) = number.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : product
    }

    /// Checks a cache file setting: an absolute path whose directory exists, and a usable size.
    static func problem(path: String, size: UInt64) -> String? {
        if let problem = Checks.absolutePathProblem(path) { return problem }
        let directory = path.split(separator: "/").dropLast().joined(separator: "/")
        if let problem = Checks.existingDirectoryProblem("/" + directory) { return problem }
        if size < minimumSize { return "cache size \(size) bytes is below the minimum of 16 MiB" }
        return nil
    }
}
