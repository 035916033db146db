import BlockDevice
import ControlPlane
import Dispatch
import Foundation
import Glibc
import LiveMount
import LiveMountConfig
import Logging
import Metrics
import Relocation
import Repository
import SCSI
import TargetServer

// Archive and recall (issue 6): a LUN on primary storage (an image file or a block device) is backed up into
// the repository, a placeholder takes its place in the target (same LU: same size, same VPD 80h/83h, same
// reservations; only the device behind it changes), and its primary storage is released (a file keeps its path
// and size with no blocks allocated; a block device is discarded). The first read or
// write of the placeholder recalls it: the backup is live-mounted behind the placeholder at once and relocated
// back to the same path in the background. `placeholders.sqlite` keeps the placeholders across restarts.

extension LiveMountRuntime {
    // MARK: - Archiving

    /// Archives `lun` of `target` (see above). Refused (409) for a LUN that is not on primary storage, that is
    /// already a placeholder, or that something wrote while it was being backed up (then nothing changes).
    func archive(server: ISCSITargetServer, target: String, lun: UInt64) async throws(ControlError)
        -> PlaceholderInfo
    {
        guard let scsi = server.scsiTarget(named: target) else {
            throw ControlError(status: 404, "unknown target \(target)")
        }
        guard let device = scsi.device(lun: lun), let presented = scsi.configuration(lun: lun) else {
            throw ControlError(status: 404, "target \(target) has no LUN \(lun)")
        }
        let primary: AIOFileDevice
        switch device {
        case let placeholder as PlaceholderDevice:
            throw ControlError(status: 409, "LUN \(lun) of target \(target) is already archived (\(placeholder.state.rawValue))")
        case is LiveMountDevice:
            throw ControlError(
                status: 409,
                "LUN \(lun) of target \(target) is a live mount, not on primary storage: relocate it first")
        case let file as AIOFileDevice:
            primary = file
        default:
            throw ControlError(
                status: 409, "LUN \(lun) of target \(target) is not an image file or block device: it cannot be archived")
        }
        let key = "\(target)/\(lun)"
        guard archiving.withLock({ $0.insert(key).inserted }) else {
            throw ControlError(status: 409, "LUN \(lun) of target \(target) is being archived")
        }
        defer { _ = archiving.withLock { $0.remove(key) } }
        do {
            if let existing = try placeholders.record(target: target, lun: lun) {
                throw ControlError(
                    status: 409, "LUN \(lun) of target \(target) has a placeholder already (\(existing.state.rawValue))")
            }
        } catch let error as ControlError {
            throw error
        } catch {
            throw ControlError(status: 500, "\(error)")
        }

        // From here every command goes through the placeholder, which counts writes.
        let placeholder = PlaceholderDevice(archiving: primary)
        do {
            // Returns once the commands already running on the primary directly have finished: from then on
            // every write is seen by the placeholder.
            try await scsi.replaceDevice(lun: lun, with: placeholder)
        } catch {
            throw ControlError(status: 500, "cannot put a placeholder in front of LUN \(lun): \(error)")
        }
        func abandon(_ error: ControlError) async -> ControlError {
            _ = try? await scsi.replaceDevice(lun: lun, with: primary)
            logger.warning("archive abandoned", metadata: ["target": "\(target)", "lun": "\(lun)", "why": "\(error)"])
            return error
        }
        do {
            try await primary.flush()
        } catch {
            throw await abandon(ControlError(status: 500, "cannot flush LUN \(lun) before archiving it: \(error)"))
        }
        let vm = Self.archiveVM(target: target, lun: lun)
        let disk = "lun\(lun)"
        let description = ArchiveDescription(
            target: target, lun: lun, path: primary.path, blockSize: primary.blockSize, blocks: primary.blockCount,
            serialNumber: presented.serialNumber, naaIdentifier: String(presented.naaIdentifier, radix: 16))
        let result: Result<IngestResult, RepositoryError> = await withCheckedContinuation { continuation in
            let repository = self.repository
            // The ingest reads with blocking calls: on a thread of its own, never the event loops or the pool.
            DispatchQueue.global(qos: .utility).async {
                do throws(RepositoryError) {
                    let source = try openDiskSource(primary.path)
                    defer { source.close() }
                    continuation.resume(
                        returning: .success(
                            try repository.ingest(
                                vm: vm, configurationName: "livemount-archive.json",
                                configuration: description.json, disks: [(disk, source)])))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
        let backup: BackupInfo
        switch result {
        case .success(let ingest): backup = ingest.backup
        case .failure(let error):
            throw await abandon(ControlError(status: 500, "cannot back up LUN \(lun) of target \(target): \(error)"))
        }
        guard placeholder.seal() else {
            try? repository.delete(backupID: backup.id, force: true)
            throw await abandon(
                ControlError(
                    status: 409,
                    "LUN \(lun) of target \(target) was written while it was being backed up: archive abandoned, "
                        + "nothing changed (archive LUNs that are idle)"))
        }
        var record = PlaceholderRecord(
            target: target, lun: lun, path: primary.path, blockSize: primary.blockSize,
            blockCount: primary.blockCount, readOnly: presented.readOnly || primary.isReadOnly,
            supportsUnmap: primary.supportsUnmap, serialNumber: presented.serialNumber,
            naaIdentifier: presented.naaIdentifier, product: presented.product, backupID: backup.id, vm: backup.vm,
            disk: disk)
        record.direct = primary.isDirect
        do {
            try placeholders.insert(record)
            try repository.addHold(backupID: backup.id, holder: Self.placeholderHolder(target: target, lun: lun))
        } catch {
            try? placeholders.delete(target: target, lun: lun)
            placeholder.unseal()
            try? repository.delete(backupID: backup.id, force: true)
            throw await abandon(ControlError(status: 500, "cannot record the placeholder: \(error)"))
        }
        // Nothing can reach the primary any more: release it.
        await placeholder.drainPrimary()
        await primary.close()
        release(path: primary.path, blockDevice: primary.isBlockDevice, bytes: primary.capacity)
        placeholder.archived(recall: recaller(record))
        Counter(label: "livemount_archives_total").increment()
        logger.info(
            "LUN archived",
            metadata: [
                "target": "\(target)", "lun": "\(lun)", "backup": "\(backup.vm)@\(backup.id)/\(disk)",
                "path": "\(primary.path)",
            ])
        return info(record, state: "archived")
    }

    /// Releases an archived LUN's primary storage but keeps its path, so the configuration that names it stays
    /// valid and the recall relocates into it: a file is emptied and set back to its size (sparse: no blocks
    /// allocated), a block device discarded (BLKDISCARD).
    private func release(path: String, blockDevice: Bool, bytes: UInt64) {
        let fd = Glibc.open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else {
            logger.warning("cannot open the archived LUN's storage to release it", metadata: ["path": "\(path)", "errno": "\(errno)"])
            return
        }
        defer { Glibc.close(fd) }
        if blockDevice {
            var range: [UInt64] = [0, bytes]
            // BLKDISCARD = _IO(0x12, 119) (linux/fs.h).
            if ioctl(fd, 0x1277, &range) != 0 {
                logger.warning(
                    "the block device does not discard; its blocks stay allocated",
                    metadata: ["path": "\(path)", "errno": "\(errno)"])
            }
        } else if ftruncate(fd, 0) != 0 || ftruncate(fd, off_t(bytes)) != 0 || fsync(fd) != 0 {
            logger.warning("cannot release the archived LUN's file", metadata: ["path": "\(path)", "errno": "\(errno)"])
        }
    }

    // MARK: - Recall

    /// What a placeholder runs on first access.
    func recaller(_ record: PlaceholderRecord) -> PlaceholderDevice.Recall {
        { [self] in try await self.recall(record) }
    }

    /// Live-mounts the placeholder's backup (reusing the recall's mount if a crash left one) and starts
    /// relocating it back to its primary path. A relocation that cannot start leaves the LUN a live mount
    /// (logged; `livemount relocate start` can start it): the initiator gets its data either way.
    private func recall(_ record: PlaceholderRecord) async throws -> any BlockDevice {
        logger.info("recalling an archived LUN", metadata: ["target": "\(record.target)", "lun": "\(record.lun)"])
        Counter(label: "livemount_recalls_total").increment()
        let mount: MountRecord
        let device: LiveMountDevice
        if let existing = try mounts.record(target: record.target, lun: record.lun), existing.origin == .recall {
            mount = existing
            device = try await mounts.reopen(existing, blockSize: record.blockSize)
            await relocations.resume(record: existing, device: device)
        } else {
            (mount, device) = try await mounts.mount(
                target: record.target, lun: record.lun, vm: record.vm, backupID: record.backupID, disk: record.disk,
                readOnly: record.readOnly, origin: .recall, blockSize: record.blockSize)
        }
        try placeholders.setRecalling(target: record.target, lun: record.lun, mountID: mount.id)
        relocations.onCompletion(mountID: mount.id) { [self] in Task { await self.finishRecall(record) } }
        if (try? relocations.status(mountID: mount.id)) == nil {
            do {
                _ = try await relocations.start(record: mount, device: device, to: record.path)
            } catch {
                logger.error(
                    "cannot relocate the recalled LUN back to its primary path; it stays a live mount",
                    metadata: ["target": "\(record.target)", "lun": "\(record.lun)", "error": "\(error)"])
            }
        }
        return device
    }

    /// The recall's relocation completed: the LUN goes back to being the plain image at its path (so it can be
    /// archived again), and the recall's mount and the placeholder are forgotten. Commands already running on
    /// the recalled mount finish there (it writes the same primary) before it is closed.
    func finishRecall(_ record: PlaceholderRecord) async {
        guard let scsi = server.withLock({ $0 })?.scsiTarget(named: record.target),
            let placeholder = scsi.device(lun: record.lun) as? PlaceholderDevice
        else { return }
        do {
            let file = try LiveMountConfig.openDevice(
                path: record.path, readOnly: record.readOnly, direct: record.direct, blockSize: record.blockSize)
            do {
                try await scsi.replaceDevice(lun: record.lun, with: file)
            } catch {
                await file.close()
                throw error
            }
        } catch {
            // The recalled mount keeps serving the primary; the next start finishes the recall.
            logger.warning(
                "cannot reopen the recalled LUN's image; the relocated mount keeps serving it",
                metadata: ["target": "\(record.target)", "lun": "\(record.lun)", "error": "\(error)"])
            return
        }
        if let id = record.mountID ?? (try? mounts.record(target: record.target, lun: record.lun))??.id {
            await relocations.forget(mountID: id)
        }
        _ = try? await mounts.unmount(target: record.target, lun: record.lun, keepOverlay: false)
        try? placeholders.delete(target: record.target, lun: record.lun)
        try? repository.removeHold(
            backupID: record.backupID, holder: Self.placeholderHolder(target: record.target, lun: record.lun))
        logger.info(
            "recall completed; the LUN is its image again", metadata: ["target": "\(record.target)", "lun": "\(record.lun)"])
        await placeholder.close()
    }

    /// An operator's recall (`POST /v1/placeholders/T/N/recall`): as a first access would.
    func recallNow(server: ISCSITargetServer, target: String, lun: UInt64) async throws(ControlError) -> PlaceholderInfo {
        guard let placeholder = server.scsiTarget(named: target)?.device(lun: lun) as? PlaceholderDevice else {
            throw ControlError(status: 404, "LUN \(lun) of target \(target) is not archived")
        }
        do {
            try await placeholder.recallNow()
        } catch {
            throw ControlError(status: 500, "\(error)")
        }
        guard let info = try placeholderInfos().first(where: { $0.target == target && $0.lun == lun }) else {
            throw ControlError(status: 404, "LUN \(lun) of target \(target) is not archived")
        }
        return info
    }

    // MARK: - At daemon start

    /// The device for `lun` of `target`, configured at `path`, when it has a placeholder: an archived one, or
    /// its recall (reopened, its relocation resumed). nil when it has none, or its recall has completed (the
    /// placeholder is then dropped and the LUN opens from `path` as usual).
    func restorePlaceholder(target: String, lun: UInt64, path: String?) async throws -> (any BlockDevice)? {
        guard let record = try placeholders.record(target: target, lun: lun) else { return nil }
        if let path, path != record.path {
            logger.warning(
                "the configuration moved an archived LUN; serving the configured path, keeping the placeholder's backup",
                metadata: ["target": "\(target)", "lun": "\(lun)", "archived": "\(record.path)", "configured": "\(path)"])
            return nil
        }
        switch record.state {
        case .archived:
            return PlaceholderDevice(
                blockSize: record.blockSize, blockCount: record.blockCount, readOnly: record.readOnly,
                supportsUnmap: record.supportsUnmap, recall: recaller(record))
        case .recalling:
            guard let id = record.mountID, let mount = try mounts.record(id: id), mount.state == .mounted else {
                // The recall's mount is gone: recall again on first access.
                return PlaceholderDevice(
                    blockSize: record.blockSize, blockCount: record.blockCount, readOnly: record.readOnly,
                    supportsUnmap: record.supportsUnmap, recall: recaller(record))
            }
            if (try? relocations.status(mountID: id))?.phase == .completed {
                // Back on primary storage: the LUN is what it was before it was archived.
                _ = try? await mounts.unmount(target: target, lun: lun, keepOverlay: false)
                try placeholders.delete(target: target, lun: lun)
                try? repository.removeHold(
                    backupID: record.backupID, holder: Self.placeholderHolder(target: target, lun: lun))
                logger.info("recall completed; the LUN is on primary storage again", metadata: ["target": "\(target)", "lun": "\(lun)"])
                return nil
            }
            let device = try await mounts.reopen(mount, blockSize: record.blockSize)
            relocations.onCompletion(mountID: id) { [self] in Task { await self.finishRecall(record) } }
            await relocations.resume(record: mount, device: device)
            return PlaceholderDevice(recalled: device, supportsUnmap: record.supportsUnmap)
        }
    }

    /// Adds the placeholders of LUNs that no configuration line opened (archived API LUNs) to their targets.
    func restoreRemainingPlaceholders(server: ISCSITargetServer) async {
        for record in (try? placeholders.records()) ?? [] {
            guard let scsi = server.scsiTarget(named: record.target), scsi.device(lun: record.lun) == nil else { continue }
            do {
                guard let device = try await restorePlaceholder(target: record.target, lun: record.lun, path: nil) else {
                    // Recalled: the LUN is a plain image again, but nothing configures it: open it as it was.
                    try scsi.addLogicalUnit(
                        LogicalUnitConfiguration(
                            lun: record.lun,
                            device: try LiveMountConfig.openDevice(
                                path: record.path, readOnly: record.readOnly, direct: record.direct, blockSize: record.blockSize),
                            readOnly: record.readOnly, serialNumber: record.serialNumber,
                            naaIdentifier: record.naaIdentifier, product: record.product))
                    continue
                }
                try scsi.addLogicalUnit(
                    LogicalUnitConfiguration(
                        lun: record.lun, device: device, readOnly: record.readOnly, serialNumber: record.serialNumber,
                        naaIdentifier: record.naaIdentifier, product: record.product))
            } catch {
                logger.error(
                    "cannot restore an archived LUN",
                    metadata: ["target": "\(record.target)", "lun": "\(record.lun)", "error": "\(error)"])
            }
        }
    }

    // MARK: - Policy

    /// LUNs on primary storage idle at least `idleSeconds` (a dry run of the policy).
    func archiveCandidates(server: ISCSITargetServer, idleSeconds: Int) -> [ArchiveCandidates.Candidate] {
        let now = Date()
        var result: [ArchiveCandidates.Candidate] = []
        for name in server.targetNames {
            guard let scsi = server.scsiTarget(named: name) else { continue }
            for lun in scsi.luns {
                guard let file = scsi.device(lun: lun) as? AIOFileDevice, let usage = scsi.usage(lun: lun) else {
                    continue
                }
                let idle = max(0, now.timeIntervalSince(usage.idleSince))
                guard idle >= Double(idleSeconds) else { continue }
                result.append(
                    ArchiveCandidates.Candidate(
                        target: name, lun: lun, path: file.path, sizeBytes: file.capacity, idleSeconds: idle,
                        reads: usage.reads, writes: usage.writes,
                        lastAccess: usage.lastAccess.map { $0.formatted(.iso8601) }))
            }
        }
        return result
    }

    /// Archives, every `checkSeconds`, the LUNs idle at least `idleSeconds` (`[archive]`), until cancelled.
    func runArchivePolicy(server: ISCSITargetServer, settings: ArchiveSettings) async {
        guard settings.idleSeconds > 0 else { return }
        logger.info(
            "archive policy on",
            metadata: ["idle-seconds": "\(settings.idleSeconds)", "check-seconds": "\(settings.checkSeconds)"])
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(settings.checkSeconds))
            guard !Task.isCancelled else { return }
            for candidate in archiveCandidates(server: server, idleSeconds: settings.idleSeconds) {
                do {
                    _ = try await archive(server: server, target: candidate.target, lun: candidate.lun)
                } catch {
                    logger.warning(
                        "the archive policy could not archive an idle LUN",
                        metadata: ["target": "\(candidate.target)", "lun": "\(candidate.lun)", "error": "\(error)"])
                }
            }
        }
    }

    // MARK: - Views

    func placeholderInfos() throws(ControlError) -> [PlaceholderInfo] {
        let records: [PlaceholderRecord]
        do {
            records = try placeholders.records()
        } catch {
            throw ControlError(status: 500, error.description)
        }
        return records.map { record in
            guard record.state == .recalling, let id = record.mountID,
                let status = try? relocations.status(mountID: id)
            else { return info(record, state: record.state.rawValue) }
            var result = info(record, state: status.phase == .completed ? "recalled" : "recalling")
            result.relocationPhase = status.phase.rawValue
            result.relocationProgress =
                status.bytesTotal == 0 ? 1 : Double(status.bytesDone) / Double(status.bytesTotal)
            return result
        }
    }

    private func info(_ record: PlaceholderRecord, state: String) -> PlaceholderInfo {
        PlaceholderInfo(
            target: record.target, lun: record.lun, path: record.path, sizeBytes: record.capacity,
            blockSize: record.blockSize, state: state, backupID: record.backupID, vm: record.vm, disk: record.disk,
            archivedAt: Date(timeIntervalSince1970: Double(record.archivedAt)).formatted(.iso8601),
            mountID: record.mountID)
    }

    /// The VM name an archive's backup is kept under: `TARGET-lunN`.
    static func archiveVM(target: String, lun: UInt64) -> String { "\(target)-lun\(lun)" }

    static func placeholderHolder(target: String, lun: UInt64) -> String { "livemountd placeholder \(target)/\(lun)" }
}

/// The "VM configuration file" of an archive's backup: what the LUN was, so the backup explains itself.
private struct ArchiveDescription: Codable {
    var kind = "livemount-archived-lun"
    var target: String
    var lun: UInt64
    var path: String
    var blockSize: Int
    var blocks: UInt64
    var serialNumber: String
    var naaIdentifier: String

    init(
        target: String, lun: UInt64, path: String, blockSize: Int, blocks: UInt64, serialNumber: String,
        naaIdentifier: String
    ) {
        self.target = target
        self.lun = lun
        self.path = path
        self.blockSize = blockSize
        self.blocks = blocks
        self.serialNumber = serialNumber
        self.naaIdentifier = naaIdentifier
    }

    var json: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        return (try? encoder.encode(self)).map { Array($0) } ?? []
    }
}

// MARK: - Routes

extension ControlRoutes {
    /// `POST /v1/targets/T/luns/N/archive`, `GET /v1/placeholders`, `POST /v1/placeholders/T/N/recall` and
    /// `GET /v1/archive/candidates[?idle=SECONDS]`; nil for any other call.
    func archiveRoute(_ request: ControlRequest) async throws(ControlError) -> ControlResponse? {
        let path = request.pathSegments
        switch (request.method, path.count) {
        case ("POST", 6) where path[0] == "v1" && path[1] == "targets" && path[3] == "luns" && path[5] == "archive":
            return .json(
                try await requireRuntime().archive(server: server, target: path[2], lun: try Self.lun(path[4])),
                status: 201)
        case ("GET", 2) where path == ["v1", "placeholders"]:
            return .json(try requireRuntime().placeholderInfos())
        case ("POST", 5) where path[0] == "v1" && path[1] == "placeholders" && path[4] == "recall":
            return .json(
                try await requireRuntime().recallNow(server: server, target: path[2], lun: try Self.lun(path[3])))
        case ("GET", 3) where path == ["v1", "archive", "candidates"]:
            var idle = archive.idleSeconds
            if let text = request.query["idle"] {
                guard let value = Int(text), value >= 0 else {
                    throw ControlError(status: 400, "idle=\(text): expected a number of seconds")
                }
                idle = value
            }
            return .json(
                ArchiveCandidates(
                    idleSeconds: idle, policyEnabled: archive.idleSeconds > 0,
                    candidates: try requireRuntime().archiveCandidates(server: server, idleSeconds: idle)))
        default:
            return nil
        }
    }
}
