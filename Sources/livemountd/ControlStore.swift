import Foundation
import SQLiteStore
import TargetServer

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// What the control API changed in the daemon's targets, kept in `control.sqlite` in the state directory so a
/// restart serves the same: targets created through the API (with their alias, ACL and CHAP), ACL and CHAP
/// changes made to targets of the configuration file, and raw LUNs added through the API. Live mounts are kept
/// by the mount registry, not here. The file holds CHAP secrets: it is created mode 0600 (SQLite gives its
/// journal files the same mode). All its SQL is in this type.
final class ControlStore: Sendable {
    /// A target's row: a target the API created, or the API's changes to a configuration target.
    struct TargetRecord: Sendable, Equatable {
        var name: String
        /// Created by `POST /v1/targets` (else a configuration target whose ACL or CHAP the API changed).
        var createdByAPI: Bool
        var alias: String?
        /// The ACL the API set; nil = the configuration's (only for configuration targets).
        var allowedInitiators: [String]?
        /// The CHAP the API set; nil = the configuration's (only for configuration targets).
        var chap: CHAPSetting?
    }

    /// One-way and mutual CHAP as the API set them (both nil: CHAP cleared).
    struct CHAPSetting: Sendable, Equatable {
        var chap: CHAPCredentials?
        var mutualChap: CHAPCredentials?
    }

    /// A raw LUN added through the API.
    struct LUNRecord: Sendable, Equatable {
        var target: String
        var lun: UInt64
        var path: String
        var readOnly: Bool
        var blockSize: Int
        var direct: Bool
    }

    /// Why the store failed.
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private let database: SQLiteDatabase
    var path: String { database.path }

    static let migrations = [
        Migration(
            name: "v1-control-targets-luns",
            sql: """
                CREATE TABLE targets (
                    name TEXT PRIMARY KEY NOT NULL,
                    created_by_api INTEGER NOT NULL,
                    alias TEXT,
                    acl_set INTEGER NOT NULL,
                    allowed_initiators TEXT NOT NULL,
                    chap_set INTEGER NOT NULL,
                    chap_user TEXT,
                    chap_secret TEXT,
                    mutual_user TEXT,
                    mutual_secret TEXT
                );
                CREATE TABLE luns (
                    target TEXT NOT NULL,
                    lun INTEGER NOT NULL,
                    path TEXT NOT NULL,
                    read_only INTEGER NOT NULL,
                    block_size INTEGER NOT NULL,
                    direct INTEGER NOT NULL,
                    PRIMARY KEY (target, lun)
                );
                """)
    ]

    /// Opens (creating, mode 0600) the store at `path`. An existing file with a wider mode is narrowed to 0600.
    init(path: String) throws(Failure) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw Failure(description: "cannot create \(path): \(String(cString: strerror(errno)))")
        }
        let narrowed = fchmod(fd, 0o600)
        close(fd)
        guard narrowed == 0 else {
            throw Failure(description: "cannot make \(path) mode 0600: \(String(cString: strerror(errno)))")
        }
        do {
            database = try SQLiteDatabase(path: path, options: .init(journalMode: .wal, synchronous: .full))
            _ = try database.migrate(Self.migrations)
        } catch {
            throw Failure(description: "cannot open the control store \(path): \(error)")
        }
    }

    // MARK: - Targets

    /// Every target row, by name.
    func targets() throws(Failure) -> [TargetRecord] {
        let rows = try attempt {
            try database.query(
                """
                SELECT name, created_by_api, alias, acl_set, allowed_initiators, chap_set, chap_user, chap_secret,
                    mutual_user, mutual_secret
                FROM targets ORDER BY name
                """)
        }
        return rows.compactMap { row in
            guard let name = row.string(0) else { return nil }
            let initiators = (row.string(4) ?? "").split(separator: "\n").map(String.init)
            let credentials = { (user: Int, secret: Int) -> CHAPCredentials? in
                guard let u = row.string(user), let s = row.string(secret) else { return nil }
                return CHAPCredentials(user: u, secret: s)
            }
            return TargetRecord(
                name: name, createdByAPI: row.int64(1) == 1, alias: row.string(2),
                allowedInitiators: row.int64(3) == 1 ? initiators : nil,
                chap: row.int64(5) == 1
                    ? CHAPSetting(chap: credentials(6, 7), mutualChap: credentials(8, 9)) : nil)
        }
    }

    /// The row of target `name`, nil when there is none.
    func target(named name: String) throws(Failure) -> TargetRecord? {
        try targets().first { $0.name == name }
    }

    /// Writes a target's row (replacing any).
    func save(_ record: TargetRecord) throws(Failure) {
        // iSCSI names cannot hold a newline (RFC 7143 §4.2.7), so the ACL is one name per line.
        let initiators = (record.allowedInitiators ?? []).joined(separator: "\n")
        _ = try attempt {
            try database.run(
                """
                INSERT OR REPLACE INTO targets (name, created_by_api, alias, acl_set, allowed_initiators, chap_set,
                    chap_user, chap_secret, mutual_user, mutual_secret)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                [
                    record.name, record.createdByAPI, record.alias, record.allowedInitiators != nil, initiators,
                    record.chap != nil, record.chap?.chap?.user, record.chap?.chap?.secret,
                    record.chap?.mutualChap?.user, record.chap?.mutualChap?.secret,
                ])
        }
    }

    /// Forgets target `name` and every raw LUN recorded for it, in one transaction.
    func deleteTarget(named name: String) throws(Failure) {
        _ = try attempt {
            try database.transaction { connection in
                try connection.run("DELETE FROM luns WHERE target = ?", [name])
                try connection.run("DELETE FROM targets WHERE name = ?", [name])
            }
        }
    }

    // MARK: - Raw LUNs

    /// Every raw LUN row, by target and LUN.
    func luns() throws(Failure) -> [LUNRecord] {
        let rows = try attempt {
            try database.query(
                "SELECT target, lun, path, read_only, block_size, direct FROM luns ORDER BY target, lun")
        }
        return rows.compactMap { row in
            guard let target = row.string(0), let lun = row.int64(1), lun >= 0, let path = row.string(2),
                let blockSize = row.int64(4)
            else { return nil }
            return LUNRecord(
                target: target, lun: UInt64(lun), path: path, readOnly: row.int64(3) == 1, blockSize: Int(blockSize),
                direct: row.int64(5) == 1)
        }
    }

    /// The raw LUN row of `lun` of `target`, nil when there is none.
    func lun(target: String, lun: UInt64) throws(Failure) -> LUNRecord? {
        try luns().first { $0.target == target && $0.lun == lun }
    }

    /// Writes a raw LUN's row (replacing any, such as one whose file was missing at the last start).
    func save(_ record: LUNRecord) throws(Failure) {
        _ = try attempt {
            try database.run(
                """
                INSERT OR REPLACE INTO luns (target, lun, path, read_only, block_size, direct)
                VALUES (?, ?, ?, ?, ?, ?)
                """,
                [record.target, Int64(record.lun), record.path, record.readOnly, record.blockSize, record.direct])
        }
    }

    /// Forgets a raw LUN.
    func deleteLUN(target: String, lun: UInt64) throws(Failure) {
        _ = try attempt { try database.run("DELETE FROM luns WHERE target = ? AND lun = ?", [target, Int64(lun)]) }
    }

    private func attempt<T>(_ body: () throws -> T) throws(Failure) -> T {
        do {
            return try body()
        } catch {
            throw Failure(description: "control store \(database.path): \(error)")
        }
    }
}
