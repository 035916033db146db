import Foundation
import SQLiteStore

/// One relocation as the store keeps it.
public struct RelocationRecord: Sendable, Equatable {
    /// The live mount it belongs to (`mounts.id`).
    public var mountID: Int64
    public var target: String
    public var lun: UInt64
    /// The destination URL as given (with any CHAP secret: the store is readable by root only).
    public var destination: String
    public var phase: RelocationPhase
    /// The phase to go back to when a paused or failed relocation resumes.
    public var resumePhase: RelocationPhase
    public var totalBytes: UInt64
    public var regionBytes: Int
    /// The destination read zeros everywhere when the relocation started (a file it created).
    public var destinationZeroed: Bool
    /// A ceiling for this relocation in MiB/s (nil: the daemon's setting).
    public var maxRateMiB: Int?
    public var nextSequential: Int
    public var bytesWritten: UInt64
    public var bytesZero: UInt64
    public var verifyMismatches: UInt64
    public var resumes: Int
    public var startedAt: Int64
    public var completedAt: Int64?
    public var error: String?

    public init(
        mountID: Int64, target: String, lun: UInt64, destination: String, phase: RelocationPhase = .copying,
        totalBytes: UInt64, regionBytes: Int, destinationZeroed: Bool, maxRateMiB: Int? = nil,
        startedAt: Int64 = Int64(Date().timeIntervalSince1970)
    ) {
        self.mountID = mountID
        self.target = target
        self.lun = lun
        self.destination = destination
        self.phase = phase
        self.resumePhase = .copying
        self.totalBytes = totalBytes
        self.regionBytes = regionBytes
        self.destinationZeroed = destinationZeroed
        self.maxRateMiB = maxRateMiB
        self.nextSequential = 0
        self.bytesWritten = 0
        self.bytesZero = 0
        self.verifyMismatches = 0
        self.resumes = 0
        self.startedAt = startedAt
        self.completedAt = nil
        self.error = nil
    }
}

/// Why the relocation store failed.
public struct RelocationStoreError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Relocation checkpoints in SQLite (`relocations.sqlite` beside the mount registry; WAL, synchronous=FULL):
/// per relocation its record, the regions to copy again, and what each copied region holds (its CRC32C), so a
/// pump killed at any moment resumes from its last checkpoint, and a completed relocation keeps serving its
/// destination after a restart.
public final class RelocationStore: Sendable {
    private let database: SQLiteDatabase
    public var path: String { database.path }

    static let migrations = [
        Migration(
            name: "v1-relocations",
            sql: """
                CREATE TABLE relocations (
                    mount_id INTEGER PRIMARY KEY,
                    target TEXT NOT NULL,
                    lun INTEGER NOT NULL,
                    destination TEXT NOT NULL,
                    phase TEXT NOT NULL,
                    resume_phase TEXT NOT NULL,
                    total_bytes INTEGER NOT NULL,
                    region_bytes INTEGER NOT NULL,
                    destination_zeroed INTEGER NOT NULL,
                    max_rate_mib INTEGER,
                    next_sequential INTEGER NOT NULL,
                    bytes_written INTEGER NOT NULL,
                    bytes_zero INTEGER NOT NULL,
                    verify_mismatches INTEGER NOT NULL,
                    resumes INTEGER NOT NULL,
                    started_at INTEGER NOT NULL,
                    completed_at INTEGER,
                    error TEXT
                );
                CREATE TABLE relocation_dirty (
                    mount_id INTEGER NOT NULL,
                    region INTEGER NOT NULL,
                    PRIMARY KEY (mount_id, region)
                ) WITHOUT ROWID;
                CREATE TABLE relocation_regions (
                    mount_id INTEGER NOT NULL,
                    region INTEGER NOT NULL,
                    kind INTEGER NOT NULL,
                    crc INTEGER NOT NULL,
                    PRIMARY KEY (mount_id, region)
                ) WITHOUT ROWID;
                """),
    ]

    /// Opens (creating) the store at `path`.
    public init(path: String) throws(RelocationStoreError) {
        do {
            database = try SQLiteDatabase(path: path, options: .init(journalMode: .wal, synchronous: .full))
            _ = try database.migrate(Self.migrations)
        } catch {
            throw RelocationStoreError("cannot open the relocation store \(path): \(error)")
        }
    }

    // MARK: - Records

    /// Every relocation, by mount.
    public func records() throws(RelocationStoreError) -> [RelocationRecord] {
        try select("SELECT * FROM relocations ORDER BY mount_id", [])
    }

    /// The relocation of mount `mountID`, if any.
    public func record(mountID: Int64) throws(RelocationStoreError) -> RelocationRecord? {
        try select("SELECT * FROM relocations WHERE mount_id = ?", [mountID]).first
    }

    /// Records a new relocation (replacing a cancelled one of the same mount).
    public func create(_ record: RelocationRecord) throws(RelocationStoreError) {
        try write("create") { connection in
            for table in ["relocations", "relocation_dirty", "relocation_regions"] {
                _ = try connection.run("DELETE FROM \(table) WHERE mount_id = ?", [record.mountID])
            }
            _ = try connection.run(
                """
                INSERT INTO relocations (mount_id, target, lun, destination, phase, resume_phase, total_bytes,
                    region_bytes, destination_zeroed, max_rate_mib, next_sequential, bytes_written, bytes_zero,
                    verify_mismatches, resumes, started_at, completed_at, error)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                [
                    record.mountID, record.target, Int64(record.lun), record.destination, record.phase.rawValue,
                    record.resumePhase.rawValue, Int64(record.totalBytes), Int64(record.regionBytes),
                    record.destinationZeroed, record.maxRateMiB.map(Int64.init), Int64(record.nextSequential),
                    Int64(record.bytesWritten), Int64(record.bytesZero), Int64(record.verifyMismatches),
                    Int64(record.resumes), record.startedAt, record.completedAt, record.error,
                ])
        }
    }

    /// Updates the record's phase, counters and error (not the regions).
    public func update(_ record: RelocationRecord) throws(RelocationStoreError) {
        try write("update") { connection in try Self.update(record, connection) }
    }

    /// One checkpoint in one transaction: the record, the regions to copy again (replacing the previous list),
    /// and the contents that changed.
    public func checkpoint(_ record: RelocationRecord, dirty: Set<Int>, content: [Int: RegionContent])
        throws(RelocationStoreError)
    {
        try write("checkpoint") { connection in
            try Self.update(record, connection)
            _ = try connection.run("DELETE FROM relocation_dirty WHERE mount_id = ?", [record.mountID])
            let insertDirty = try connection.prepare("INSERT INTO relocation_dirty (mount_id, region) VALUES (?, ?)")
            for region in dirty.sorted() {
                _ = try insertDirty.run([record.mountID, Int64(region)])
            }
            let upsert = try connection.prepare(
                "INSERT OR REPLACE INTO relocation_regions (mount_id, region, kind, crc) VALUES (?, ?, ?, ?)")
            for (region, value) in content {
                let (kind, crc): (Int64, Int64) =
                    switch value {
                    case .unknown: (0, 0)
                    case .zero: (1, 0)
                    case .data(let crc): (2, Int64(crc))
                    }
                _ = try upsert.run([record.mountID, Int64(region), kind, crc])
            }
        }
    }

    /// Marks `regions` to be copied again, at once and durably (a guest write about to be committed).
    public func addDirty(mountID: Int64, regions: some Sequence<Int>) throws(RelocationStoreError) {
        try write("dirty") { connection in
            let insert = try connection.prepare(
                "INSERT OR IGNORE INTO relocation_dirty (mount_id, region) VALUES (?, ?)")
            for region in regions {
                _ = try insert.run([mountID, Int64(region)])
            }
        }
    }

    /// The regions to copy again and the known contents, for resuming.
    public func regions(mountID: Int64) throws(RelocationStoreError) -> (dirty: Set<Int>, content: [Int: RegionContent]) {
        do {
            let dirty = Set(
                try database.query("SELECT region FROM relocation_dirty WHERE mount_id = ?", [mountID])
                    .compactMap { $0.int64("region").map(Int.init) })
            var content: [Int: RegionContent] = [:]
            for row in try database.query(
                "SELECT region, kind, crc FROM relocation_regions WHERE mount_id = ?", [mountID])
            {
                guard let region = row.int64("region"), let kind = row.int64("kind"), let crc = row.int64("crc")
                else { continue }
                content[Int(region)] =
                    switch kind {
                    case 1: .zero
                    case 2: .data(crc: UInt32(truncatingIfNeeded: crc))
                    default: .unknown
                    }
            }
            return (dirty, content)
        } catch {
            throw RelocationStoreError("cannot read the regions of relocation \(mountID): \(error)")
        }
    }

    /// Forgets the per-region rows of a finished relocation (its record stays).
    public func dropRegions(mountID: Int64) throws(RelocationStoreError) {
        try write("cleanup") { connection in
            _ = try connection.run("DELETE FROM relocation_dirty WHERE mount_id = ?", [mountID])
            _ = try connection.run("DELETE FROM relocation_regions WHERE mount_id = ?", [mountID])
        }
    }

    /// Forgets a relocation entirely (its mount was unmounted).
    public func delete(mountID: Int64) throws(RelocationStoreError) {
        try write("delete") { connection in
            for table in ["relocations", "relocation_dirty", "relocation_regions"] {
                _ = try connection.run("DELETE FROM \(table) WHERE mount_id = ?", [mountID])
            }
        }
    }

    // MARK: - Helpers

    private static func update(_ record: RelocationRecord, _ connection: SQLiteConnection) throws {
        _ = try connection.run(
            """
            UPDATE relocations SET phase = ?, resume_phase = ?, max_rate_mib = ?, next_sequential = ?,
                bytes_written = ?, bytes_zero = ?, verify_mismatches = ?, resumes = ?, completed_at = ?, error = ?
            WHERE mount_id = ?
            """,
            [
                record.phase.rawValue, record.resumePhase.rawValue, record.maxRateMiB.map(Int64.init),
                Int64(record.nextSequential), Int64(record.bytesWritten), Int64(record.bytesZero),
                Int64(record.verifyMismatches), Int64(record.resumes), record.completedAt, record.error,
                record.mountID,
            ])
    }

    private func write(_ what: String, _ body: (SQLiteConnection) throws -> Void) throws(RelocationStoreError) {
        do {
            try database.transaction { connection in try body(connection) }
        } catch {
            throw RelocationStoreError("relocation store \(what) failed: \(error)")
        }
    }

    private func select(_ sql: String, _ bindings: [any SQLiteBindable]) throws(RelocationStoreError)
        -> [RelocationRecord]
    {
        let rows: [SQLiteRow]
        do {
            rows = try database.query(sql, bindings)
        } catch {
            throw RelocationStoreError("cannot read the relocation store: \(error)")
        }
        return rows.compactMap { row in
            guard let mountID = row.int64("mount_id"), let target = row.string("target"), let lun = row.int64("lun"),
                let destination = row.string("destination"),
                let phase = row.string("phase").flatMap(RelocationPhase.init(rawValue:)),
                let resumePhase = row.string("resume_phase").flatMap(RelocationPhase.init(rawValue:)),
                let total = row.int64("total_bytes"), let regionBytes = row.int64("region_bytes"),
                let zeroed = row.int64("destination_zeroed"), let next = row.int64("next_sequential"),
                let written = row.int64("bytes_written"), let zero = row.int64("bytes_zero"),
                let mismatches = row.int64("verify_mismatches"), let resumes = row.int64("resumes"),
                let started = row.int64("started_at")
            else { return nil }
            var record = RelocationRecord(
                mountID: mountID, target: target, lun: UInt64(lun), destination: destination, phase: phase,
                totalBytes: UInt64(total), regionBytes: Int(regionBytes), destinationZeroed: zeroed != 0,
                maxRateMiB: row.int64("max_rate_mib").map(Int.init), startedAt: started)
            record.resumePhase = resumePhase
            record.nextSequential = Int(next)
            record.bytesWritten = UInt64(written)
            record.bytesZero = UInt64(zero)
            record.verifyMismatches = UInt64(mismatches)
            record.resumes = Int(resumes)
            record.completedAt = row.int64("completed_at")
            record.error = row.string("error")
            return record
        }
    }
}
