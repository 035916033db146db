// The trace store: boot traces, their reads, prefetch plans and guest file lists, per profile, in SQLite
// (../shared/DESIGN.md, Formats: Traces, Prefetch plan). All SQL of traces and plans lives in this file
// (STYLE.md §4).
import Foundation
import SQLiteStore
import Synchronization

// MARK: - Errors

/// A trace store failure: what was being done (naming the trace id, profile or path) and why.
public struct TraceStoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of failure it is.
    public enum Code: Sendable, Equatable {
        /// The database could not be opened, read or written.
        case database
        /// A trace the operation needs does not exist.
        case noSuchTrace
        /// A value cannot be stored (a block size of 0, an empty profile name...).
        case invalidArgument
        /// The store was closed.
        case closed
    }

    public var code: Code
    /// A one-line explanation that names the trace id, profile or path.
    public var message: String

    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }

    static func database(_ path: String, _ doing: String, _ error: any Error) -> TraceStoreError {
        let reason = (error as? SQLiteError)?.message ?? "\(error)"
        return TraceStoreError(code: .database, message: "trace store \(path): \(doing): \(reason)")
    }

    static func noSuchTrace(_ id: Int64) -> TraceStoreError {
        TraceStoreError(code: .noSuchTrace, message: "no trace with id \(id)")
    }

    static func invalid(_ message: String) -> TraceStoreError {
        TraceStoreError(code: .invalidArgument, message: message)
    }
}

// MARK: - Summaries

/// Reads and bytes served from one source (or prefetched), within one trace.
public struct SourceShare: Sendable, Equatable, Codable {
    public var reads: Int
    public var bytes: UInt64

    public init(reads: Int = 0, bytes: UInt64 = 0) {
        self.reads = reads
        self.bytes = bytes
    }
}

/// What `livemount trace list` and `show` print about a trace, computed by the store without loading
/// every read into memory.
public struct TraceSummary: Sendable, Equatable, Codable {
    public var info: TraceInfo
    /// Number of reads.
    public var reads: Int
    /// Bytes read, counting a block as often as it was read.
    public var bytes: UInt64
    /// Distinct bytes read (the union of the reads' ranges).
    public var uniqueBytes: UInt64
    /// µs from the first read's issue to the last read's completion (0 for an empty trace).
    public var span: UInt64
    /// Reads and bytes by the source that served them.
    public var zero: SourceShare
    public var overlay: SourceShare
    public var cache: SourceShare
    public var backup: SourceShare
    /// Reads (and their bytes) that the prefetcher had staged.
    public var prefetched: SourceShare

    public init(
        info: TraceInfo, reads: Int, bytes: UInt64, uniqueBytes: UInt64, span: UInt64, zero: SourceShare = .init(),
        overlay: SourceShare = .init(), cache: SourceShare = .init(), backup: SourceShare = .init(),
        prefetched: SourceShare = .init()
    ) {
        self.info = info
        self.reads = reads
        self.bytes = bytes
        self.uniqueBytes = uniqueBytes
        self.span = span
        self.zero = zero
        self.overlay = overlay
        self.cache = cache
        self.backup = backup
        self.prefetched = prefetched
    }

    /// The share served by `source`.
    public func share(_ source: ReadSource) -> SourceShare {
        switch source {
        case .zero: zero
        case .overlay: overlay
        case .cache: cache
        case .backup: backup
        }
    }

    /// Computes the summary of `trace` in memory (the store computes the same in SQL).
    public init(_ trace: Trace) {
        let blockSize = UInt64(max(trace.info.blockSize, 1))
        var summary = TraceSummary(info: trace.info, reads: trace.reads.count, bytes: 0, uniqueBytes: 0, span: 0)
        var first = UInt64.max
        var last: UInt64 = 0
        for read in trace.reads {
            let bytes = UInt64(read.blocks) * blockSize
            summary.bytes += bytes
            first = min(first, read.issued)
            last = max(last, read.completed)
            switch read.source {
            case .zero: summary.zero.add(bytes)
            case .overlay: summary.overlay.add(bytes)
            case .cache: summary.cache.add(bytes)
            case .backup: summary.backup.add(bytes)
            }
            if read.prefetched { summary.prefetched.add(bytes) }
        }
        summary.span = trace.reads.isEmpty ? 0 : last - first
        var sweep = UnionSweep()
        for read in trace.reads.sorted(by: { $0.lba < $1.lba }) {
            sweep.add(lba: read.lba, blocks: UInt64(read.blocks))
        }
        summary.uniqueBytes = sweep.total * blockSize
        self = summary
    }
}

extension SourceShare {
    mutating func add(_ bytes: UInt64) {
        reads += 1
        self.bytes += bytes
    }
}

/// Length of the union of block ranges fed in ascending start order.
struct UnionSweep {
    private(set) var total: UInt64 = 0
    private var end: UInt64 = 0
    private var started = false

    mutating func add(lba: UInt64, blocks: UInt64) {
        let (stop, overflow) = lba.addingReportingOverflow(blocks)
        let rangeEnd = overflow ? UInt64.max : stop
        if !started || lba >= end {
            total += rangeEnd - lba
            end = rangeEnd
            started = true
        } else if rangeEnd > end {
            total += rangeEnd - end
            end = rangeEnd
        }
    }
}

// MARK: - Store

/// Boot traces, prefetch plans and guest file lists in one SQLite database (WAL).
///
/// Profiles are not rows of their own: a profile exists while it has a trace, a plan or a file list.
/// A trace's reads are kept in the order they were inserted (`seq`) and returned sorted by issue time
/// (ties in insertion order), so a recorder that appends reads as they complete still yields a trace in
/// issue order. Unsigned values (`issued`, `completed`, `lba`, plan offsets) are stored as the bit pattern of
/// a signed 64-bit integer, so any value round-trips.
///
/// Thread-safe: every call runs under the database's lock. `close()` releases the connection; calls after it
/// fail with `.closed`.
public final class TraceStore: Sendable {
    /// Schema changes, append-only (STYLE.md §4).
    static let migrations = [
        Migration(
            name: "v1-traces",
            sql: """
                CREATE TABLE traces (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    profile TEXT NOT NULL,
                    vm TEXT NOT NULL,
                    backup_id TEXT,
                    disk TEXT,
                    block_size INTEGER NOT NULL,
                    chunk_size INTEGER NOT NULL,
                    recorded_at INTEGER NOT NULL,
                    note TEXT NOT NULL
                );
                CREATE INDEX traces_by_profile ON traces (profile, id);
                CREATE TABLE trace_reads (
                    trace_id INTEGER NOT NULL REFERENCES traces (id) ON DELETE CASCADE,
                    seq INTEGER NOT NULL,
                    issued INTEGER NOT NULL,
                    completed INTEGER NOT NULL,
                    lba INTEGER NOT NULL,
                    blocks INTEGER NOT NULL,
                    source TEXT NOT NULL,
                    prefetched INTEGER NOT NULL,
                    PRIMARY KEY (trace_id, seq)
                ) WITHOUT ROWID;
                CREATE TABLE plans (
                    profile TEXT PRIMARY KEY NOT NULL,
                    granularity INTEGER NOT NULL,
                    trace_ids TEXT NOT NULL,
                    created_at INTEGER NOT NULL
                );
                CREATE TABLE plan_entries (
                    profile TEXT NOT NULL REFERENCES plans (profile) ON DELETE CASCADE,
                    seq INTEGER NOT NULL,
                    offset INTEGER NOT NULL,
                    length INTEGER NOT NULL,
                    support REAL NOT NULL,
                    expected_time INTEGER NOT NULL,
                    PRIMARY KEY (profile, seq)
                ) WITHOUT ROWID;
                CREATE TABLE profile_files (
                    profile TEXT NOT NULL,
                    seq INTEGER NOT NULL,
                    path TEXT NOT NULL,
                    PRIMARY KEY (profile, seq)
                ) WITHOUT ROWID;
                """)
    ]

    /// The database file's path.
    public let path: String
    private let database: Mutex<SQLiteDatabase?>

    private init(path: String, database: SQLiteDatabase) {
        self.path = path
        self.database = Mutex(database)
    }

    /// Opens the store at `path`, creating the file (and its directory) if missing and applying migrations.
    /// `:memory:` gives a private in-memory store.
    public static func open(path: String) throws(TraceStoreError) -> TraceStore {
        guard !path.isEmpty else { throw .invalid("trace store: the path is empty") }
        do {
            let database: SQLiteDatabase
            if path == ":memory:" {
                database = try SQLiteDatabase.inMemory()
            } else {
                let directory = (path as NSString).deletingLastPathComponent
                if !directory.isEmpty {
                    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                }
                // NORMAL: with WAL a commit survives a crash of the process; a power loss can lose the last
                // commits of a recording, never corrupt the store.
                database = try SQLiteDatabase(path: path, options: .init(journalMode: .wal, synchronous: .normal))
            }
            try database.migrate(Self.migrations)
            return TraceStore(path: path, database: database)
        } catch {
            throw .database(path, "open", error)
        }
    }

    /// Releases the database connection. Later calls fail with `.closed`.
    public func close() {
        let database = self.database.withLock { database in
            let current = database
            database = nil
            return current
        }
        try? database?.checkpoint()
    }

    /// Runs `body` with the connection under the database's lock, turning any failure into a
    /// `TraceStoreError` that says what was being done.
    private func access<T: Sendable>(
        _ doing: @autoclosure () -> String, _ body: (SQLiteConnection) throws -> T
    ) throws(TraceStoreError) -> T {
        guard let database = self.database.withLock({ $0 }) else {
            throw TraceStoreError(code: .closed, message: "trace store \(path): \(doing()): the store is closed")
        }
        do {
            return try database.withConnection(body)
        } catch let error as TraceStoreError {
            throw error
        } catch {
            throw .database(path, doing(), error)
        }
    }

    // MARK: - Traces

    /// Stores a whole trace (its `info.id` is ignored) in one transaction and returns its new id.
    public func insert(_ trace: Trace) throws(TraceStoreError) -> Int64 {
        try Self.validate(trace.info)
        return try access("insert a trace of profile \(trace.info.profile)") { conn in
            try conn.transaction { conn in
                let id = try Self.insertInfo(trace.info, conn)
                try Self.insertReads(trace.reads, id: id, firstSeq: 0, conn)
                return id
            }
        }
    }

    /// Starts a live recording: stores `info` (its `id` is ignored) with no reads and returns the new id.
    public func begin(_ info: TraceInfo) throws(TraceStoreError) -> Int64 {
        try Self.validate(info)
        return try access("begin a trace of profile \(info.profile)") { conn in
            try Self.insertInfo(info, conn)
        }
    }

    /// Appends a batch of reads to trace `id`, in one transaction.
    public func append(_ reads: [TraceRead], to id: Int64) throws(TraceStoreError) {
        try access("append \(reads.count) reads to trace \(id)") { conn in
            try conn.transaction { conn in
                guard try !conn.query("SELECT 1 FROM traces WHERE id = ?", [id]).isEmpty else {
                    throw TraceStoreError.noSuchTrace(id)
                }
                let next = try conn.query("SELECT COALESCE(MAX(seq) + 1, 0) FROM trace_reads WHERE trace_id = ?", [id])
                try Self.insertReads(reads, id: id, firstSeq: next.first?.int64(0) ?? 0, conn)
            }
        }
    }

    /// Summaries of every trace (or of one profile's), by id.
    public func summaries(profile: String? = nil) throws(TraceStoreError) -> [TraceSummary] {
        try access("summarise traces" + (profile.map { " of profile \($0)" } ?? "")) { conn in
            let infos = try conn.query(
                "SELECT \(Self.infoColumns) FROM traces WHERE ?1 IS NULL OR profile = ?1 ORDER BY id", [profile]
            ).map(Self.info(from:))
            let totals = try conn.prepare(
                """
                SELECT source, prefetched, COUNT(*), TOTAL(blocks), MIN(issued), MAX(completed)
                FROM trace_reads WHERE trace_id = ? GROUP BY source, prefetched
                """)
            let ranges = try conn.prepare("SELECT lba, blocks FROM trace_reads WHERE trace_id = ? ORDER BY lba")
            var summaries: [TraceSummary] = []
            for info in infos {
                let blockSize = UInt64(max(info.blockSize, 1))
                var summary = TraceSummary(info: info, reads: 0, bytes: 0, uniqueBytes: 0, span: 0)
                var first = UInt64.max
                var last: UInt64 = 0
                for row in try totals.query([info.id]) {
                    let count = Int(row.int64(2) ?? 0)
                    let bytes = UInt64(row.double(3) ?? 0) * blockSize
                    let share = SourceShare(reads: count, bytes: bytes)
                    summary.reads += count
                    summary.bytes += bytes
                    first = min(first, UInt64(bitPattern: row.int64(4) ?? 0))
                    last = max(last, UInt64(bitPattern: row.int64(5) ?? 0))
                    switch row.string(0).flatMap(ReadSource.init(rawValue:)) {
                    case .zero: summary.zero.merge(share)
                    case .overlay: summary.overlay.merge(share)
                    case .cache: summary.cache.merge(share)
                    case .backup, nil: summary.backup.merge(share)
                    }
                    if row.int64(1) == 1 { summary.prefetched.merge(share) }
                }
                summary.span = summary.reads == 0 ? 0 : last - min(first, last)
                var sweep = UnionSweep()
                try ranges.bind([info.id])
                while try ranges.step() {
                    sweep.add(lba: UInt64(bitPattern: try ranges.int64(at: 0)), blocks: UInt64(try ranges.int64(at: 1)))
                }
                ranges.reset()
                summary.uniqueBytes = sweep.total * blockSize
                summaries.append(summary)
            }
            return summaries
        }
    }

    /// The trace with id `id` and its reads in issue order, or nil.
    public func trace(id: Int64) throws(TraceStoreError) -> Trace? {
        try access("read trace \(id)") { conn in
            guard let row = try conn.query("SELECT \(Self.infoColumns) FROM traces WHERE id = ?", [id]).first else {
                return nil
            }
            let info = Self.info(from: row)
            let statement = try conn.prepare(
                """
                SELECT issued, completed, lba, blocks, source, prefetched FROM trace_reads
                WHERE trace_id = ? ORDER BY issued, seq
                """)
            try statement.bind([id])
            var reads: [TraceRead] = []
            while try statement.step() {
                let sourceName = try statement.string(at: 4)
                guard let source = ReadSource(rawValue: sourceName) else {
                    throw TraceStoreError.invalid("trace \(id): unknown read source '\(sourceName)' in the store")
                }
                reads.append(
                    TraceRead(
                        issued: UInt64(bitPattern: try statement.int64(at: 0)),
                        completed: UInt64(bitPattern: try statement.int64(at: 1)),
                        lba: UInt64(bitPattern: try statement.int64(at: 2)),
                        blocks: UInt32(truncatingIfNeeded: try statement.int64(at: 3)),
                        source: source, prefetched: try statement.int64(at: 5) != 0))
            }
            statement.reset()
            return Trace(info: info, reads: reads)
        }
    }

    /// Deletes trace `id` and its reads; false if there was none.
    public func delete(id: Int64) throws(TraceStoreError) -> Bool {
        try access("delete trace \(id)") { conn in
            try conn.transaction { conn in
                try conn.run("DELETE FROM trace_reads WHERE trace_id = ?", [id])
                return try conn.run("DELETE FROM traces WHERE id = ?", [id]) > 0
            }
        }
    }

    // MARK: - Plans

    /// Stores `plan` as its profile's current plan, replacing the one before.
    public func save(_ plan: PrefetchPlan) throws(TraceStoreError) {
        guard !plan.profile.isEmpty else { throw .invalid("cannot save a plan: the profile name is empty") }
        try access("save the plan of profile \(plan.profile)") { conn in
            try conn.transaction { conn in
                try conn.run("DELETE FROM plan_entries WHERE profile = ?", [plan.profile])
                try conn.run("DELETE FROM plans WHERE profile = ?", [plan.profile])
                try conn.run(
                    "INSERT INTO plans (profile, granularity, trace_ids, created_at) VALUES (?, ?, ?, ?)",
                    [
                        plan.profile, plan.granularity, plan.traceIDs.map(String.init).joined(separator: ","),
                        plan.createdAt,
                    ])
                let insert = try conn.prepare(
                    """
                    INSERT INTO plan_entries (profile, seq, offset, length, support, expected_time)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """)
                for (seq, entry) in plan.entries.enumerated() {
                    try insert.run([
                        plan.profile, seq, Int64(bitPattern: entry.offset), Int64(bitPattern: entry.length),
                        entry.support, Int64(bitPattern: entry.expectedTime),
                    ])
                }
            }
        }
    }

    /// The profile's current plan, or nil.
    public func plan(profile: String) throws(TraceStoreError) -> PrefetchPlan? {
        try access("read the plan of profile \(profile)") { conn in
            guard
                let row = try conn.query(
                    "SELECT granularity, trace_ids, created_at FROM plans WHERE profile = ?", [profile]
                ).first
            else { return nil }
            let ids = (row.string(1) ?? "").split(separator: ",").compactMap { Int64($0) }
            let entries = try conn.query(
                "SELECT offset, length, support, expected_time FROM plan_entries WHERE profile = ? ORDER BY seq",
                [profile]
            ).map { entry in
                PlanEntry(
                    offset: UInt64(bitPattern: entry.int64(0) ?? 0), length: UInt64(bitPattern: entry.int64(1) ?? 0),
                    support: entry.double(2) ?? 0, expectedTime: UInt64(bitPattern: entry.int64(3) ?? 0))
            }
            return PrefetchPlan(
                profile: profile, granularity: Int(row.int64(0) ?? 0), traceIDs: ids, createdAt: row.int64(2) ?? 0,
                entries: entries)
        }
    }

    // MARK: - Guest files

    /// Replaces the guest file paths the profile names (an empty list clears them).
    public func setFiles(_ paths: [String], profile: String) throws(TraceStoreError) {
        guard !profile.isEmpty else { throw .invalid("cannot set files: the profile name is empty") }
        try access("set the files of profile \(profile)") { conn in
            try conn.transaction { conn in
                try conn.run("DELETE FROM profile_files WHERE profile = ?", [profile])
                let insert = try conn.prepare("INSERT INTO profile_files (profile, seq, path) VALUES (?, ?, ?)")
                for (seq, path) in paths.enumerated() { try insert.run([profile, seq, path]) }
            }
        }
    }

    /// The guest file paths the profile names, in the order they were set.
    public func files(profile: String) throws(TraceStoreError) -> [String] {
        try access("read the files of profile \(profile)") { conn in
            try conn.query("SELECT path FROM profile_files WHERE profile = ? ORDER BY seq", [profile]).compactMap {
                $0.string(0)
            }
        }
    }

    /// Every profile that has a trace, a plan or a file list, sorted by name.
    public func profiles() throws(TraceStoreError) -> [String] {
        try access("list profiles") { conn in
            try conn.query(
                """
                SELECT profile FROM traces UNION SELECT profile FROM plans
                UNION SELECT profile FROM profile_files ORDER BY 1
                """
            ).compactMap { $0.string(0) }
        }
    }

    // MARK: - Rows

    private static let infoColumns = "id, profile, vm, backup_id, disk, block_size, chunk_size, recorded_at, note"

    /// Rejects what no reader of the trace could use.
    private static func validate(_ info: TraceInfo) throws(TraceStoreError) {
        guard !info.profile.isEmpty else { throw .invalid("cannot store a trace: the profile name is empty") }
        guard info.blockSize > 0 else {
            throw .invalid("cannot store a trace of profile \(info.profile): block size \(info.blockSize)")
        }
        guard info.chunkSize > 0 else {
            throw .invalid("cannot store a trace of profile \(info.profile): chunk size \(info.chunkSize)")
        }
    }

    private static func insertInfo(_ info: TraceInfo, _ conn: SQLiteConnection) throws -> Int64 {
        try conn.run(
            """
            INSERT INTO traces (profile, vm, backup_id, disk, block_size, chunk_size, recorded_at, note)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """,
            [
                info.profile, info.vm, info.backupID, info.disk, info.blockSize, info.chunkSize, info.recordedAt,
                info.note,
            ])
        return conn.lastInsertRowID
    }

    /// Inserts `reads` with one prepared statement, binding values one by one (no per-row arrays).
    private static func insertReads(
        _ reads: [TraceRead], id: Int64, firstSeq: Int64, _ conn: SQLiteConnection
    ) throws {
        guard !reads.isEmpty else { return }
        let insert = try conn.prepare(
            """
            INSERT INTO trace_reads (trace_id, seq, issued, completed, lba, blocks, source, prefetched)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """)
        try insert.bind(.integer(id), at: 1)
        for (index, read) in reads.enumerated() {
            try insert.bind(.integer(firstSeq + Int64(index)), at: 2)
            try insert.bind(.integer(Int64(bitPattern: read.issued)), at: 3)
            try insert.bind(.integer(Int64(bitPattern: read.completed)), at: 4)
            try insert.bind(.integer(Int64(bitPattern: read.lba)), at: 5)
            try insert.bind(.integer(Int64(read.blocks)), at: 6)
            try insert.bind(.text(read.source.rawValue), at: 7)
            try insert.bind(.integer(read.prefetched ? 1 : 0), at: 8)
            try insert.step()
            insert.reset()
        }
    }

    private static func info(from row: SQLiteRow) -> TraceInfo {
        TraceInfo(
            id: row.int64(0) ?? 0, profile: row.string(1) ?? "", vm: row.string(2) ?? "", backupID: row.string(3),
            disk: row.string(4), blockSize: Int(row.int64(5) ?? 512), chunkSize: Int(row.int64(6) ?? 0),
            recordedAt: row.int64(7) ?? 0, note: row.string(8) ?? "")
    }
}

extension SourceShare {
    mutating func merge(_ other: SourceShare) {
        reads += other.reads
        bytes += other.bytes
    }
}
