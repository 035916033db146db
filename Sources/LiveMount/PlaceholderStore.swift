import Foundation
import SQLiteStore

/// One archived LUN as the daemon remembers it across restarts (`placeholders.sqlite` beside the mount
/// registry; WAL, synchronous=FULL).
public struct PlaceholderRecord: Sendable, Equatable {
    /// `archived`: only the backup holds the data. `recalling`: served as live mount `mountID` while it is
    /// relocated back to `path`; the record goes once that relocation has completed.
    public enum State: String, Sendable {
        case archived
        case recalling
    }

    public var target: String
    public var lun: UInt64
    /// The primary storage it was archived from and is recalled to: a file or a block device.
    public var path: String
    public var blockSize: Int
    public var blockCount: UInt64
    public var readOnly: Bool
    public var supportsUnmap: Bool
    /// Whether the image was opened with O_DIRECT (not on tmpfs, say): how it is reopened after its recall.
    public var direct: Bool = true
    /// VPD 80h and 83h, so a placeholder that is not in the configuration comes back with the same identity.
    public var serialNumber: String
    public var naaIdentifier: UInt64
    public var product: String
    /// The backup that holds the data.
    public var backupID: Int64
    public var vm: String
    public var disk: String
    public var state: State
    /// The live mount of a recall.
    public var mountID: Int64?
    /// Seconds since 1970.
    public var archivedAt: Int64

    public init(
        target: String, lun: UInt64, path: String, blockSize: Int, blockCount: UInt64, readOnly: Bool,
        supportsUnmap: Bool, serialNumber: String, naaIdentifier: UInt64, product: String, backupID: Int64, vm: String,
        disk: String, state: State = .archived, mountID: Int64? = nil,
        archivedAt: Int64 = Int64(Date().timeIntervalSince1970)
    ) {
        self.target = target
        self.lun = lun
        self.path = path
        self.blockSize = blockSize
        self.blockCount = blockCount
        self.readOnly = readOnly
        self.supportsUnmap = supportsUnmap
        self.serialNumber = serialNumber
        self.naaIdentifier = naaIdentifier
        self.product = product
        self.backupID = backupID
        self.vm = vm
        self.disk = disk
        self.state = state
        self.mountID = mountID
        self.archivedAt = archivedAt
    }

    /// The LUN's size in bytes.
    public var capacity: UInt64 { blockCount * UInt64(blockSize) }
}

/// Why the placeholder store failed.
public struct PlaceholderStoreError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Archived LUNs and their recalls, one row per (target, LUN).
public final class PlaceholderStore: Sendable {
    private let database: SQLiteDatabase

    static let migrations = [
        Migration(
            name: "v1-placeholders",
            sql: """
                CREATE TABLE placeholders (
                    target TEXT NOT NULL,
                    lun INTEGER NOT NULL,
                    path TEXT NOT NULL,
                    block_size INTEGER NOT NULL,
                    block_count INTEGER NOT NULL,
                    read_only INTEGER NOT NULL,
                    supports_unmap INTEGER NOT NULL,
                    serial TEXT NOT NULL,
                    naa INTEGER NOT NULL,
                    product TEXT NOT NULL,
                    backup_id INTEGER NOT NULL,
                    vm TEXT NOT NULL,
                    disk TEXT NOT NULL,
                    state TEXT NOT NULL,
                    mount_id INTEGER,
                    archived_at INTEGER NOT NULL,
                    PRIMARY KEY (target, lun)
                );
                """),
        Migration(name: "v2-direct", sql: "ALTER TABLE placeholders ADD COLUMN direct INTEGER NOT NULL DEFAULT 1;"),
    ]

    public init(path: String) throws(PlaceholderStoreError) {
        do {
            database = try SQLiteDatabase(path: path, options: .init(journalMode: .wal, synchronous: .full))
            _ = try database.migrate(Self.migrations)
        } catch {
            throw PlaceholderStoreError("cannot open the placeholder store \(path): \(error)")
        }
    }

    public func records() throws(PlaceholderStoreError) -> [PlaceholderRecord] {
        try select("SELECT * FROM placeholders ORDER BY target, lun", [])
    }

    public func record(target: String, lun: UInt64) throws(PlaceholderStoreError) -> PlaceholderRecord? {
        try select("SELECT * FROM placeholders WHERE target = ? AND lun = ?", [target, Int64(lun)]).first
    }

    /// Records a new placeholder (there must be none for the LUN).
    public func insert(_ r: PlaceholderRecord) throws(PlaceholderStoreError) {
        do {
            _ = try database.run(
                """
                INSERT INTO placeholders (target, lun, path, block_size, block_count, read_only, supports_unmap, serial,
                    naa, product, backup_id, vm, disk, state, mount_id, archived_at, direct)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                [
                    r.target, Int64(r.lun), r.path, Int64(r.blockSize), Int64(r.blockCount), r.readOnly,
                    r.supportsUnmap, r.serialNumber, Int64(bitPattern: r.naaIdentifier), r.product, r.backupID, r.vm,
                    r.disk, r.state.rawValue, r.mountID, r.archivedAt, r.direct,
                ])
        } catch {
            throw PlaceholderStoreError("cannot record the placeholder of LUN \(r.lun) of \(r.target): \(error)")
        }
    }

    /// The LUN is being recalled as live mount `mountID`.
    public func setRecalling(target: String, lun: UInt64, mountID: Int64) throws(PlaceholderStoreError) {
        do {
            _ = try database.run(
                "UPDATE placeholders SET state = 'recalling', mount_id = ? WHERE target = ? AND lun = ?",
                [mountID, target, Int64(lun)])
        } catch {
            throw PlaceholderStoreError("cannot update the placeholder of LUN \(lun) of \(target): \(error)")
        }
    }

    public func delete(target: String, lun: UInt64) throws(PlaceholderStoreError) {
        do {
            _ = try database.run("DELETE FROM placeholders WHERE target = ? AND lun = ?", [target, Int64(lun)])
        } catch {
            throw PlaceholderStoreError("cannot remove the placeholder of LUN \(lun) of \(target): \(error)")
        }
    }

    private func select(_ sql: String, _ bindings: [any SQLiteBindable]) throws(PlaceholderStoreError)
        -> [PlaceholderRecord]
    {
        let rows: [SQLiteRow]
        do {
            rows = try database.query(sql, bindings)
        } catch {
            throw PlaceholderStoreError("cannot read the placeholder store: \(error)")
        }
        return rows.compactMap { row in
            guard let target = row.string("target"), let lun = row.int64("lun"), let path = row.string("path"),
                let blockSize = row.int64("block_size"), let blockCount = row.int64("block_count"),
                let readOnly = row.int64("read_only"), let unmap = row.int64("supports_unmap"),
                let serial = row.string("serial"), let naa = row.int64("naa"), let product = row.string("product"),
                let backupID = row.int64("backup_id"), let vm = row.string("vm"), let disk = row.string("disk"),
                let state = row.string("state").flatMap(PlaceholderRecord.State.init(rawValue:)),
                let archivedAt = row.int64("archived_at")
            else { return nil }
            var record = PlaceholderRecord(
                target: target, lun: UInt64(lun), path: path, blockSize: Int(blockSize), blockCount: UInt64(blockCount),
                readOnly: readOnly != 0, supportsUnmap: unmap != 0, serialNumber: serial,
                naaIdentifier: UInt64(bitPattern: naa), product: product, backupID: backupID, vm: vm, disk: disk,
                state: state, mountID: row.int64("mount_id"), archivedAt: archivedAt)
            record.direct = (row.int64("direct") ?? 1) != 0
            return record
        }
    }
}
