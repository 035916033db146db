import BlockDevice
import Cache
import ControlPlane
import Foundation
import LiveMount
import LiveMountConfig
import Logging
import Prefetch
import Prometheus
import Relocation
import Repository
import SCSI
import Synchronization
import TargetServer

/// The backup side of the daemon: the repository, the SSD-tier cache and the mount registry, opened when the
/// configuration has a `[repository]` and a `[cache]`.
final class LiveMountRuntime: Sendable {
    let repository: BackupRepository
    let cache: ChunkCache
    let mounts: MountManager
    /// Boot traces and prefetch plans (`traces.sqlite` beside the mount registry's directory).
    let traces: TraceStore
    /// Relocation pumps.
    let relocations: RelocationService
    /// Archived LUNs (`placeholders.sqlite` beside the mount registry).
    let placeholders: PlaceholderStore
    /// The LUNs being archived now (`TARGET/LUN`).
    let archiving = Mutex<Set<String>>([])
    /// The target server, once it exists (a completed recall puts the plain image back in its target).
    let server = Mutex<ISCSITargetServer?>(nil)
    let logger: Logger

    private init(
        repository: BackupRepository, cache: ChunkCache, mounts: MountManager, traces: TraceStore,
        relocations: RelocationService, placeholders: PlaceholderStore, logger: Logger
    ) {
        self.repository = repository
        self.cache = cache
        self.mounts = mounts
        self.traces = traces
        self.relocations = relocations
        self.placeholders = placeholders
        self.logger = logger
    }

    /// Opens the repository (throttled as configured), the cache file and the registry. Overlays and
    /// `mounts.sqlite` go in the state directory, or beside the cache file (`CACHE.state/`) without one.
    static func open(_ configuration: DaemonConfiguration, logger: Logger) async throws -> LiveMountRuntime? {
        guard let repositorySettings = configuration.repository, let cacheSettings = configuration.cache else {
            return nil
        }
        let repository = try BackupRepository.open(path: repositorySettings.path, logger: logger)
        var source: any ChunkSource = repository.chunkSource
        if repositorySettings.readLatencyMilliseconds > 0 || repositorySettings.readBandwidthMiBPerSecond > 0 {
            let bandwidth = repositorySettings.readBandwidthMiBPerSecond
            source = ThrottledChunkSource(
                base: source,
                throttle: ReadThrottle(
                    latency: .milliseconds(repositorySettings.readLatencyMilliseconds),
                    bandwidthBytesPerSecond: bandwidth > 0 ? bandwidth << 20 : nil))
        }
        let cache = try await ChunkCache.open(
            CacheConfiguration(
                dataPath: cacheSettings.path, indexPath: cacheSettings.path + ".index", capacity: cacheSettings.size,
                direct: cacheSettings.direct),
            logger: logger)
        let directory = configuration.stateDirectory.map { $0 + "/mounts" } ?? cacheSettings.path + ".state"
        let tracesPath = (configuration.stateDirectory ?? cacheSettings.path + ".state") + "/traces.sqlite"
        try FileManager.default.createDirectory(
            atPath: (tracesPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let traces = try TraceStore.open(path: tracesPath)
        let mounts = try MountManager(
            repository: repository, source: source, cache: cache, directory: directory,
            overlayDirect: cacheSettings.direct, traces: traces, prefetch: configuration.prefetch, logger: logger)
        let relocations = RelocationService(mounts: mounts, settings: configuration.relocation, logger: logger)
        let placeholders = try PlaceholderStore(path: directory + "/placeholders.sqlite")
        return LiveMountRuntime(
            repository: repository, cache: cache, mounts: mounts, traces: traces, relocations: relocations,
            placeholders: placeholders, logger: logger)
    }

    /// Resumes the relocations of every served live mount from their checkpoints, and starts those the
    /// configuration asks for (`relocate_to`) that have none yet. Called once the LUNs are in place.
    func startRelocations(server: ISCSITargetServer, configuration: DaemonConfiguration, logger: Logger) async {
        let wanted = Dictionary(
            configuration.targets.flatMap { target in
                target.logicalUnits.compactMap { unit in unit.relocateTo.map { ("\(target.name)/\(unit.lun)", $0) } }
            }, uniquingKeysWith: { first, _ in first })
        for name in server.targetNames {
            guard let scsi = server.scsiTarget(named: name) else { continue }
            for lun in scsi.luns {
                guard let device = scsi.device(lun: lun) as? LiveMountDevice,
                    let record = try? mounts.record(target: name, lun: lun)
                else { continue }
                await relocations.resume(record: record, device: device)
                guard let url = wanted["\(name)/\(lun)"], (try? relocations.status(mountID: record.id)) == nil
                else { continue }
                do {
                    _ = try await relocations.start(record: record, device: device, to: url)
                } catch {
                    logger.error(
                        "cannot start the configured relocation",
                        metadata: ["target": "\(name)", "lun": "\(lun)", "error": "\(error)"])
                }
            }
        }
    }

    /// Opens a configured LUN: a live mount for `backup =` LUNs, the image or device otherwise.
    func openDevice(target: TargetDefinition, unit: LogicalUnitDefinition) async throws -> any BlockDevice {
        guard let backup = unit.backup else {
            if let placeholder = try await restorePlaceholder(target: target.name, lun: unit.lun, path: unit.path) {
                return placeholder
            }
            return try LiveMountConfig.openDevice(
                path: unit.path, readOnly: unit.readOnly, direct: unit.direct, blockSize: unit.blockSize)
        }
        let (_, device) = try await mounts.mount(
            target: target.name, lun: unit.lun, vm: backup.vm, backupID: backup.backupID, disk: backup.disk,
            readOnly: unit.readOnly, origin: .configuration, blockSize: unit.blockSize, options: unit.mountOptions)
        return device
    }
}

// MARK: - Control API routes

/// Answers the control API: mounts (list, mount, unmount) and status. Mounting adds the LUN to a running
/// target; existing sessions see REPORTED LUNS DATA HAS CHANGED (SPC-4 §6.33).
struct ControlRoutes: Sendable {
    let server: ISCSITargetServer
    let runtime: LiveMountRuntime?
    /// Every swift-metrics metric of the daemon, for `GET /metrics`.
    let metrics: PrometheusCollectorRegistry
    let logger: Logger
    /// Where target, LUN, ACL and CHAP changes are kept (`TargetRoutes.swift`).
    let targetControl: TargetControl
    /// The archive policy (`[archive]`), for its dry run.
    var archive = ArchiveSettings()

    func handle(_ request: ControlRequest) async -> ControlResponse {
        do throws(ControlError) {
            if let answer = try await repositoryRoute(request) { return answer }
            // Before the target routes, which answer every other /v1/targets/... path.
            if let answer = try await archiveRoute(request) { return answer }
            if let answer = try await targetRoute(request) { return answer }
            let path = request.pathSegments
            switch (request.method, path.count) {
            case ("GET", 1) where path == ["metrics"], ("GET", 2) where path == ["v1", "metrics"]:
                return .prometheus(metrics.emitToBuffer())
            case ("GET", 2) where path == ["v1", "status"]: return .json(try status())
            case ("GET", 2) where path == ["v1", "mounts"]:
                do {
                    return .json(try requireRuntime().mounts.records().map(MountInfo.init))
                } catch let error as ControlError {
                    throw error
                } catch {
                    throw ControlError(status: 500, "\(error)")
                }
            case ("POST", 2) where path == ["v1", "mounts"]:
                return .json(try await mount(try request.decode(MountRequest.self)), status: 201)
            case ("GET", 4) where path[0] == "v1" && path[1] == "mounts":
                return .json(try mountStatus(target: path[2], lun: try Self.lun(path[3])))
            case ("POST", 5) where path[0] == "v1" && path[1] == "mounts" && path[4] == "trace":
                return .json(
                    try await record(
                        target: path[2], lun: try Self.lun(path[3]), try request.decode(TraceRecordRequest.self)))
            case ("GET", 2) where path == ["v1", "relocations"]:
                do {
                    return .json(try requireRuntime().relocations.all())
                } catch let error as RelocationServiceError {
                    throw Self.controlError(error)
                } catch let error as ControlError {
                    throw error
                } catch {
                    throw ControlError(status: 500, "\(error)")
                }
            case (_, 5) where path[0] == "v1" && path[1] == "mounts" && path[4] == "relocation",
                (_, 6) where path[0] == "v1" && path[1] == "mounts" && path[4] == "relocation":
                return try await relocation(request, target: path[2], lun: try Self.lun(path[3]), action: path.count == 6 ? path[5] : nil)
            case ("DELETE", 4) where path[0] == "v1" && path[1] == "mounts":
                guard let lun = UInt64(path[3]) else { throw ControlError(status: 400, "\"\(path[3])\" is not a LUN") }
                let overlay = request.query["overlay"] ?? "keep"
                guard overlay == "keep" || overlay == "discard" else {
                    throw ControlError(status: 400, "overlay=\(overlay): expected keep or discard")
                }
                return .json(try await unmount(target: path[2], lun: lun, keepOverlay: overlay == "keep"))
            default:
                throw ControlError(status: 404, "no such call: \(request.method) /\(path.joined(separator: "/"))")
            }
        } catch {
            return .error(error)
        }
    }

    static func lun(_ text: String) throws(ControlError) -> UInt64 {
        guard let lun = UInt64(text) else { throw ControlError(status: 400, "\"\(text)\" is not a LUN") }
        return lun
    }

    /// The mount on `lun` of `target` and its live device.
    private func mounted(target: String, lun: UInt64) throws(ControlError) -> (MountRecord, LiveMountDevice) {
        let runtime = try requireRuntime()
        let record: MountRecord?
        do {
            record = try runtime.mounts.record(target: target, lun: lun)
        } catch {
            throw ControlError(status: 500, error.description)
        }
        guard let record, let device = server.scsiTarget(named: target)?.device(lun: lun) as? LiveMountDevice else {
            throw ControlError(status: 404, "no live mount on LUN \(lun) of target \(target)")
        }
        return (record, device)
    }

    private func mountStatus(target: String, lun: UInt64) throws(ControlError) -> MountStatusInfo {
        let (record, device) = try mounted(target: target, lun: lun)
        return MountStatusInfo(
            mount: MountInfo(record), profile: record.profile, prefetchEnabled: record.options.prefetch,
            recordBootSeconds: record.options.recordBootSeconds, recording: device.activity.recording,
            prefetch: device.activity.prefetcher?.statistics)
    }

    private func record(target: String, lun: UInt64, _ request: TraceRecordRequest) async throws(ControlError)
        -> TraceRecordResponse
    {
        let runtime = try requireRuntime()
        let (record, device) = try mounted(target: target, lun: lun)
        switch request.action {
        case "start":
            if let seconds = request.seconds, !(1...MountOptions.maximumRecordSeconds).contains(seconds) {
                throw ControlError(status: 400, "seconds: \(seconds) out of range (1-\(MountOptions.maximumRecordSeconds))")
            }
            let profile = request.profile ?? record.profile
            guard !profile.isEmpty else { throw ControlError(status: 400, "profile: must not be empty") }
            let info = TraceInfo(
                profile: profile, vm: record.vm, backupID: String(record.backupID), disk: record.disk,
                blockSize: device.blockSize, chunkSize: device.manifest.chunkSize, recordedAt: 0, note: "recorded by hand")
            guard device.activity.startRecording(store: runtime.traces, info: info, seconds: request.seconds) else {
                throw ControlError(status: 409, "LUN \(lun) of target \(target) is already recording")
            }
            return TraceRecordResponse(state: "recording", profile: profile, trace: nil)
        case "stop":
            guard let status = device.activity.recording else {
                throw ControlError(status: 409, "LUN \(lun) of target \(target) is not recording")
            }
            let id = await device.activity.stopRecording()
            return TraceRecordResponse(state: "stopped", profile: status.profile, trace: id)
        default:
            throw ControlError(status: 400, "action: \"\(request.action)\": expected start or stop")
        }
    }

    /// The relocation calls on one mount.
    private func relocation(_ request: ControlRequest, target: String, lun: UInt64, action: String?)
        async throws(ControlError) -> ControlResponse
    {
        let runtime = try requireRuntime()
        let (record, device) = try mounted(target: target, lun: lun)
        let service = runtime.relocations
        let body = request.method == "POST" && action == nil ? try request.decode(RelocationRequest.self) : nil
        do throws(RelocationServiceError) {
            switch (request.method, action) {
            case ("POST", nil):
                guard let body else { break }
                return .json(
                    try await service.start(record: record, device: device, to: body.to, maxRateMiB: body.maxRateMiB),
                    status: 201)
            case ("GET", nil): return .json(try service.status(mountID: record.id))
            case ("DELETE", nil): return .json(try await service.cancel(mountID: record.id))
            case ("POST", "pause"): return .json(try await service.pause(mountID: record.id))
            case ("POST", "resume"): return .json(try service.resume(mountID: record.id))
            default: break
            }
        } catch {
            throw Self.controlError(error)
        }
        throw ControlError(
            status: 404, "no such call: \(request.method) /\(request.pathSegments.joined(separator: "/"))")
    }

    private static func controlError(_ error: RelocationServiceError) -> ControlError {
        let status =
            switch error.code {
            case .notFound: 404
            case .conflict: 409
            case .invalid: 400
            case .failed: 500
            }
        return ControlError(status: status, error.description)
    }

    func requireRuntime() throws(ControlError) -> LiveMountRuntime {
        guard let runtime else {
            throw ControlError(
                status: 409, "this daemon has no backup repository: configure [repository] and [cache] (or --repo/--cache)")
        }
        return runtime
    }

    private func status() throws(ControlError) -> StatusInfo {
        let now = Date()
        let targets = server.targetNames.map { name in
            let scsi = server.scsiTarget(named: name)
            let luns = scsi?.luns ?? []
            let usage = luns.compactMap { lun -> StatusInfo.LUNUsageInfo? in
                guard let u = scsi?.usage(lun: lun) else { return nil }
                return StatusInfo.LUNUsageInfo(
                    lun: lun, reads: u.reads, writes: u.writes,
                    lastAccess: u.lastAccess.map { $0.formatted(.iso8601) },
                    idleSeconds: u.lastAccess.map { max(0, now.timeIntervalSince($0)) })
            }
            return StatusInfo.Target(name: name, luns: luns, usage: usage)
        }
        var cacheBody: StatusInfo.Cache?
        var mounts: [MountInfo] = []
        if let runtime {
            let s = runtime.cache.statistics
            cacheBody = StatusInfo.Cache(
                hits: s.hits, misses: s.misses, fetches: s.fetches, bytesFetched: s.bytesFetched,
                evictions: s.evictions, slotsUsed: s.slotsUsed, slotCount: s.slotCount)
            do {
                mounts = try runtime.mounts.records().map(MountInfo.init)
            } catch {
                throw ControlError(status: 500, "\(error)")
            }
        }
        var prefetch: [StatusInfo.MountPrefetch] = []
        for mount in mounts where mount.state == "mounted" {
            let device = server.scsiTarget(named: mount.target)?.device(lun: mount.lun)
            let live = (device as? LiveMountDevice) ?? ((device as? PlaceholderDevice)?.recalledDevice as? LiveMountDevice)
            if let statistics = live?.activity.prefetcher?.statistics {
                prefetch.append(StatusInfo.MountPrefetch(target: mount.target, lun: mount.lun, statistics: statistics))
            }
        }
        return StatusInfo(
            sessions: server.sessionCount, targets: targets, mounts: mounts, cache: cacheBody,
            placeholders: try runtime?.placeholderInfos(), relocations: try? runtime?.relocations.all(),
            prefetch: runtime == nil ? nil : prefetch)
    }

    private func mount(_ request: MountRequest) async throws(ControlError) -> MountInfo {
        let runtime = try requireRuntime()
        guard let scsi = server.scsiTarget(named: request.target) else {
            throw ControlError(
                status: 404,
                "unknown target \(request.target) (served: \(server.targetNames.joined(separator: ", ")))")
        }
        let reference: BackupReference
        switch BackupReference.parse(request.backup) {
        case .success(let value): reference = value
        case .failure(let problem): throw ControlError(status: 400, "backup: \(problem)")
        }
        if let seconds = request.recordBootSeconds, !(0...MountOptions.maximumRecordSeconds).contains(seconds) {
            throw ControlError(
                status: 400, "recordBootSeconds: \(seconds) out of range (0-\(MountOptions.maximumRecordSeconds))")
        }
        if request.profile?.isEmpty == true { throw ControlError(status: 400, "profile: must not be empty") }
        if let url = request.relocateTo {
            do {
                _ = try DestinationURL.parse(url)
            } catch {
                throw ControlError(status: 400, "relocateTo: \(error)")
            }
        }
        let options = MountOptions(
            profile: request.profile, prefetch: request.prefetch ?? true,
            recordBootSeconds: request.recordBootSeconds ?? 0)
        let used = Set(scsi.luns)
        let lun: UInt64
        if let requested = request.lun {
            guard requested <= 16383 else { throw ControlError(status: 400, "LUN \(requested) out of range (0-16383)") }
            guard !used.contains(requested) else {
                throw ControlError(status: 409, "LUN \(requested) of target \(request.target) is in use")
            }
            lun = requested
        } else {
            guard let free = (0...16383).lazy.map(UInt64.init).first(where: { !used.contains($0) }) else {
                throw ControlError(status: 409, "target \(request.target) has no free LUN")
            }
            lun = free
        }
        let record: MountRecord
        let device: LiveMountDevice
        do {
            (record, device) = try await runtime.mounts.mount(
                target: request.target, lun: lun, vm: reference.vm, backupID: reference.backupID,
                disk: request.disk ?? reference.disk, readOnly: request.readOnly ?? false, origin: .api,
                options: options)
        } catch {
            throw ControlError(status: Self.status(of: error), error.description)
        }
        do {
            try scsi.addLogicalUnit(
                LogicalUnitConfiguration(
                    lun: lun, device: device, readOnly: record.readOnly,
                    serialNumber: DeviceIdentifiers.serialNumber(targetName: request.target, lun: lun),
                    naaIdentifier: DeviceIdentifiers.naaIdentifier(targetName: request.target, lun: lun),
                    product: "LiveMount backup"))
        } catch {
            await device.close()
            _ = try? await runtime.mounts.unmount(target: request.target, lun: lun, keepOverlay: true)
            throw ControlError(status: 409, "cannot add LUN \(lun) to \(request.target): \(error)")
        }
        logger.info(
            "mounted", metadata: ["target": "\(request.target)", "lun": "\(lun)", "backup": "\(record.vm)@\(record.backupID)/\(record.disk)"])
        if let url = request.relocateTo {
            do {
                _ = try await runtime.relocations.start(record: record, device: device, to: url)
            } catch {
                // The mount and its relocation go together: undo the mount.
                scsi.removeLogicalUnit(lun: lun)
                await device.close()
                _ = try? await runtime.mounts.unmount(target: request.target, lun: lun, keepOverlay: false)
                throw Self.controlError(error)
            }
        }
        return MountInfo(record)
    }

    private func unmount(target: String, lun: UInt64, keepOverlay: Bool) async throws(ControlError) -> MountInfo {
        let runtime = try requireRuntime()
        let existing: MountRecord?
        do {
            existing = try runtime.mounts.record(target: target, lun: lun)
        } catch {
            throw ControlError(status: 500, error.description)
        }
        guard let existing else { throw ControlError(status: 404, "no live mount on LUN \(lun) of target \(target)") }
        guard existing.origin != .recall else {
            throw ControlError(
                status: 409,
                "LUN \(lun) of target \(target) is an archived LUN being recalled: it returns to primary storage by itself")
        }
        await runtime.relocations.forget(mountID: existing.id)
        if let scsi = server.scsiTarget(named: target), let device = scsi.device(lun: lun) {
            scsi.removeLogicalUnit(lun: lun)
            try? await device.flush()
            await device.close()
        }
        do {
            let record = try await runtime.mounts.unmount(target: target, lun: lun, keepOverlay: keepOverlay)
            logger.info("unmounted", metadata: ["target": "\(target)", "lun": "\(lun)", "overlay": "\(keepOverlay ? "kept" : "discarded")"])
            return MountInfo(record)
        } catch {
            throw ControlError(status: Self.status(of: error), error.description)
        }
    }

    private static func status(of error: MountError) -> Int {
        switch error.code {
        case .notFound: 404
        case .conflict: 409
        case .failed: 500
        }
    }
}

extension MountInfo {
    /// The API's view of a registry record.
    init(_ record: MountRecord) {
        self.init(
            id: record.id, target: record.target, lun: record.lun, vm: record.vm, backupID: record.backupID,
            disk: record.disk, readOnly: record.readOnly, origin: record.origin.rawValue, state: record.state.rawValue)
    }
}
