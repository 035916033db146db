import CSQLite

/// A failure reported by SQLite: the (extended) result code and SQLite's
/// message (STYLE.md: one error type per module, built by static factories).
public struct SQLiteError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The extended result code (`SQLITE_BUSY`, `SQLITE_CONSTRAINT_UNIQUE`, ...).
    public var code: Int32
    /// SQLite's explanation, plus what we were doing.
    public var message: String

    public init(code: Int32, message: String) {
        self.code = code
        self.message = message
    }

    /// The primary result code (the low byte of an extended code).
    public var primaryCode: Int32 { code & 0xFF }

    /// Whether the database was locked by another connection for longer than the busy timeout.
    public var isBusy: Bool { primaryCode == SQLITE_BUSY || primaryCode == SQLITE_LOCKED }

    /// Whether a UNIQUE, PRIMARY KEY, NOT NULL, CHECK or FOREIGN KEY constraint failed.
    public var isConstraintViolation: Bool { primaryCode == SQLITE_CONSTRAINT }

    public var description: String { "SQLite error \(code): \(message)" }

    /// The error the connection `db` reports for result code `code`, while doing `context`.
    static func from(_ db: OpaquePointer?, code: Int32, context: String) -> SQLiteError {
        var text = String(cString: sqlite3_errstr(code))
        if let db, let message = sqlite3_errmsg(db) {
            text = String(cString: message)
        }
        return SQLiteError(code: code, message: context.isEmpty ? text : "\(context): \(text)")
    }

    /// A misuse of this wrapper (wrong column type, statement used after finalize...).
    static func misuse(_ message: String) -> SQLiteError {
        SQLiteError(code: SQLITE_MISUSE, message: message)
    }
}
