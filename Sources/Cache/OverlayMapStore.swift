import SQLiteStore

/// The write overlay's map in SQLite: runs `[start, end)` of `.data` or `.zero`, in bytes. All SQL of the
/// overlay lives here (STYLE.md §4). The database runs with `synchronous=FULL`: a committed map change is
/// durable when the commit returns (DESIGN.md invariant 2).
enum OverlayMapStore {
    static let migrations = [
        Migration(
            name: "v1-overlay-map",
            sql: """
                CREATE TABLE overlay_extents (
                    start INTEGER PRIMARY KEY NOT NULL,
                    end INTEGER NOT NULL,
                    kind INTEGER NOT NULL
                );
                CREATE TABLE overlay_layout (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
                """)
    ]

    private static func code(_ kind: OverlayExtent.Kind) -> Int { kind == .zero ? 2 : 1 }

    /// The size and block size recorded when the overlay was created (nil for a new map).
    static func layout(_ db: SQLiteDatabase) throws -> (size: UInt64, blockSize: Int)? {
        var values: [String: Int64] = [:]
        for row in try db.query("SELECT key, value FROM overlay_layout") {
            if let key = row.string(0), let value = row.int64(1) { values[key] = value }
        }
        guard let size = values["size"], let blockSize = values["block_size"] else { return nil }
        return (UInt64(size), Int(blockSize))
    }

    static func setLayout(_ db: SQLiteDatabase, size: UInt64, blockSize: Int) throws {
        try db.transaction { conn in
            let sql =
                "INSERT INTO overlay_layout (key, value) VALUES (?, ?) "
                + "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
            try conn.run(sql, ["size", Int64(size)])
            try conn.run(sql, ["block_size", blockSize])
        }
    }

    /// Every run, into a map.
    static func load(_ db: SQLiteDatabase) throws -> ExtentMap {
        var map = ExtentMap()
        for row in try db.query("SELECT start, end, kind FROM overlay_extents ORDER BY start") {
            guard let start = row.int64(0), let end = row.int64(1), let kind = row.int64(2), start >= 0, end > start
            else { continue }
            map.set(UInt64(start), UInt64(end), kind == 2 ? .zero : .data)
        }
        return map
    }

    /// Replaces, in one transaction, what the table says about each of `ranges` with `runs(range)`. Parts
    /// of stored runs outside the ranges keep their stored kind.
    static func commit(
        _ db: SQLiteDatabase, ranges: [Range<UInt64>], runs: [[ExtentMap.Run]]
    ) throws {
        try db.transaction { conn in
            let overlapping = try conn.prepare(
                """
                SELECT start, end, kind FROM overlay_extents
                WHERE start >= coalesce((SELECT max(start) FROM overlay_extents WHERE start <= ?1), 0)
                  AND start < ?2 AND end > ?1
                """)
            let delete = try conn.prepare("DELETE FROM overlay_extents WHERE start = ?")
            let insert = try conn.prepare("INSERT INTO overlay_extents (start, end, kind) VALUES (?, ?, ?)")
            for (range, replacement) in zip(ranges, runs) {
                let low = Int64(range.lowerBound)
                let high = Int64(range.upperBound)
                for row in try overlapping.query([low, high]) {
                    guard let start = row.int64(0), let end = row.int64(1), let kind = row.int64(2) else { continue }
                    try delete.run([start])
                    if start < low { try insert.run([start, low, kind]) }
                    if end > high { try insert.run([high, end, kind]) }
                }
                for run in replacement where run.kind != .absent {
                    try insert.run([Int64(run.start), Int64(run.end), code(run.kind)])
                }
            }
        }
    }
}
