import BlockDevice
import Foundation
import Logging
import Relocation
import Synchronization

/// Why a relocation call failed; the message names the mount and what was wrong.
public struct RelocationServiceError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable {
        /// No such mount, or no relocation of it.
        case notFound
        /// The mount is already being (or was) relocated, or the call does not fit its phase.
        case conflict
        /// A bad URL, a destination that is too small or the wrong block size.
        case invalid
        /// The destination could not be opened, or the store failed.
        case failed
    }

    public var code: Code
    public var description: String

    public init(_ code: Code, _ description: String) {
        self.code = code
        self.description = description
    }
}

/// The daemon's relocation pumps, one per mount (DESIGN.md, relocation pump): starts them, resumes them after a
/// restart from their checkpoints, and answers status, pause, resume and cancel.
public final class RelocationService: Sendable {
    private let mounts: MountManager
    private let settings: RelocationSettings
    private let logger: Logger
    private let pumps = Mutex<[Int64: RelocationPump]>([:])
    /// Called once when the relocation of a mount completes (after the switchover), by mount id.
    private let completionObservers = Mutex<[Int64: @Sendable () async -> Void]>([:])

    public init(mounts: MountManager, settings: RelocationSettings, logger: Logger) {
        self.mounts = mounts
        self.settings = settings
        self.logger = logger
    }

    private var store: RelocationStore { mounts.relocations }

    // MARK: - Starting

    /// Starts relocating `record`'s mount (served by `device`) to `url`: parses the URL, opens the destination
    /// (creating a missing file), checks its capacity and block size, records the relocation and starts the pump.
    public func start(record: MountRecord, device: LiveMountDevice, to url: String, maxRateMiB: Int? = nil)
        async throws(RelocationServiceError) -> RelocationStatus
    {
        if let rate = maxRateMiB, rate <= 0 {
            throw RelocationServiceError(.invalid, "maxRateMiB: \(rate) must be positive")
        }
        if let existing = try existingRecord(record.id), existing.phase != .cancelled {
            throw RelocationServiceError(
                .conflict,
                "LUN \(record.lun) of target \(record.target) is already "
                    + (existing.phase == .completed ? "relocated" : "being relocated")
                    + " to \(RelocationPump.redact(existing.destination)) (\(existing.phase.rawValue))")
        }
        let parsed: DestinationURL
        do {
            parsed = try DestinationURL.parse(url)
        } catch {
            throw RelocationServiceError(.invalid, "to: \(error)")
        }
        let destination: RelocationDestination
        do {
            destination = try await RelocationDestination.open(
                parsed, requiredBytes: device.capacity, blockSize: device.blockSize, create: true, logger: logger)
        } catch {
            let code: RelocationServiceError.Code =
                switch error.code {
                case .invalidURL, .tooSmall, .blockSizeMismatch, .readOnly: .invalid
                case .unreachable, .ioError: .failed
                }
            throw RelocationServiceError(code, error.description)
        }
        let relocation = RelocationRecord(
            mountID: record.id, target: record.target, lun: record.lun, destination: url,
            totalBytes: device.capacity, regionBytes: settings.regionBytes,
            destinationZeroed: destination.createdZeroed, maxRateMiB: maxRateMiB)
        do {
            try store.create(relocation)
        } catch {
            await destination.close()
            throw RelocationServiceError(.failed, error.description)
        }
        let tracker = RegionTracker(
            totalBytes: relocation.totalBytes, regionBytes: relocation.regionBytes,
            destinationZeroed: relocation.destinationZeroed)
        let pump = makePump(relocation, tracker: tracker, record: record, device: device, destination: destination)
        logger.info(
            "relocation started",
            metadata: [
                "target": "\(record.target)", "lun": "\(record.lun)", "destination": "\(parsed.redacted)",
                "bytes": "\(device.capacity)",
            ])
        pump.start()
        return pump.status
    }

    /// Resumes the relocation of a mount the daemon just reopened, if it has one that is not finished: from its
    /// last checkpoint (a paused or failed one only tracks the guest's writes until resumed).
    /// The mount's guest writes were held when it was opened (`MountManager`); they are released here, once the
    /// pump's dirty tracking is attached (or there is nothing to track).
    public func resume(record: MountRecord, device: LiveMountDevice) async {
        var attached = false
        defer { if !attached { device.releaseWrites() } }
        guard !device.isRelocated, var relocation = try? existingRecord(record.id), !relocation.phase.isFinal else {
            return
        }
        let destination: RelocationDestination
        do {
            destination = try await RelocationDestination.open(
                try DestinationURL.parse(relocation.destination), requiredBytes: relocation.totalBytes,
                blockSize: device.blockSize, create: false, logger: logger)
        } catch {
            // Without its destination the pump cannot track the guest's writes against it: start over when
            // resumed.
            logger.error(
                "cannot reopen a relocation's destination; it starts over when resumed",
                metadata: ["mount": "\(record.id)", "error": "\(error)"])
            relocation.phase = .failed
            relocation.error = "cannot reopen the destination: \(error)"
            relocation.resumePhase = .copying
            relocation.nextSequential = 0
            try? store.dropRegions(mountID: record.id)
            try? store.update(relocation)
            return
        }
        let regions: (dirty: Set<Int>, content: [Int: RegionContent])
        do {
            regions = try store.regions(mountID: record.id)
        } catch {
            // Without the checkpoint nothing copied can be trusted: start over when resumed.
            logger.error("cannot read a relocation's checkpoint; it starts over when resumed", metadata: ["error": "\(error)"])
            relocation.phase = .failed
            relocation.error = "cannot read the checkpoint: \(error)"
            relocation.resumePhase = .copying
            relocation.nextSequential = 0
            try? store.update(relocation)
            await destination.close()
            return
        }
        let tracker = RegionTracker(
            totalBytes: relocation.totalBytes, regionBytes: relocation.regionBytes,
            nextSequential: relocation.nextSequential, dirty: regions.dirty, content: regions.content,
            destinationZeroed: relocation.destinationZeroed)
        if relocation.phase != .paused && relocation.phase != .failed {
            relocation.resumes += 1
            do {
                try store.update(relocation)
            } catch {
                logger.error("cannot record the relocation's resume", metadata: ["error": "\(error)"])
            }
        }
        let pump = makePump(
            relocation, tracker: tracker, record: record, device: device, destination: destination)
        device.setRelocationTap(pump)
        device.releaseWrites()
        attached = true
        logger.info(
            "relocation resumed from its checkpoint",
            metadata: [
                "mount": "\(record.id)", "phase": "\(relocation.phase.rawValue)",
                "regionsDone": "\(relocation.nextSequential)", "dirty": "\(regions.dirty.count)",
            ])
        pump.start()
    }

    private func makePump(
        _ relocation: RelocationRecord, tracker: RegionTracker, record: MountRecord, device: LiveMountDevice,
        destination: RelocationDestination
    ) -> RelocationPump {
        var pumpSettings = settings
        pumpSettings.regionBytes = relocation.regionBytes
        let mounts = self.mounts
        let pump = RelocationPump(
            record: relocation, tracker: tracker, source: device, primary: destination, store: store,
            settings: pumpSettings, logger: logger,
            onCompleted: { [weak self] in
                mounts.relocationCompleted(record)
                if let observer = self?.completionObservers.withLock({ $0.removeValue(forKey: record.id) }) {
                    await observer()
                }
            })
        pumps.withLock { $0[record.id] = pump }
        return pump
    }

    // MARK: - Control

    /// The relocation of mount `mountID`.
    public func status(mountID: Int64) throws(RelocationServiceError) -> RelocationStatus {
        if let pump = pumps.withLock({ $0[mountID] }) { return pump.status }
        guard let record = try existingRecord(mountID) else {
            throw RelocationServiceError(.notFound, "mount \(mountID) has no relocation")
        }
        return Self.status(of: record)
    }

    /// Every relocation the store knows.
    public func all() throws(RelocationServiceError) -> [RelocationStatus] {
        let records: [RelocationRecord]
        do {
            records = try store.records()
        } catch {
            throw RelocationServiceError(.failed, error.description)
        }
        return records.map { record in
            pumps.withLock({ $0[record.mountID] })?.status ?? Self.status(of: record)
        }
    }

    public func pause(mountID: Int64) async throws(RelocationServiceError) -> RelocationStatus {
        let pump = try running(mountID)
        let phase = pump.status.phase
        guard !phase.isFinal && phase != .paused && phase != .failed else {
            throw RelocationServiceError(.conflict, "the relocation is \(phase.rawValue), not running")
        }
        return await pump.pause()
    }

    public func resume(mountID: Int64) throws(RelocationServiceError) -> RelocationStatus {
        let pump = try running(mountID)
        let phase = pump.status.phase
        guard phase == .paused || phase == .failed else {
            throw RelocationServiceError(.conflict, "the relocation is \(phase.rawValue), not paused")
        }
        return pump.resume()
    }

    public func cancel(mountID: Int64) async throws(RelocationServiceError) -> RelocationStatus {
        if pumps.withLock({ $0[mountID] }) == nil, var record = try existingRecord(mountID), !record.phase.isFinal {
            // A relocation that could not be resumed at start (its destination or checkpoint unreadable) has no
            // pump: cancelling it only records that, so a new one can start.
            record.phase = .cancelled
            do {
                try store.update(record)
                try store.dropRegions(mountID: mountID)
            } catch {
                throw RelocationServiceError(.failed, error.description)
            }
            return Self.status(of: record)
        }
        let pump = try running(mountID)
        let phase = pump.status.phase
        guard !phase.isFinal else { throw RelocationServiceError(.conflict, "the relocation is \(phase.rawValue)") }
        return await pump.cancel()
    }

    /// Runs `body` (once) when the relocation of mount `mountID` completes; it replaces an earlier observer.
    public func onCompletion(mountID: Int64, _ body: @escaping @Sendable () async -> Void) {
        completionObservers.withLock { $0[mountID] = body }
    }

    /// Stops and forgets the pump of a mount being unmounted.
    public func forget(mountID: Int64) async {
        guard let pump = pumps.withLock({ $0.removeValue(forKey: mountID) }) else { return }
        if !pump.status.phase.isFinal { _ = await pump.cancel() }
    }

    /// Checkpoints and stops every pump (daemon shutdown); they resume at the next start.
    public func shutdown() async {
        for pump in pumps.withLock({ Array($0.values) }) { await pump.stop() }
    }

    /// Waits for the pump of `mountID` to stop (tests and `--wait`).
    public func waitForStop(mountID: Int64) async -> RelocationPhase? {
        guard let pump = pumps.withLock({ $0[mountID] }) else { return nil }
        return await pump.waitForStop()
    }

    // MARK: - Helpers

    private func running(_ mountID: Int64) throws(RelocationServiceError) -> RelocationPump {
        if let pump = pumps.withLock({ $0[mountID] }) { return pump }
        if let record = try existingRecord(mountID) {
            throw RelocationServiceError(.conflict, "the relocation is \(record.phase.rawValue)")
        }
        throw RelocationServiceError(.notFound, "mount \(mountID) has no relocation")
    }

    private func existingRecord(_ mountID: Int64) throws(RelocationServiceError) -> RelocationRecord? {
        do {
            return try store.record(mountID: mountID)
        } catch {
            throw RelocationServiceError(.failed, error.description)
        }
    }

    private static func status(of record: RelocationRecord) -> RelocationStatus {
        let done = record.phase == .completed ? record.totalBytes : min(record.totalBytes, UInt64(record.nextSequential) * UInt64(record.regionBytes))
        return RelocationStatus(
            target: record.target, lun: record.lun, destination: RelocationPump.redact(record.destination),
            phase: record.phase, bytesTotal: record.totalBytes, bytesDone: done,
            bytesLeft: record.totalBytes - done, bytesWritten: record.bytesWritten, bytesZero: record.bytesZero,
            verifyMismatches: record.verifyMismatches, resumes: record.resumes, startedAt: record.startedAt,
            completedAt: record.completedAt, error: record.error)
    }
}
