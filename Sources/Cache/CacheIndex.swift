import Dispatch
import Repository
import SQLiteStore

/// One slot's row in the cache index.
struct SlotRecord: Sendable, Equatable {
    var slot: Int
    var generation: Int64
    var chunk: ChunkID
    var length: Int
    var crc: UInt32
    var queue: SlotQueue
    var lastUse: UInt64
}

/// A resident slot's recency, persisted in batches (never on the read path).
struct RecencyRecord: Sendable {
    var slot: Int
    var generation: Int64
    var queue: SlotQueue
    var lastUse: UInt64
}

/// The cache index in SQLite: slot → chunk, length, generation, CRC32C, 2Q queue, last use. All SQL of the
/// read cache lives here (STYLE.md §4).
///
/// A slot's row survives while the slot is free (chunk NULL) so that its generation keeps counting up.
/// Writes run on one serial queue, off the callers' threads and in the order they were asked for, which is
/// what the slot-reuse protocol in `ChunkCache` relies on (clear the row, write data, fill the row).
///
/// The database runs with `synchronous=NORMAL`: in WAL mode a commit survives `kill -9` (it is in the
/// page cache), and after a power loss a lost commit can at worst leave a row naming a chunk whose data
/// was since overwritten, which the CRC check on first use catches.
final class CacheIndex: Sendable {
    static let migrations = [
        Migration(
            name: "v1-cache-index",
            sql: """
                CREATE TABLE cache_slots (
                    slot INTEGER PRIMARY KEY NOT NULL,
                    generation INTEGER NOT NULL,
                    chunk BLOB,
                    length INTEGER,
                    crc INTEGER,
                    queue INTEGER,
                    last_use INTEGER
                );
                CREATE TABLE cache_layout (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
                """)
    ]

    let database: SQLiteDatabase
    private let queue: DispatchQueue

    /// Opens (creating) the index and applies migrations.
    init(path: String) throws(CacheError) {
        do {
            database = try SQLiteDatabase(path: path, options: .init(journalMode: .wal, synchronous: .normal))
            try database.migrate(Self.migrations)
        } catch {
            throw .indexError(path, "\(error)")
        }
        queue = DispatchQueue(label: "livemount.cache.index")
    }

    /// Runs `body` on the index queue.
    func perform<T: Sendable>(
        _ body: @escaping @Sendable (SQLiteDatabase) throws -> T
    ) async -> Result<T, SQLiteError> {
        let database = self.database
        return await withCheckedContinuation { continuation in
            queue.async {
                do {
                    continuation.resume(returning: .success(try body(database)))
                } catch let error as SQLiteError {
                    continuation.resume(returning: .failure(error))
                } catch {
                    continuation.resume(returning: .failure(SQLiteError(code: 1, message: "\(error)")))
                }
            }
        }
    }

    /// Queues `body` without waiting for it (dropping a bad slot's row is not on anyone's path).
    func enqueue(_ body: @escaping @Sendable (SQLiteDatabase) throws -> Void) {
        let database = self.database
        queue.async { try? body(database) }
    }

    // MARK: - Layout

    /// The slot size and count the index was last written with (nil for a new index).
    static func layout(_ db: SQLiteDatabase) throws -> (slotSize: Int, slotCount: Int)? {
        let rows = try db.query("SELECT key, value FROM cache_layout")
        var values: [String: Int64] = [:]
        for row in rows { if let key = row.string(0), let value = row.int64(1) { values[key] = value } }
        guard let size = values["slot_size"], let count = values["slot_count"] else { return nil }
        return (Int(size), Int(count))
    }

    static func setLayout(_ db: SQLiteDatabase, slotSize: Int, slotCount: Int) throws {
        try db.transaction { conn in
            let sql =
                "INSERT INTO cache_layout (key, value) VALUES (?, ?) "
                + "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
            try conn.run(sql, ["slot_size", slotSize])
            try conn.run(sql, ["slot_count", slotCount])
        }
    }

    // MARK: - Rows

    /// Every slot row: generations of all slots, records of those holding a chunk.
    static func load(_ db: SQLiteDatabase) throws -> (generations: [Int: Int64], records: [SlotRecord]) {
        var generations: [Int: Int64] = [:]
        var records: [SlotRecord] = []
        let rows = try db.query("SELECT slot, generation, chunk, length, crc, queue, last_use FROM cache_slots")
        for row in rows {
            guard let slot = row.int64(0), let generation = row.int64(1) else { continue }
            generations[Int(slot)] = generation
            guard let blob = row.blob(2), let chunk = ChunkID(digest: blob), let length = row.int64(3),
                let crc = row.int64(4), let queueValue = row.int64(5), let lastUse = row.int64(6)
            else { continue }
            records.append(
                SlotRecord(
                    slot: Int(slot), generation: generation, chunk: chunk, length: Int(length),
                    crc: UInt32(truncatingIfNeeded: crc), queue: SlotQueue(rawValue: Int(queueValue)) ?? .a1in,
                    lastUse: UInt64(max(0, lastUse))))
        }
        return (generations, records)
    }

    /// Forgets the chunk in each of `slots` (the slot keeps its generation).
    static func clear(_ db: SQLiteDatabase, slots: [Int], generations: [Int64]) throws {
        try db.transaction { conn in
            let statement = try conn.prepare(
                """
                INSERT INTO cache_slots (slot, generation) VALUES (?, ?)
                ON CONFLICT(slot) DO UPDATE SET chunk = NULL, length = NULL, crc = NULL, queue = NULL, last_use = NULL
                """)
            for (slot, generation) in zip(slots, generations) { try statement.run([slot, generation]) }
        }
    }

    /// Removes the rows of slots past the end of a shrunk cache file.
    static func deleteSlots(_ db: SQLiteDatabase, from first: Int) throws {
        try db.run("DELETE FROM cache_slots WHERE slot >= ?", [first])
    }

    /// Records that `record.slot` now holds `record.chunk`.
    static func fill(_ db: SQLiteDatabase, _ record: SlotRecord) throws {
        try db.run(
            """
            INSERT INTO cache_slots (slot, generation, chunk, length, crc, queue, last_use) VALUES (?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT(slot) DO UPDATE SET generation = excluded.generation, chunk = excluded.chunk,
                length = excluded.length, crc = excluded.crc, queue = excluded.queue, last_use = excluded.last_use
            """,
            [
                record.slot, record.generation, record.chunk.bytes, record.length, Int64(record.crc),
                record.queue.rawValue, Int64(clamping: record.lastUse),
            ])
    }

    /// Persists recency for slots still holding the generation it was taken from.
    static func saveRecency(_ db: SQLiteDatabase, _ records: [RecencyRecord]) throws {
        guard !records.isEmpty else { return }
        try db.transaction { conn in
            let statement = try conn.prepare(
                "UPDATE cache_slots SET queue = ?, last_use = ? WHERE slot = ? AND generation = ? AND chunk IS NOT NULL"
            )
            for record in records {
                try statement.run([
                    record.queue.rawValue, Int64(clamping: record.lastUse), record.slot, record.generation,
                ])
            }
        }
    }
}
