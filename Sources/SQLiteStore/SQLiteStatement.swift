import CSQLite

/// SQLite's SQLITE_TRANSIENT destructor: "copy the bytes now". It is a C macro
/// (`((sqlite3_destructor_type)-1)`) that Swift cannot import.
let sqliteTransient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

/// A prepared statement with typed binding and typed column reading.
///
/// A statement belongs to the connection that prepared it and must only be
/// used inside the `SQLiteDatabase.withConnection` / `transaction` closure
/// that created it: the database's lock is what serialises it.
public final class SQLiteStatement {
    private var handle: OpaquePointer?
    private let db: OpaquePointer
    /// The SQL text, for error messages.
    public let sql: String

    init(db: OpaquePointer, sql: String) throws(SQLiteError) {
        self.db = db
        self.sql = sql
        var statement: OpaquePointer?
        let rc = sqlite3_prepare_v2(db, sql, -1, &statement, nil)
        guard rc == SQLITE_OK, let statement else {
            sqlite3_finalize(statement)
            throw SQLiteError.from(db, code: rc, context: "prepare \(sql)")
        }
        self.handle = statement
    }

    deinit {
        sqlite3_finalize(handle)
    }

    private func statement() throws(SQLiteError) -> OpaquePointer {
        guard let handle else { throw .misuse("statement used after finalize: \(sql)") }
        return handle
    }

    // MARK: - Binding

    /// Number of `?` parameters.
    public var parameterCount: Int {
        guard let handle else { return 0 }
        return Int(sqlite3_bind_parameter_count(handle))
    }

    /// Binds `value` to the 1-based parameter `index`.
    public func bind(_ value: SQLiteValue, at index: Int) throws(SQLiteError) {
        let s = try statement()
        let i = Int32(index)
        let rc: Int32
        switch value {
        case .integer(let v): rc = sqlite3_bind_int64(s, i, v)
        case .real(let v): rc = sqlite3_bind_double(s, i, v)
        case .text(let v): rc = sqlite3_bind_text(s, i, v, -1, sqliteTransient)
        case .blob(let v):
            rc = v.withUnsafeBytes { raw in
                // A zero-length blob still binds as a blob (not NULL).
                guard let base = raw.baseAddress, !v.isEmpty else { return sqlite3_bind_zeroblob(s, i, 0) }
                return sqlite3_bind_blob(s, i, base, Int32(v.count), sqliteTransient)
            }
        case .null: rc = sqlite3_bind_null(s, i)
        }
        guard rc == SQLITE_OK else {
            throw SQLiteError.from(db, code: rc, context: "bind parameter \(index) of \(sql)")
        }
    }

    /// Binds `values` to parameters 1...n, after clearing earlier bindings.
    public func bind(_ values: [any SQLiteBindable]) throws(SQLiteError) {
        let s = try statement()
        sqlite3_clear_bindings(s)
        guard values.count == parameterCount else {
            throw .misuse("\(values.count) values for \(parameterCount) parameters in \(sql)")
        }
        for (offset, value) in values.enumerated() {
            try bind(value.sqliteValue, at: offset + 1)
        }
    }

    /// Binds a value to the named parameter (`:name`, `@name` or `$name`).
    public func bind(_ value: any SQLiteBindable, named name: String) throws(SQLiteError) {
        let s = try statement()
        let index = sqlite3_bind_parameter_index(s, name)
        guard index > 0 else { throw .misuse("no parameter \(name) in \(sql)") }
        try bind(value.sqliteValue, at: Int(index))
    }

    // MARK: - Stepping

    /// Advances to the next row; false when the statement is done.
    @discardableResult
    public func step() throws(SQLiteError) -> Bool {
        let s = try statement()
        let rc = sqlite3_step(s)
        switch rc {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default:
            sqlite3_reset(s)
            throw SQLiteError.from(db, code: rc, context: "step \(sql)")
        }
    }

    /// Rewinds the statement so it can run again; bindings stay.
    public func reset() {
        if let handle { sqlite3_reset(handle) }
    }

    /// Runs the statement to completion with `values` bound; returns the number of rows changed.
    @discardableResult
    public func run(_ values: [any SQLiteBindable] = []) throws(SQLiteError) -> Int {
        reset()
        try bind(values)
        defer { reset() }
        while try step() {}
        return Int(sqlite3_changes(db))
    }

    /// Runs the statement with `values` bound and copies every row out.
    public func query(_ values: [any SQLiteBindable] = []) throws(SQLiteError) -> [SQLiteRow] {
        reset()
        try bind(values)
        defer { reset() }
        var rows: [SQLiteRow] = []
        let names = columnNames
        while try step() {
            rows.append(SQLiteRow(columns: names, values: (0..<columnCount).map { value(at: $0) }))
        }
        return rows
    }

    // MARK: - Reading the current row

    /// Number of result columns.
    public var columnCount: Int {
        guard let handle else { return 0 }
        return Int(sqlite3_column_count(handle))
    }

    /// Result column names.
    public var columnNames: [String] {
        guard let handle else { return [] }
        return (0..<sqlite3_column_count(handle)).map { i in
            sqlite3_column_name(handle, i).map { String(cString: $0) } ?? ""
        }
    }

    /// The current row's value in column `index` (0-based), with its storage class.
    public func value(at index: Int) -> SQLiteValue {
        guard let s = handle else { return .null }
        let i = Int32(index)
        switch sqlite3_column_type(s, i) {
        case SQLITE_INTEGER: return .integer(sqlite3_column_int64(s, i))
        case SQLITE_FLOAT: return .real(sqlite3_column_double(s, i))
        case SQLITE_TEXT:
            guard let text = sqlite3_column_text(s, i) else { return .text("") }
            return .text(String(cString: text))
        case SQLITE_BLOB:
            let count = Int(sqlite3_column_bytes(s, i))
            guard count > 0, let bytes = sqlite3_column_blob(s, i) else { return .blob([]) }
            return .blob(Array(UnsafeRawBufferPointer(start: bytes, count: count)))
        default: return .null
        }
    }

    /// Column `index` as an integer; throws if it holds another type.
    public func int64(at index: Int) throws(SQLiteError) -> Int64 {
        guard let v = value(at: index).int64Value else { throw .misuse("column \(index) is not an integer in \(sql)") }
        return v
    }

    /// Column `index` as a double (integers convert); throws otherwise.
    public func double(at index: Int) throws(SQLiteError) -> Double {
        guard let v = value(at: index).doubleValue else { throw .misuse("column \(index) is not a number in \(sql)") }
        return v
    }

    /// Column `index` as text; throws if it holds another type.
    public func string(at index: Int) throws(SQLiteError) -> String {
        guard let v = value(at: index).stringValue else { throw .misuse("column \(index) is not text in \(sql)") }
        return v
    }

    /// Column `index` as bytes (text gives its UTF-8); throws otherwise.
    public func blob(at index: Int) throws(SQLiteError) -> [UInt8] {
        guard let v = value(at: index).blobValue else { throw .misuse("column \(index) is not a blob in \(sql)") }
        return v
    }

    /// Whether column `index` is NULL.
    public func isNull(at index: Int) -> Bool { value(at: index).isNull }

    /// Releases the statement now rather than at deinit.
    public func finalize() {
        sqlite3_finalize(handle)
        handle = nil
    }
}
