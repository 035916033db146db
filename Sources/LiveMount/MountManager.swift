import BlockDevice
import Cache
import Foundation
import GuestFS
import Logging
import Prefetch
import Relocation
import Repository
import SQLiteStore
import Synchronization

// MARK: - Records

/// One live mount as the daemon remembers it across restarts.
public struct MountRecord: Sendable, Equatable, Codable {
    /// Where a mount came from: the configuration file or command line (reopened from it at each start), or
    /// the control API (reopened from the registry).
    public enum Origin: String, Sendable, Codable {
        case configuration
        case api
        /// The recall of an archived LUN: reopened by its placeholder, not by itself.
        case recall
    }

    /// `mounted`: served as a LUN. `kept`: unmounted with its overlay kept; a later mount of the same backup
    /// disk resumes it.
    public enum State: String, Sendable, Codable {
        case mounted
        case kept
    }

    public var id: Int64
    public var target: String
    public var lun: UInt64
    /// What was asked for (`web01`, `web01@3/disk1`): a configuration LUN is reopened while this stays the same.
    public var reference: String
    public var backupID: Int64
    public var vm: String
    public var disk: String
    public var readOnly: Bool
    public var origin: Origin
    public var state: State
    /// Seconds since 1970 when it was first mounted.
    public var createdAt: Int64
    /// Profile, prefetch and boot recording.
    public var options = MountOptions()

    /// The profile its traces and plan belong to: the configured one, else the VM's name.
    public var profile: String { options.profile ?? vm }
}

/// Why a mount could not be made, found or removed; the message names what was wrong.
public struct MountError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable {
        /// Unknown VM, backup id or disk.
        case notFound
        /// The target and LUN are taken, or the backup is in use.
        case conflict
        /// Files could not be created or opened.
        case failed
    }

    public var code: Code
    public var description: String

    public init(_ code: Code, _ description: String) {
        self.code = code
        self.description = description
    }
}

// MARK: - Manager

/// Opens live mounts: resolves a backup disk in the repository, opens (or resumes) its write overlay, builds
/// the `LiveMountDevice`, and records the mount in `mounts.sqlite` so it comes back after a restart.
///
/// Each mount holds its backup in the repository (`addHold`), so `livemount backup delete` refuses to delete a
/// backup that is being served.
public final class MountManager: Sendable {
    public let repository: BackupRepository
    public let source: any ChunkSource
    public let cache: ChunkCache
    /// Where overlays (`mount-ID.data`, `mount-ID.map`) and `mounts.sqlite` live.
    public let directory: String
    private let database: SQLiteDatabase
    private let logger: Logger
    private let overlayDirect: Bool
    /// Boot traces and prefetch plans (nil: no recording, no prefetch).
    public let traces: TraceStore?
    /// Relocation checkpoints (`relocations.sqlite` beside `mounts.sqlite`).
    public let relocations: RelocationStore
    private let prefetchSettings: PrefetchSettings

    static let migrations = [
        Migration(
            name: "v1-mounts",
            sql: """
                CREATE TABLE mounts (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    target TEXT NOT NULL,
                    lun INTEGER NOT NULL,
                    reference TEXT NOT NULL,
                    backup_id INTEGER NOT NULL,
                    vm TEXT NOT NULL,
                    disk TEXT NOT NULL,
                    read_only INTEGER NOT NULL,
                    origin TEXT NOT NULL,
                    state TEXT NOT NULL,
                    created_at INTEGER NOT NULL
                );
                CREATE UNIQUE INDEX mounts_lun ON mounts(target, lun) WHERE state = 'mounted';
                """),
        Migration(
            name: "v2-mount-options",
            sql: """
                ALTER TABLE mounts ADD COLUMN profile TEXT;
                ALTER TABLE mounts ADD COLUMN prefetch INTEGER NOT NULL DEFAULT 1;
                ALTER TABLE mounts ADD COLUMN record_seconds INTEGER NOT NULL DEFAULT 0;
                """),
    ]

    /// Opens (creating) the registry in `directory`.
    public init(
        repository: BackupRepository, source: any ChunkSource, cache: ChunkCache, directory: String,
        overlayDirect: Bool = true, traces: TraceStore? = nil, prefetch: PrefetchSettings = PrefetchSettings(),
        logger: Logger
    ) throws(MountError) {
        self.traces = traces
        self.prefetchSettings = prefetch
        self.repository = repository
        self.source = source
        self.cache = cache
        self.directory = directory
        self.logger = logger
        self.overlayDirect = overlayDirect
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            database = try SQLiteDatabase(
                path: directory + "/mounts.sqlite", options: .init(journalMode: .wal, synchronous: .full))
            _ = try database.migrate(Self.migrations)
            relocations = try RelocationStore(path: directory + "/relocations.sqlite")
        } catch {
            throw MountError(.failed, "cannot open the mount registry in \(directory): \(error)")
        }
    }

    // MARK: Queries

    /// Every remembered mount, mounted ones first, by target and LUN.
    public func records() throws(MountError) -> [MountRecord] {
        try select("SELECT * FROM mounts ORDER BY state DESC, target, lun, id", [])
    }

    /// The mount serving `lun` of `target`, if any.
    public func record(target: String, lun: UInt64) throws(MountError) -> MountRecord? {
        try select("SELECT * FROM mounts WHERE state = 'mounted' AND target = ? AND lun = ?", [target, Int64(lun)])
            .first
    }

    // MARK: Mounting

    /// Mounts `reference` (`VM`, `VM@ID`, with an optional disk) as `lun` of `target` and returns the device to
    /// add to the target. A configuration LUN whose reference is unchanged reopens its previous mount (same
    /// backup, same overlay); one whose reference changed keeps the old overlay aside (`kept`) and starts anew.
    public func mount(
        target: String, lun: UInt64, vm: String, backupID: Int64?, disk: String?, readOnly: Bool,
        origin: MountRecord.Origin, blockSize: Int = 512, options: MountOptions = MountOptions()
    ) async throws(MountError) -> (MountRecord, LiveMountDevice) {
        let reference = vm + (backupID.map { "@\($0)" } ?? "") + (disk.map { "/\($0)" } ?? "")
        if let existing = try record(target: target, lun: lun) {
            if origin == .configuration, existing.origin == .configuration, existing.reference == reference,
                existing.readOnly == readOnly
            {
                var reopened = existing
                if reopened.options != options {
                    try setOptions(existing.id, options)
                    reopened.options = options
                }
                return (reopened, try await open(reopened, blockSize: blockSize))
            }
            guard origin == .configuration else {
                throw MountError(
                    .conflict,
                    "LUN \(lun) of target \(target) is in use (backup \(existing.vm)@\(existing.backupID)/\(existing.disk))"
                )
            }
            logger.warning(
                "configuration changed the backup of a LUN; keeping its previous overlay",
                metadata: ["target": "\(target)", "lun": "\(lun)", "was": "\(existing.reference)", "now": "\(reference)"])
            try setState(existing.id, .kept)
        }

        let backup: BackupInfo
        let manifest: DiskManifest
        do {
            backup = try repository.resolve(vm: vm, backupID: backupID)
            manifest = try repository.manifest(backupID: backup.id, disk: disk)
        } catch {
            throw MountError(.notFound, "\(error)")
        }
        // A kept overlay of the same backup disk is resumed, so an unmount that kept it loses nothing.
        let kept = readOnly ? nil : try select(
            "SELECT * FROM mounts WHERE state = 'kept' AND backup_id = ? AND disk = ? AND read_only = 0 ORDER BY id DESC",
            [backup.id, manifest.name]
        ).first
        var record: MountRecord
        do {
            if var resumed = kept {
                _ = try database.run(
                    "UPDATE mounts SET target = ?, lun = ?, reference = ?, origin = ?, state = 'mounted' WHERE id = ?",
                    [target, Int64(lun), reference, origin.rawValue, resumed.id])
                try setOptions(resumed.id, options)
                resumed.options = options
                resumed.target = target
                resumed.lun = lun
                resumed.reference = reference
                resumed.origin = origin
                resumed.state = .mounted
                record = resumed
                logger.info("resuming kept overlay", metadata: ["mount": "\(resumed.id)"])
            } else {
                let now = Int64(Date().timeIntervalSince1970)
                let id = try database.insert(
                    """
                    INSERT INTO mounts (target, lun, reference, backup_id, vm, disk, read_only, origin, state, created_at,
                        profile, prefetch, record_seconds)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'mounted', ?, ?, ?, ?)
                    """,
                    [
                        target, Int64(lun), reference, backup.id, backup.vm, manifest.name, readOnly, origin.rawValue,
                        now, options.profile, options.prefetch, Int64(options.recordBootSeconds),
                    ])
                record = MountRecord(
                    id: id, target: target, lun: lun, reference: reference, backupID: backup.id, vm: backup.vm,
                    disk: manifest.name, readOnly: readOnly, origin: origin, state: .mounted, createdAt: now,
                    options: options)
            }
        } catch {
            throw MountError(.failed, "cannot record the mount: \(error)")
        }
        do {
            return (record, try await open(record, manifest: manifest, blockSize: blockSize))
        } catch {
            if kept == nil { _ = try? database.run("DELETE FROM mounts WHERE id = ?", [record.id]) }
            throw error
        }
    }

    /// Reopens every mount the control API made (at daemon start). A mount that no longer opens (its backup
    /// was removed behind our back) is logged and skipped, not fatal.
    public func restoreAPIMounts(blockSize: Int = 512) async -> [(MountRecord, LiveMountDevice)] {
        let records = (try? select("SELECT * FROM mounts WHERE state = 'mounted' AND origin = 'api' ORDER BY id", []))
            ?? []
        var result: [(MountRecord, LiveMountDevice)] = []
        for record in records {
            do {
                result.append((record, try await open(record, blockSize: blockSize)))
            } catch {
                logger.error("cannot restore mount", metadata: ["mount": "\(record.id)", "error": "\(error)"])
            }
        }
        return result
    }

    /// The mount `id`, whatever its state.
    public func record(id: Int64) throws(MountError) -> MountRecord? {
        try select("SELECT * FROM mounts WHERE id = ?", [id]).first
    }

    /// Reopens a recorded mount (a placeholder's recall at daemon start); its relocation, if unfinished, is
    /// resumed by `RelocationService.resume`, which releases the writes held until then.
    public func reopen(_ record: MountRecord, blockSize: Int) async throws(MountError) -> LiveMountDevice {
        try await open(record, blockSize: blockSize)
    }

    /// Opens a recorded mount's overlay and device.
    private func open(_ record: MountRecord, manifest known: DiskManifest? = nil, blockSize: Int) async throws(MountError)
        -> LiveMountDevice
    {
        let manifest: DiskManifest
        do {
            manifest = try known ?? repository.manifest(backupID: record.backupID, disk: record.disk)
        } catch {
            // A relocated mount no longer needs its backup (its hold went at the switchover, so the backup may
            // have been deleted): it is served from its primary, with a manifest of the right size only.
            guard let relocation = (try? relocations.record(mountID: record.id)) ?? nil, relocation.phase == .completed
            else { throw MountError(.notFound, "\(error)") }
            manifest = DiskManifest(name: record.disk, size: relocation.totalBytes, chunkSize: relocation.regionBytes)
        }
        if let relocated = try await openRelocated(record, manifest: manifest, blockSize: blockSize) {
            return relocated
        }
        do {
            try repository.addHold(backupID: record.backupID, holder: holder(record.id))
        } catch {
            throw MountError(.notFound, "\(error)")
        }
        var overlay: WriteOverlay?
        if !record.readOnly {
            guard manifest.size % UInt64(blockSize) == 0 else {
                throw MountError(
                    .failed,
                    "disk \(manifest.name) is \(manifest.size) bytes, not a whole number of \(blockSize)-byte blocks: "
                        + "mount it read-only")
            }
            do {
                overlay = try await WriteOverlay.open(
                    dataPath: overlayPath(record.id, "data"), mapPath: overlayPath(record.id, "map"),
                    size: manifest.size, blockSize: blockSize, direct: overlayDirect, logger: logger)
            } catch {
                throw MountError(.failed, "cannot open the write overlay of mount \(record.id): \(error)")
            }
        }
        let device = LiveMountDevice(
            manifest: manifest, source: source, cache: cache, overlay: overlay, blockSize: blockSize, logger: logger)
        if overlay != nil, let relocation = try? relocations.record(mountID: record.id), !relocation.phase.isFinal {
            // A write before the relocation resumes would not be tracked: writes wait until
            // `RelocationService.resume` has attached the pump (it releases them on every path).
            await device.holdWrites()
        }
        await attachPrefetchAndRecording(device, record)
        return device
    }

    /// A mount whose relocation completed is served by its primary LUN alone (no overlay, no backup hold).
    private func openRelocated(_ record: MountRecord, manifest: DiskManifest, blockSize: Int) async throws(MountError)
        -> LiveMountDevice?
    {
        let relocation: RelocationRecord?
        do {
            relocation = try relocations.record(mountID: record.id)
        } catch {
            throw MountError(.failed, error.description)
        }
        guard let relocation, relocation.phase == .completed else { return nil }
        let primary: RelocationDestination
        do {
            primary = try await RelocationDestination.open(
                try DestinationURL.parse(relocation.destination), requiredBytes: relocation.totalBytes,
                blockSize: blockSize, create: false, logger: logger)
        } catch {
            throw MountError(.failed, "cannot open the primary LUN of relocated mount \(record.id): \(error)")
        }
        logger.info(
            "serving a relocated mount from its primary LUN",
            metadata: ["mount": "\(record.id)", "primary": "\(primary.url.redacted)"])
        return LiveMountDevice(
            manifest: manifest, source: source, cache: cache, overlay: nil, blockSize: blockSize, logger: logger,
            relocatedTo: primary.device, readOnly: record.readOnly)
    }

    /// After a switchover: the overlay's files go (the device already closed them) and the backup is let go.
    public func relocationCompleted(_ record: MountRecord) {
        removeOverlayFiles(record.id)
        do {
            try repository.removeHold(backupID: record.backupID, holder: holder(record.id))
        } catch {
            logger.warning("cannot release the backup hold", metadata: ["error": "\(error)"])
        }
    }

    /// Boot recording and the profile's plan (issue 4): the first seconds of the plan are staged here, before
    /// the caller adds the LUN to its target, so the guest's first reads hit.
    private func attachPrefetchAndRecording(_ device: LiveMountDevice, _ record: MountRecord) async {
        guard let traces else { return }
        let manifest = device.manifest
        let profile = record.profile
        if record.options.recordBootSeconds > 0 {
            let template = TraceInfo(
                profile: profile, vm: record.vm, backupID: String(record.backupID), disk: record.disk,
                blockSize: device.blockSize, chunkSize: manifest.chunkSize, recordedAt: 0)
            device.activity.setAutoRecord(
                MountActivity.AutoRecord(store: traces, template: template, seconds: record.options.recordBootSeconds))
        }
        guard record.options.prefetch else { return }
        let trained: PrefetchPlan?
        let files: [String]
        do {
            trained = try traces.plan(profile: profile)
            files = try traces.files(profile: profile)
        } catch {
            logger.warning("cannot read the prefetch plan", metadata: ["profile": "\(profile)", "error": "\(error)"])
            return
        }
        // Guest files alone (no trained plan yet) are still pre-staged.
        guard trained?.entries.isEmpty == false || !files.isEmpty else { return }
        let plan =
            trained
            ?? PrefetchPlan(profile: profile, granularity: manifest.chunkSize, traceIDs: [], createdAt: 0, entries: [])
        let prefetcher = Prefetcher(
            plan: plan, manifest: manifest, cache: cache, source: source, settings: prefetchSettings,
            metricDimensions: [("target", record.target), ("lun", String(record.lun))], logger: logger)
        let (extents, problems) = await guestFileExtents(device, profile: profile, paths: files)
        await prefetcher.prestage(files: extents, fileProblems: problems)
        device.activity.attach(prefetcher)
    }

    /// The blocks of the guest files the profile names (`livemount trace files PROFILE --set ...`), found in
    /// the backup disk itself (partition table, ext2/3/4) with the metadata read to find them. A path that is
    /// not there, or a file system GuestFS cannot read, is reported (logged and shown by `mount status`), and
    /// the mount goes on.
    private func guestFileExtents(_ device: LiveMountDevice, profile: String, paths: [String]) async
        -> ([(offset: UInt64, length: UInt64)], [String])
    {
        guard !paths.isEmpty else { return ([], []) }
        var extents: [(offset: UInt64, length: UInt64)] = []
        var problems: [String] = []
        for result in await GuestFiles.locate(paths, on: BackupDiskReader(device: device)) {
            switch result {
            case .success(let map):
                extents += (map.metadata + map.extents).map { (offset: $0.offset, length: $0.length) }
            case .failure(let error):
                problems.append(error.description)
                logger.warning("guest file not staged", metadata: ["profile": "\(profile)", "problem": "\(error)"])
            }
        }
        return (extents, problems)
    }

    // MARK: Unmounting

    /// Forgets the mount serving `lun` of `target` after the caller removed it from the target and closed its
    /// device. With `keepOverlay` the guest's writes stay on disk for a later mount of the same backup disk (and
    /// the backup stays held, so it cannot be deleted under them); otherwise they are deleted and the hold
    /// released.
    public func unmount(target: String, lun: UInt64, keepOverlay: Bool) async throws(MountError) -> MountRecord {
        guard let record = try record(target: target, lun: lun) else {
            throw MountError(.notFound, "no live mount on LUN \(lun) of target \(target)")
        }
        let relocated = (try? relocations.record(mountID: record.id))??.phase == .completed
        try? relocations.delete(mountID: record.id)
        if relocated {
            // Its data lives on the primary LUN; the backup was let go at the switchover.
            do {
                _ = try database.run("DELETE FROM mounts WHERE id = ?", [record.id])
            } catch {
                throw MountError(.failed, "cannot update the mount registry: \(error)")
            }
            return record
        }
        if keepOverlay && !record.readOnly {
            try setState(record.id, .kept)
        } else {
            removeOverlayFiles(record.id)
            do {
                _ = try database.run("DELETE FROM mounts WHERE id = ?", [record.id])
            } catch {
                throw MountError(.failed, "cannot update the mount registry: \(error)")
            }
        }
        // A kept overlay is only good with its backup, so the backup stays held until the overlay is discarded.
        if !(keepOverlay && !record.readOnly) {
            do {
                try repository.removeHold(backupID: record.backupID, holder: holder(record.id))
            } catch {
                logger.warning("cannot release the backup hold", metadata: ["error": "\(error)"])
            }
        }
        var result = record
        result.state = keepOverlay && !record.readOnly ? .kept : record.state
        return result
    }

    // MARK: Helpers

    private func holder(_ id: Int64) -> String { "livemountd mount \(id) (\(directory))" }

    private func overlayPath(_ id: Int64, _ kind: String) -> String { "\(directory)/mount-\(id).\(kind)" }

    private func removeOverlayFiles(_ id: Int64) {
        for suffix in ["data", "map", "map-wal", "map-shm"] {
            unlink(overlayPath(id, suffix))
        }
    }

    private func setOptions(_ id: Int64, _ options: MountOptions) throws(MountError) {
        do {
            _ = try database.run(
                "UPDATE mounts SET profile = ?, prefetch = ?, record_seconds = ? WHERE id = ?",
                [options.profile, options.prefetch, Int64(options.recordBootSeconds), id])
        } catch {
            throw MountError(.failed, "cannot update the mount registry: \(error)")
        }
    }

    private func setState(_ id: Int64, _ state: MountRecord.State) throws(MountError) {
        do {
            _ = try database.run("UPDATE mounts SET state = ? WHERE id = ?", [state.rawValue, id])
        } catch {
            throw MountError(.failed, "cannot update the mount registry: \(error)")
        }
    }

    private func select(_ sql: String, _ bindings: [any SQLiteBindable]) throws(MountError) -> [MountRecord] {
        let rows: [SQLiteRow]
        do {
            rows = try database.query(sql, bindings)
        } catch {
            throw MountError(.failed, "cannot read the mount registry: \(error)")
        }
        return rows.compactMap { row in
            guard let id = row.int64("id"), let target = row.string("target"), let lun = row.int64("lun"),
                let reference = row.string("reference"), let backupID = row.int64("backup_id"),
                let vm = row.string("vm"), let disk = row.string("disk"), let readOnly = row.int64("read_only"),
                let origin = row.string("origin").flatMap(MountRecord.Origin.init(rawValue:)),
                let state = row.string("state").flatMap(MountRecord.State.init(rawValue:)),
                let created = row.int64("created_at")
            else { return nil }
            let options = MountOptions(
                profile: row.string("profile"), prefetch: (row.int64("prefetch") ?? 1) != 0,
                recordBootSeconds: Int(row.int64("record_seconds") ?? 0))
            return MountRecord(
                id: id, target: target, lun: UInt64(lun), reference: reference, backupID: backupID, vm: vm, disk: disk,
                readOnly: readOnly != 0, origin: origin, state: state, createdAt: created, options: options)
        }
    }
}
