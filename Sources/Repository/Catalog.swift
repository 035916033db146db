import Foundation
import SQLiteStore

/// The repository's SQLite catalog: backups, their configuration files, disks, per-disk chunk index,
/// chunks and holds. All of the repository's SQL lives here, behind typed methods (STYLE.md §4).
final class Catalog: Sendable {
    let database: SQLiteDatabase

    /// Append-only, named migrations (STYLE.md §4): never edit a released one, add a new one.
    static let migrations: [Migration] = [
        Migration(
            name: "v1-catalog",
            sql: """
                CREATE TABLE backups (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    vm TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    configuration_name TEXT NOT NULL,
                    configuration BLOB NOT NULL
                );
                CREATE INDEX backups_by_vm ON backups (vm, created_at);
                CREATE TABLE disks (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    backup_id INTEGER NOT NULL REFERENCES backups (id) ON DELETE CASCADE,
                    position INTEGER NOT NULL,
                    name TEXT NOT NULL,
                    size INTEGER NOT NULL,
                    chunk_size INTEGER NOT NULL,
                    chunk_count INTEGER NOT NULL,
                    zero_chunks INTEGER NOT NULL,
                    stored_bytes INTEGER NOT NULL,
                    UNIQUE (backup_id, name)
                );
                CREATE TABLE disk_chunks (
                    disk_id INTEGER NOT NULL REFERENCES disks (id) ON DELETE CASCADE,
                    chunk_index INTEGER NOT NULL,
                    chunk_id BLOB,
                    PRIMARY KEY (disk_id, chunk_index)
                ) WITHOUT ROWID;
                CREATE INDEX disk_chunks_by_chunk ON disk_chunks (chunk_id);
                CREATE TABLE chunks (
                    id BLOB PRIMARY KEY NOT NULL,
                    stored_size INTEGER NOT NULL,
                    plain_size INTEGER NOT NULL
                ) WITHOUT ROWID;
                CREATE TABLE holds (
                    backup_id INTEGER NOT NULL REFERENCES backups (id) ON DELETE CASCADE,
                    holder TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    PRIMARY KEY (backup_id, holder)
                );
                """)
    ]

    /// Opens (creating) the catalog at `path` in WAL mode, synchronous FULL (a published backup is durable
    /// when the transaction returns), and applies pending migrations.
    init(path: String) throws(RepositoryError) {
        do {
            database = try SQLiteDatabase(path: path, options: .init(journalMode: .wal, synchronous: .full))
            try database.migrate(Self.migrations)
        } catch {
            throw RepositoryError.catalog(error, "open \(path)")
        }
    }

    // MARK: - Publishing

    /// One disk of a backup being published.
    struct NewDisk: Sendable {
        var manifest: DiskManifest
        var storedBytes: UInt64
    }

    /// A chunk file written by the ingest being published.
    struct NewChunk: Sendable {
        var id: ChunkID
        var storedSize: Int
        var plainSize: Int
    }

    /// Publishes a backup in one transaction: the backup, its configuration, disks, chunk index and new chunks.
    /// Either all of it is visible afterwards or none.
    func insertBackup(
        vm: String, createdAt: Int64, configurationName: String, configuration: [UInt8], disks: [NewDisk],
        newChunks: [NewChunk]
    ) throws(RepositoryError) -> Int64 {
        do {
            return try database.transaction { connection in
                try connection.run(
                    "INSERT INTO backups (vm, created_at, configuration_name, configuration) VALUES (?, ?, ?, ?)",
                    [vm, createdAt, configurationName, configuration])
                let backupID = connection.lastInsertRowID
                let chunkInsert = try connection.prepare(
                    "INSERT OR IGNORE INTO chunks (id, stored_size, plain_size) VALUES (?, ?, ?)")
                for chunk in newChunks {
                    try chunkInsert.run([chunk.id.bytes, chunk.storedSize, chunk.plainSize])
                }
                let indexInsert = try connection.prepare(
                    "INSERT INTO disk_chunks (disk_id, chunk_index, chunk_id) VALUES (?, ?, ?)")
                for (position, disk) in disks.enumerated() {
                    let manifest = disk.manifest
                    try connection.run(
                        """
                        INSERT INTO disks (backup_id, position, name, size, chunk_size, chunk_count, zero_chunks,
                            stored_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                        [
                            backupID, position, manifest.name, Int64(manifest.size), manifest.chunkSize,
                            manifest.chunkCount, manifest.zeroChunkCount, Int64(disk.storedBytes),
                        ])
                    let diskID = connection.lastInsertRowID
                    for index in 0..<manifest.chunkCount {
                        try indexInsert.run([diskID, index, manifest.chunk(at: index)?.bytes])
                    }
                }
                return backupID
            }
        } catch {
            throw RepositoryError.catalog(error, "publish backup of VM \(vm)")
        }
    }

    /// Whether the catalog lists chunk `id` (its file was made durable when its backup was published).
    func hasChunk(_ id: ChunkID) throws(RepositoryError) -> Bool {
        do {
            return try !database.query("SELECT 1 FROM chunks WHERE id = ?", [id.bytes]).isEmpty
        } catch {
            throw RepositoryError.catalog(error, "look up chunk \(id.hex)")
        }
    }

    // MARK: - Backups

    private static let backupColumns = "id, vm, created_at, configuration_name, length(configuration)"

    /// Backups, newest first, optionally of one VM only.
    func listBackups(vm: String?) throws(RepositoryError) -> [BackupInfo] {
        do {
            let rows: [SQLiteRow]
            if let vm {
                rows = try database.query(
                    "SELECT \(Self.backupColumns) FROM backups WHERE vm = ? ORDER BY created_at DESC, id DESC", [vm])
            } else {
                rows = try database.query("SELECT \(Self.backupColumns) FROM backups ORDER BY created_at DESC, id DESC")
            }
            return try rows.map { row throws(RepositoryError) in try backupInfo(row) }
        } catch {
            throw RepositoryError.catalog(error, "list backups")
        }
    }

    /// One backup, or nil when there is no backup `id`.
    func backup(id: Int64) throws(RepositoryError) -> BackupInfo? {
        do {
            guard let row = try database.query("SELECT \(Self.backupColumns) FROM backups WHERE id = ?", [id]).first
            else { return nil }
            return try backupInfo(row)
        } catch {
            throw RepositoryError.catalog(error, "read backup \(id)")
        }
    }

    private func backupInfo(_ row: SQLiteRow) throws(RepositoryError) -> BackupInfo {
        guard let id = row.int64(0), let vm = row.string(1), let created = row.int64(2),
            let configurationName = row.string(3), let configurationSize = row.int64(4)
        else { throw RepositoryError(.catalog, "catalog: malformed backups row") }
        let diskRows: [SQLiteRow]
        do {
            diskRows = try database.query(
                """
                SELECT name, size, chunk_size, chunk_count, zero_chunks, stored_bytes FROM disks
                WHERE backup_id = ? ORDER BY position
                """, [id])
        } catch {
            throw RepositoryError.catalog(error, "read disks of backup \(id)")
        }
        var disks: [DiskInfo] = []
        for disk in diskRows {
            guard let name = disk.string(0), let size = disk.int64(1), let chunkSize = disk.int64(2),
                let chunkCount = disk.int64(3), let zeroChunks = disk.int64(4), let stored = disk.int64(5)
            else { throw RepositoryError(.catalog, "catalog: malformed disks row of backup \(id)") }
            disks.append(
                DiskInfo(
                    name: name, size: UInt64(size), chunkSize: Int(chunkSize), chunkCount: Int(chunkCount),
                    zeroChunks: Int(zeroChunks), storedBytes: UInt64(stored)))
        }
        return BackupInfo(
            id: id, vm: vm, createdAt: Date(timeIntervalSince1970: TimeInterval(created)),
            configurationName: configurationName, configurationSize: Int(configurationSize), disks: disks)
    }

    /// The configuration file of backup `id`, or nil when there is no such backup.
    func configuration(backupID: Int64) throws(RepositoryError) -> (name: String, bytes: [UInt8])? {
        do {
            guard
                let row = try database.query(
                    "SELECT configuration_name, configuration FROM backups WHERE id = ?", [backupID]
                ).first
            else { return nil }
            return (row.string(0) ?? "", row.blob(1) ?? [])
        } catch {
            throw RepositoryError.catalog(error, "read configuration of backup \(backupID)")
        }
    }

    /// The chunk index of disk `name` of backup `backupID`, read row by row into a compact manifest.
    func manifest(backupID: Int64, diskName: String) throws(RepositoryError) -> DiskManifest? {
        do {
            return try database.withConnection { connection -> DiskManifest? in
                guard
                    let row = try connection.query(
                        "SELECT id, size, chunk_size FROM disks WHERE backup_id = ? AND name = ?", [backupID, diskName]
                    ).first,
                    let diskID = row.int64(0), let size = row.int64(1), let chunkSize = row.int64(2), chunkSize > 0
                else { return nil }
                var manifest = DiskManifest(name: diskName, size: UInt64(size), chunkSize: Int(chunkSize))
                let statement = try connection.prepare(
                    "SELECT chunk_index, chunk_id FROM disk_chunks WHERE disk_id = ? AND chunk_id IS NOT NULL")
                try statement.bind([diskID])
                defer { statement.reset() }
                while try statement.step() {
                    let index = Int(try statement.int64(at: 0))
                    let id = ChunkID(digest: try statement.blob(at: 1))
                    guard let id, index >= 0, index < manifest.chunkCount else {
                        throw RepositoryError(
                            .catalog, "catalog: bad chunk index row \(index) of disk \(diskName) of backup \(backupID)")
                    }
                    manifest.setChunk(id, at: index)
                }
                return manifest
            }
        } catch {
            throw RepositoryError.catalog(error, "read chunk index of disk \(diskName) of backup \(backupID)")
        }
    }

    /// Deletes backup `id` with its disks, chunk index and holds (the chunk files stay until gc).
    func deleteBackup(id: Int64) throws(RepositoryError) {
        do {
            try database.run("DELETE FROM backups WHERE id = ?", [id])
        } catch {
            throw RepositoryError.catalog(error, "delete backup \(id)")
        }
    }

    // MARK: - Holds

    func addHold(backupID: Int64, holder: String) throws(RepositoryError) {
        do {
            try database.run(
                "INSERT OR IGNORE INTO holds (backup_id, holder, created_at) VALUES (?, ?, ?)",
                [backupID, holder, Int64(Date().timeIntervalSince1970)])
        } catch {
            throw RepositoryError.catalog(error, "hold backup \(backupID) for \(holder)")
        }
    }

    func removeHold(backupID: Int64, holder: String) throws(RepositoryError) {
        do {
            try database.run("DELETE FROM holds WHERE backup_id = ? AND holder = ?", [backupID, holder])
        } catch {
            throw RepositoryError.catalog(error, "release backup \(backupID) for \(holder)")
        }
    }

    func holds(backupID: Int64) throws(RepositoryError) -> [String] {
        do {
            return try database.query("SELECT holder FROM holds WHERE backup_id = ? ORDER BY holder", [backupID])
                .compactMap { $0.string(0) }
        } catch {
            throw RepositoryError.catalog(error, "list holds of backup \(backupID)")
        }
    }

    // MARK: - Garbage collection

    /// Removes catalog rows of chunks no disk references any more; returns how many.
    func forgetUnreferencedChunks() throws(RepositoryError) -> Int {
        do {
            return try database.run(
                "DELETE FROM chunks WHERE NOT EXISTS (SELECT 1 FROM disk_chunks WHERE disk_chunks.chunk_id = chunks.id)"
            )
        } catch {
            throw RepositoryError.catalog(error, "forget unreferenced chunks")
        }
    }

    /// Every chunk the catalog lists (after `forgetUnreferencedChunks`, exactly the referenced ones).
    func allChunkIDs() throws(RepositoryError) -> Set<ChunkID> {
        do {
            return try database.withConnection { connection -> Set<ChunkID> in
                var ids = Set<ChunkID>()
                let statement = try connection.prepare("SELECT id FROM chunks")
                defer { statement.reset() }
                while try statement.step() {
                    if let id = ChunkID(digest: try statement.blob(at: 0)) { ids.insert(id) }
                }
                return ids
            }
        } catch {
            throw RepositoryError.catalog(error, "list chunks")
        }
    }
}
