import Foundation
import Testing

@testable import SQLiteStore

/// A fresh directory under the system temporary directory, removed by the caller.
func makeTemporaryDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "sqlitestore-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

@Suite("SQLiteDatabase")
struct SQLiteDatabaseTests {
    @Test("binds and reads back every storage class")
    func typedRoundTrip() throws {
        let db = try SQLiteDatabase.inMemory()
        try db.execute("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n TEXT)")
        let nothing: String? = nil
        try db.run(
            "INSERT INTO t VALUES (?, ?, ?, ?, ?)",
            [Int64.min, 2.5, "héllo", [UInt8]([0, 1, 255]), nothing])
        let rows = try db.query("SELECT i, r, s, b, n FROM t")
        #expect(rows.count == 1)
        let row = try #require(rows.first)
        #expect(row.int64(0) == Int64.min)
        #expect(row.double("r") == 2.5)
        #expect(row.string("s") == "héllo")
        #expect(row.blob("b") == [0, 1, 255])
        #expect(row["n"] == .null)
    }

    @Test("an empty blob stays a blob, not NULL")
    func emptyBlob() throws {
        let db = try SQLiteDatabase.inMemory()
        try db.execute("CREATE TABLE t (b BLOB)")
        try db.run("INSERT INTO t VALUES (?)", [[UInt8]()])
        let row = try #require(try db.query("SELECT b, typeof(b) FROM t").first)
        #expect(row[0] == .blob([]))
        #expect(row.string(1) == "blob")
    }

    @Test("prepared statements run repeatedly and read typed columns")
    func preparedStatement() throws {
        let db = try SQLiteDatabase.inMemory()
        try db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        let total: Int64 = try db.withConnection { conn in
            let insert = try conn.prepare("INSERT INTO kv VALUES (?, ?)")
            for i in 0..<10 {
                try insert.run(["key\(i)", Int64(i * i)])
            }
            let select = try conn.prepare("SELECT v FROM kv WHERE k = :k")
            try select.bind("key7", named: ":k")
            #expect(try select.step())
            let v = try select.int64(at: 0)
            #expect(throws: SQLiteError.self) { try select.string(at: 0) }
            #expect(try select.step() == false)
            return v
        }
        #expect(total == 49)
        #expect(try db.query("SELECT count(*) FROM kv").first?.int64(0) == 10)
    }

    @Test("binding the wrong number of values is an error")
    func wrongBindingCount() throws {
        let db = try SQLiteDatabase.inMemory()
        try db.execute("CREATE TABLE t (a, b)")
        #expect(throws: SQLiteError.self) { try db.run("INSERT INTO t VALUES (?, ?)", [1]) }
    }

    @Test("SQL errors carry SQLite's code and message")
    func errors() throws {
        let db = try SQLiteDatabase.inMemory()
        do {
            try db.execute("SELEKT 1")
            Issue.record("expected an error")
        } catch let error as SQLiteError {
            #expect(error.primaryCode == 1)  // SQLITE_ERROR
            #expect(error.message.contains("syntax"))
        }
        try db.execute("CREATE TABLE u (k TEXT PRIMARY KEY)")
        try db.run("INSERT INTO u VALUES ('a')")
        do {
            try db.run("INSERT INTO u VALUES ('a')")
            Issue.record("expected a constraint error")
        } catch let error as SQLiteError {
            #expect(error.isConstraintViolation)
        }
    }

    @Test("a transaction commits when its body returns and rolls back when it throws")
    func transactions() throws {
        struct Boom: Error {}
        let db = try SQLiteDatabase.inMemory()
        try db.execute("CREATE TABLE t (v INTEGER)")
        try db.transaction { conn in
            try conn.run("INSERT INTO t VALUES (1)")
            try conn.run("INSERT INTO t VALUES (2)")
        }
        #expect(throws: Boom.self) {
            try db.transaction { conn in
                try conn.run("INSERT INTO t VALUES (3)")
                throw Boom()
            }
        }
        #expect(try db.query("SELECT v FROM t ORDER BY v").compactMap { $0.int64(0) } == [1, 2])
        #expect(try db.withConnection { $0.isInTransaction } == false)
    }

    @Test("migrations apply once, in order, and are recorded by name")
    func migrations() throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/m.sqlite"
        let v1 = Migration(name: "v1-items", sql: "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        let v2 = Migration(name: "v2-items-size", sql: "ALTER TABLE items ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
        do {
            let db = try SQLiteDatabase(path: path)
            #expect(try db.migrate([v1]) == ["v1-items"])
            try db.run("INSERT INTO items (name) VALUES ('a')")
        }
        let db = try SQLiteDatabase(path: path)
        #expect(try db.migrate([v1, v2]) == ["v2-items-size"])
        #expect(try db.migrate([v1, v2]) == [])
        #expect(try db.appliedMigrations() == ["v1-items", "v2-items-size"])
        #expect(try db.query("SELECT name, size FROM items").first?.int64("size") == 0)
    }

    @Test("a failing migration leaves no trace and is retried next time")
    func failingMigration() throws {
        let db = try SQLiteDatabase.inMemory()
        let bad = Migration(name: "v1-bad", sql: "CREATE TABLE a (x); CREATE TABLE a (y)")
        #expect(throws: SQLiteError.self) { try db.migrate([bad]) }
        #expect(try db.appliedMigrations() == [])
        #expect(try db.query("SELECT name FROM sqlite_master WHERE name = 'a'").isEmpty)
        #expect(throws: SQLiteError.self) {
            try db.migrate([Migration(name: "x", sql: "SELECT 1"), Migration(name: "x", sql: "SELECT 2")])
        }
    }

    @Test("file databases use WAL and keep data across reopen")
    func walAndReopen() throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/w.sqlite"
        do {
            let db = try SQLiteDatabase(path: path, options: .init(journalMode: .wal, synchronous: .normal))
            #expect(try db.query("PRAGMA journal_mode").first?.string(0)?.lowercased() == "wal")
            #expect(try db.query("PRAGMA synchronous").first?.int64(0) == 1)
            try db.execute("CREATE TABLE t (v TEXT)")
            let id = try db.insert("INSERT INTO t VALUES (?)", ["kept"])
            #expect(id == 1)
            try db.checkpoint()
        }
        let reopened = try SQLiteDatabase(path: path, options: .init(synchronous: .full))
        #expect(try reopened.query("PRAGMA synchronous").first?.int64(0) == 2)
        #expect(try reopened.query("SELECT v FROM t").first?.string(0) == "kept")
        let readOnly = try SQLiteDatabase(path: path, options: .init(readOnly: true))
        #expect(throws: SQLiteError.self) { try readOnly.run("INSERT INTO t VALUES ('no')") }
    }

    @Test("opening a database in a missing directory fails with an error")
    func openFailure() throws {
        #expect(throws: SQLiteError.self) {
            _ = try SQLiteDatabase(path: "/nonexistent-dir-\(UUID().uuidString)/x.sqlite")
        }
    }

    @Test("concurrent writers from many tasks are serialised")
    func concurrency() async throws {
        let db = try SQLiteDatabase.inMemory()
        try db.execute("CREATE TABLE t (v INTEGER)")
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<8 {
                group.addTask {
                    for j in 0..<50 {
                        try db.transaction { conn in try conn.run("INSERT INTO t VALUES (?)", [i * 100 + j]) }
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(try db.query("SELECT count(*) FROM t").first?.int64(0) == 400)
    }
}
