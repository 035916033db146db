import BlockDevice
import ControlPlane
import Foundation
import LiveMountConfig
import Logging
import SCSI
import Synchronization
import TargetServer

/// The daemon's side of the target calls of the control API (`TargetRoutes.swift`): where their changes are
/// kept (`control.sqlite`), which targets came from the configuration file, and the queue that runs the
/// changes one at a time. At start it serves again what the store remembers.
final class TargetControl: Sendable {
    /// Where the changes are kept; nil without a state directory (the changing calls then answer 409).
    let store: ControlStore?
    /// The targets of the configuration file, which the API may change (ACL, CHAP, raw LUNs) but not remove.
    let configurationTargets: Set<String>
    /// Runs changes one at a time, so a check and the change it guards never interleave with another change.
    let changes = ChangeQueue()
    let logger: Logger

    init(store: ControlStore?, configurationTargets: Set<String>, logger: Logger) {
        self.store = store
        self.configurationTargets = configurationTargets
        self.logger = logger
    }

    /// Opens `control.sqlite` in the state directory, or beside the cache's state (`CACHE.state/`) without one,
    /// as the mount registry does; no store without either. Throws when the store exists but cannot be opened:
    /// serving without what it remembers would drop API targets and loosen ACLs silently.
    static func open(_ configuration: DaemonConfiguration, logger: Logger) throws -> TargetControl {
        let directory = configuration.stateDirectory ?? configuration.cache.map { $0.path + ".state" }
        var store: ControlStore?
        if let directory {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            store = try ControlStore(path: (directory.hasSuffix("/") ? directory : directory + "/") + "control.sqlite")
        }
        return TargetControl(
            store: store, configurationTargets: Set(configuration.targets.map(\.name)), logger: logger)
    }

    // MARK: - Start

    /// Serves again what the store remembers, before the portals listen and before live mounts are restored
    /// (so mounts on API targets find their target): targets created through the API, ACL and CHAP changes to
    /// configuration targets, and raw LUNs (a LUN that cannot be opened is logged and skipped; its record is
    /// kept, so it comes back once its file does).
    func restore(server: ISCSITargetServer, runtime: LiveMountRuntime?) async {
        guard let store else { return }
        let targets: [ControlStore.TargetRecord]
        let luns: [ControlStore.LUNRecord]
        do {
            targets = try store.targets()
            luns = try store.luns()
        } catch {
            logger.error("cannot read the control store", metadata: ["error": "\(error)"])
            return
        }
        for record in targets {
            if record.createdByAPI {
                guard !configurationTargets.contains(record.name) else {
                    logger.error(
                        "a target created through the API is now in the configuration file; serving the file's",
                        metadata: ["target": "\(record.name)"])
                    continue
                }
                do {
                    try server.addTarget(
                        TargetConfiguration(name: record.name, logicalUnits: []).with(
                            record.policy(over: LoginPolicy())))
                } catch {
                    logger.error("cannot restore target", metadata: ["target": "\(record.name)", "error": "\(error)"])
                }
            } else {
                do {
                    try server.updateLoginPolicy(target: record.name) { $0 = record.policy(over: $0) }
                } catch {
                    logger.warning(
                        "ACL or CHAP changes kept for a target the configuration no longer has",
                        metadata: ["target": "\(record.name)"])
                }
            }
        }
        for record in luns {
            guard let scsi = server.scsiTarget(named: record.target) else {
                logger.error(
                    "cannot restore LUN: no such target",
                    metadata: ["target": "\(record.target)", "lun": "\(record.lun)"])
                continue
            }
            guard scsi.device(lun: record.lun) == nil else {
                logger.error(
                    "cannot restore LUN: the configuration uses its number",
                    metadata: ["target": "\(record.target)", "lun": "\(record.lun)", "path": "\(record.path)"])
                continue
            }
            // An archived LUN comes back as its placeholder (or its recall), never as its released image.
            let placeholder: (any BlockDevice)?
            do {
                placeholder = try await runtime?.restorePlaceholder(target: record.target, lun: record.lun, path: record.path)
            } catch {
                logger.error(
                    "cannot restore an archived LUN; skipped",
                    metadata: ["target": "\(record.target)", "lun": "\(record.lun)", "error": "\(error)"])
                continue
            }
            guard let device = placeholder ?? openPersistedLUN(record, logger: logger) else { continue }
            do {
                try scsi.addLogicalUnit(Self.unit(record, device: device))
            } catch {
                logger.error(
                    "cannot restore LUN",
                    metadata: ["target": "\(record.target)", "lun": "\(record.lun)", "error": "\(error)"])
                await device.close()
            }
        }
    }

    /// A raw LUN as the SCSI layer serves it, with the identifiers a configuration LUN of the same target and
    /// number would get (VPD 80h, 83h), so initiators see the same LU after a restart.
    static func unit(_ record: ControlStore.LUNRecord, device: any BlockDevice) -> LogicalUnitConfiguration {
        LogicalUnitConfiguration(
            lun: record.lun, device: device, readOnly: record.readOnly,
            serialNumber: DeviceIdentifiers.serialNumber(targetName: record.target, lun: record.lun),
            naaIdentifier: DeviceIdentifiers.naaIdentifier(targetName: record.target, lun: record.lun))
    }
}

/// Opens a raw LUN the control store remembers, at daemon start. Nil, with the reason logged, when it cannot be
/// opened (its file is gone, say): the daemon serves everything else.
func openPersistedLUN(_ record: ControlStore.LUNRecord, logger: Logger) -> (any BlockDevice)? {
    do {
        return try openDevice(
            path: record.path, readOnly: record.readOnly, direct: record.direct, blockSize: record.blockSize)
    } catch {
        logger.error(
            "cannot reopen LUN; skipped (its record is kept)",
            metadata: [
                "target": "\(record.target)", "lun": "\(record.lun)", "path": "\(record.path)", "error": "\(error)",
            ])
        return nil
    }
}

extension ControlStore.TargetRecord {
    /// The login policy this record gives: its alias for an API target, and its ACL and CHAP where it has them
    /// (over `base`, a configuration target's own).
    func policy(over base: LoginPolicy) -> LoginPolicy {
        var policy = base
        if createdByAPI { policy.alias = alias }
        if let allowedInitiators { policy.allowedInitiators = allowedInitiators }
        if let chap {
            policy.chap = chap.chap
            policy.mutualChap = chap.mutualChap
        }
        return policy
    }
}

extension TargetConfiguration {
    /// This configuration with `policy` as its login policy.
    func with(_ policy: LoginPolicy) -> TargetConfiguration {
        var copy = self
        copy.loginPolicy = policy
        return copy
    }
}

// MARK: - One change at a time

/// An asynchronous lock, first come first served: `run` waits for the changes before it to finish.
final class ChangeQueue: Sendable {
    private struct State {
        var busy = false
        var waiting: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    /// Runs `body` once every change queued before it has finished.
    func run<T: Sendable>(_ body: () async throws(ControlError) -> T) async throws(ControlError) -> T {
        await acquire()
        defer { release() }
        return try await body()
    }

    private func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let granted = state.withLock { state in
                guard state.busy else {
                    state.busy = true
                    return true
                }
                state.waiting.append(continuation)
                return false
            }
            if granted { continuation.resume() }
        }
    }

    private func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard !state.waiting.isEmpty else {
                state.busy = false
                return nil
            }
            return state.waiting.removeFirst()
        }
        next?.resume()
    }
}
