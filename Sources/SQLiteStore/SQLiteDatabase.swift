import CSQLite
import Synchronization

// MARK: - Connection

/// One open sqlite3 connection. Not thread-safe on its own: it is only handed
/// out by `SQLiteDatabase` while its lock is held.
public final class SQLiteConnection {
    let handle: OpaquePointer

    init(handle: OpaquePointer) {
        self.handle = handle
    }

    /// Runs one or more `;`-separated statements that take no parameters.
    public func execute(_ sql: String) throws(SQLiteError) {
        var message: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(handle, sql, nil, nil, &message)
        guard rc == SQLITE_OK else {
            let text = message.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(rc))
            sqlite3_free(message)
            throw SQLiteError(code: sqlite3_extended_errcode(handle), message: "\(text) in \(sql)")
        }
    }

    /// Prepares `sql` for repeated use within this lock hold.
    public func prepare(_ sql: String) throws(SQLiteError) -> SQLiteStatement {
        try SQLiteStatement(db: handle, sql: sql)
    }

    /// Runs one statement with `bindings`; returns the number of rows changed.
    @discardableResult
    public func run(_ sql: String, _ bindings: [any SQLiteBindable] = []) throws(SQLiteError) -> Int {
        try prepare(sql).run(bindings)
    }

    /// Runs one query with `bindings` and copies every row out.
    public func query(_ sql: String, _ bindings: [any SQLiteBindable] = []) throws(SQLiteError) -> [SQLiteRow] {
        try prepare(sql).query(bindings)
    }

    /// The rowid of the most recent successful INSERT on this connection.
    public var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(handle) }

    /// Whether a transaction is open (autocommit is off).
    public var isInTransaction: Bool { sqlite3_get_autocommit(handle) == 0 }

    /// Runs `body` in a transaction: commits when it returns, rolls back when it throws.
    /// `BEGIN IMMEDIATE` takes the write lock up front, so a writer never fails
    /// half-way with SQLITE_BUSY on lock upgrade.
    @discardableResult
    public func transaction<T>(_ body: (SQLiteConnection) throws -> T) throws -> T {
        try execute("BEGIN IMMEDIATE")
        do {
            let result = try body(self)
            try execute("COMMIT")
            return result
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }
}

// MARK: - Migrations

/// One named schema change (STYLE.md §4). Migrations are append-only: a
/// released name is never edited or reordered, a change is a new migration.
public struct Migration: Sendable, Equatable {
    /// Stable name recorded in `schema_migrations`, e.g. `v1-reservations`.
    public var name: String
    /// The SQL that applies it (may hold several statements).
    public var sql: String

    public init(name: String, sql: String) {
        self.name = name
        self.sql = sql
    }
}

// MARK: - Database

/// The project's one way to talk to SQLite: a connection serialised by a
/// mutex, with WAL and synchronous options, busy timeout, typed statements,
/// transactions and named migrations.
public final class SQLiteDatabase: @unchecked Sendable {
    /// How the journal is kept (PRAGMA journal_mode).
    public enum JournalMode: String, Sendable {
        /// Write-ahead log: readers do not block the writer; survives `kill -9`.
        case wal = "WAL"
        /// Rollback journal, deleted after each transaction.
        case delete = "DELETE"
        /// Journal in memory (tests, scratch data).
        case memory = "MEMORY"
    }

    /// How often SQLite fsyncs (PRAGMA synchronous).
    public enum Synchronous: String, Sendable {
        case off = "OFF"
        /// With WAL: durable at checkpoints, never corrupt; the last commits may roll back on power loss.
        case normal = "NORMAL"
        /// Every commit is durable when it returns.
        case full = "FULL"
    }

    /// How to open a database.
    public struct Options: Sendable {
        public var journalMode: JournalMode
        public var synchronous: Synchronous
        /// How long to wait for another connection's lock before SQLITE_BUSY, in milliseconds.
        public var busyTimeoutMilliseconds: Int32
        /// Open read-only (the file must exist).
        public var readOnly: Bool
        /// Enforce foreign keys (PRAGMA foreign_keys).
        public var foreignKeys: Bool

        public init(
            journalMode: JournalMode = .wal, synchronous: Synchronous = .full, busyTimeoutMilliseconds: Int32 = 5000,
            readOnly: Bool = false, foreignKeys: Bool = true
        ) {
            self.journalMode = journalMode
            self.synchronous = synchronous
            self.busyTimeoutMilliseconds = busyTimeoutMilliseconds
            self.readOnly = readOnly
            self.foreignKeys = foreignKeys
        }
    }

    /// The file path, or `:memory:`.
    public let path: String
    private let connection: Mutex<SQLiteConnection>

    /// Opens (creating unless read-only) the database at `path`.
    public init(path: String, options: Options = Options()) throws(SQLiteError) {
        self.path = path
        var handle: OpaquePointer?
        var flags = SQLITE_OPEN_FULLMUTEX | SQLITE_OPEN_URI
        flags |= options.readOnly ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)
        let rc = sqlite3_open_v2(path, &handle, flags, nil)
        guard rc == SQLITE_OK, let handle else {
            let error = SQLiteError.from(handle, code: rc, context: "open \(path)")
            sqlite3_close_v2(handle)
            throw error
        }
        sqlite3_extended_result_codes(handle, 1)
        sqlite3_busy_timeout(handle, options.busyTimeoutMilliseconds)
        let conn = SQLiteConnection(handle: handle)
        do throws(SQLiteError) {
            if !options.readOnly && path != ":memory:" {
                // journal_mode answers with a row, so it goes through a query.
                let mode = try conn.query("PRAGMA journal_mode=\(options.journalMode.rawValue)").first?.string(0)
                let wanted = options.journalMode.rawValue
                if mode?.uppercased() != wanted {
                    let got = mode ?? "nothing"
                    throw SQLiteError(
                        code: SQLITE_ERROR, message: "journal_mode \(wanted) refused (got \(got)) for \(path)")
                }
            }
            try conn.execute("PRAGMA synchronous=\(options.synchronous.rawValue)")
            try conn.execute("PRAGMA foreign_keys=\(options.foreignKeys ? "ON" : "OFF")")
        } catch {
            sqlite3_close_v2(handle)
            throw error
        }
        self.connection = Mutex(conn)
    }

    /// A private in-memory database (tests, scratch indexes).
    public static func inMemory() throws(SQLiteError) -> SQLiteDatabase {
        try SQLiteDatabase(path: ":memory:", options: Options(journalMode: .memory, synchronous: .off))
    }

    deinit {
        connection.withLock { conn in
            _ = sqlite3_close_v2(conn.handle)
        }
    }

    // MARK: - Access

    /// Runs `body` with the connection while holding the database's lock.
    /// Statements prepared inside must not escape it.
    public func withConnection<T: Sendable>(_ body: (SQLiteConnection) throws -> T) throws -> T {
        try connection.withLock { conn in try body(conn) }
    }

    /// Runs one or more `;`-separated statements that take no parameters.
    public func execute(_ sql: String) throws {
        try withConnection { try $0.execute(sql) }
    }

    /// Runs one statement with `bindings`; returns the number of rows changed.
    @discardableResult
    public func run(_ sql: String, _ bindings: [any SQLiteBindable] = []) throws -> Int {
        try withConnection { try $0.run(sql, bindings) }
    }

    /// Runs one query with `bindings` and copies every row out.
    public func query(_ sql: String, _ bindings: [any SQLiteBindable] = []) throws -> [SQLiteRow] {
        try withConnection { try $0.query(sql, bindings) }
    }

    /// Inserts with `bindings` and returns the new rowid, atomically with respect to other callers.
    public func insert(_ sql: String, _ bindings: [any SQLiteBindable] = []) throws -> Int64 {
        try withConnection { conn in
            try conn.run(sql, bindings)
            return conn.lastInsertRowID
        }
    }

    /// Runs `body` in one transaction under the lock: commits when it returns,
    /// rolls back when it throws.
    @discardableResult
    public func transaction<T: Sendable>(_ body: (SQLiteConnection) throws -> T) throws -> T {
        try withConnection { conn in try conn.transaction(body) }
    }

    // MARK: - Migrations

    /// Applies, in order and each in its own transaction, every migration whose
    /// name is not yet in `schema_migrations`. Returns the names applied now.
    @discardableResult
    public func migrate(_ migrations: [Migration]) throws -> [String] {
        var seen = Set<String>()
        for migration in migrations where !seen.insert(migration.name).inserted {
            throw SQLiteError.misuse("migration \(migration.name) listed twice")
        }
        return try withConnection { conn in
            try conn.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    name TEXT PRIMARY KEY NOT NULL,
                    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
                )
                """)
            let done = Set(try conn.query("SELECT name FROM schema_migrations").compactMap { $0.string(0) })
            var applied: [String] = []
            for migration in migrations where !done.contains(migration.name) {
                try conn.transaction { conn in
                    try conn.execute(migration.sql)
                    try conn.run("INSERT INTO schema_migrations (name) VALUES (?)", [migration.name])
                }
                applied.append(migration.name)
            }
            return applied
        }
    }

    /// Names of the migrations applied so far, in the order they were applied.
    public func appliedMigrations() throws -> [String] {
        try query("SELECT name FROM schema_migrations ORDER BY rowid").compactMap { $0.string(0) }
    }

    /// Writes the WAL back into the database file (PRAGMA wal_checkpoint(TRUNCATE)).
    public func checkpoint() throws {
        _ = try query("PRAGMA wal_checkpoint(TRUNCATE)")
    }
}
