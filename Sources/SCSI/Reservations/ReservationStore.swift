import Foundation
import SQLiteStore

/// Saves persistent reservation state, one row per logical unit key, in
/// `reservations.sqlite` under the target's state directory. All SQL for
/// reservations lives here (STYLE.md §4).
final class ReservationStore: Sendable {
    /// The file name under the state directory.
    static let fileName = "reservations.sqlite"

    static let migrations = [
        Migration(
            name: "v1-reservations",
            sql: """
                CREATE TABLE pr_logical_units (
                    lun_key TEXT PRIMARY KEY NOT NULL,
                    generation INTEGER NOT NULL,
                    aptpl INTEGER NOT NULL,
                    reservation_type INTEGER,
                    reservation_scope INTEGER,
                    holder_position INTEGER
                );
                CREATE TABLE pr_registrations (
                    lun_key TEXT NOT NULL REFERENCES pr_logical_units (lun_key) ON DELETE CASCADE,
                    position INTEGER NOT NULL,
                    initiator_name TEXT NOT NULL,
                    isid INTEGER,
                    target_port_name TEXT,
                    relative_target_port_id INTEGER NOT NULL,
                    reservation_key INTEGER NOT NULL,
                    PRIMARY KEY (lun_key, position)
                );
                """)
    ]

    private let db: SQLiteDatabase

    /// Opens (creating the directory and file if needed) the store in `directory`.
    init(directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // FULL: a PERSISTENT RESERVE OUT that returned GOOD survives power loss.
        db = try SQLiteDatabase(
            path: directory + "/" + Self.fileName, options: .init(journalMode: .wal, synchronous: .full))
        try db.migrate(Self.migrations)
    }

    /// The saved state of `lunKey`, or nil when it has none.
    func load(lunKey: String) throws -> PersistentReservationState? {
        try db.withConnection { conn -> PersistentReservationState? in
            guard
                let lu = try conn.query(
                    """
                    SELECT generation, aptpl, reservation_type, reservation_scope, holder_position
                    FROM pr_logical_units WHERE lun_key = ?
                    """, [lunKey]
                ).first
            else { return nil }
            var state = PersistentReservationState()
            state.generation = UInt32(truncatingIfNeeded: lu.int64(0) ?? 0)
            state.activatePersistThroughPowerLoss = (lu.int64(1) ?? 0) != 0
            let rows = try conn.query(
                """
                SELECT position, initiator_name, isid, target_port_name, relative_target_port_id, reservation_key
                FROM pr_registrations WHERE lun_key = ? ORDER BY position
                """, [lunKey])
            var byPosition: [Int64: RegistrantID] = [:]
            for row in rows {
                guard let position = row.int64(0), let name = row.string(1) else { continue }
                let registrant = RegistrantID(
                    initiatorName: name, isid: row.int64(2).map { UInt64(bitPattern: $0) },
                    targetPortName: row.string(3),
                    relativeTargetPortID: UInt16(truncatingIfNeeded: row.int64(4) ?? 0))
                byPosition[position] = registrant
                state.registrations.append(
                    PersistentRegistration(registrant: registrant, key: UInt64(bitPattern: row.int64(5) ?? 0)))
            }
            if let raw = lu.int64(2), let type = PersistentReservationType(rawValue: UInt8(truncatingIfNeeded: raw)) {
                let holder = lu.int64(4).flatMap { byPosition[$0] }
                // A holder-based reservation whose holder row is gone cannot be honoured: drop it.
                if type.isAllRegistrants || holder != nil {
                    state.reservation = PersistentReservation(
                        holder: type.isAllRegistrants ? nil : holder, type: type,
                        scope: UInt8(truncatingIfNeeded: lu.int64(3) ?? 0))
                }
            }
            return state
        }
    }

    /// Replaces the saved state of `lunKey` with `state`, atomically.
    func save(lunKey: String, state: PersistentReservationState) throws {
        let holderPosition = state.reservation?.holder.flatMap { holder in
            state.registrations.firstIndex { $0.registrant == holder }.map { Int64($0) }
        }
        try db.transaction { conn in
            // The LU row first: registrations reference it.
            try conn.run(
                """
                INSERT INTO pr_logical_units (lun_key, generation, aptpl, reservation_type, reservation_scope,
                    holder_position) VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (lun_key) DO UPDATE SET generation = excluded.generation, aptpl = excluded.aptpl,
                    reservation_type = excluded.reservation_type, reservation_scope = excluded.reservation_scope,
                    holder_position = excluded.holder_position
                """,
                [
                    lunKey, Int64(state.generation), state.activatePersistThroughPowerLoss,
                    state.reservation.map { Int64($0.type.rawValue) }, state.reservation.map { Int64($0.scope) },
                    holderPosition,
                ])
            try conn.run("DELETE FROM pr_registrations WHERE lun_key = ?", [lunKey])
            let insert = try conn.prepare(
                """
                INSERT INTO pr_registrations (lun_key, position, initiator_name, isid, target_port_name,
                    relative_target_port_id, reservation_key) VALUES (?, ?, ?, ?, ?, ?, ?)
                """)
            for (position, registration) in state.registrations.enumerated() {
                let r = registration.registrant
                try insert.run([
                    lunKey, Int64(position), r.initiatorName, r.isid.map { Int64(bitPattern: $0) },
                    r.targetPortName, Int64(r.relativeTargetPortID), Int64(bitPattern: registration.key),
                ])
            }
        }
    }
}
