import BlockDevice
import CCRC32C
import Foundation
import Logging
import Metrics
import NIOCore
import Synchronization

/// Drains a live mount to its primary LUN while the guest runs, then switches the LUN over (DESIGN.md, relocation
/// pump; invariants 3 and 4).
///
/// 1. **Copying.** Regions in ascending order, several in flight, paced by `GuestLoadGovernor`; the backup chunks
///    of the next `stageAheadMiB` are staged into the cache first so no copy waits on a fetch. Zeros are not
///    written where the destination already reads zeros, and are zero-filled cheaply elsewhere. Regions the guest
///    writes after their copy started are copied again (`RegionTracker`).
/// 2. **Verifying** (with `verify`). When everything is copied the destination is flushed, then every region is
///    read back and compared with the CRC32C of the source data copied there; a mismatch is copied again and
///    read back after that copy. This checks what the destination made durable, damage after a copy included,
///    and keeps the reads out of the copy's way. A pump resumed after a restart starts this pass over.
/// 3. **Switching.** Guest writes are held, the last dirty regions are copied and verified, the destination is
///    flushed, `completed` is recorded, and the LUN is served by the destination; held writes go there.
///
/// Progress is checkpointed every `checkpointSeconds` (after flushing the destination), and every commit of the
/// guest's writes records the regions it touches first, so a `kill -9` loses no acknowledged write and at most a
/// checkpoint's worth of copying. Pause, resume and cancel act between copies.
public final class RelocationPump: RelocationTap, Sendable {
    public let mountID: Int64
    private let source: any RelocationSource
    private let primary: any PrimaryLUN
    private let store: RelocationStore
    private let settings: RelocationSettings
    private let logger: Logger
    private let metrics: RelocationMetrics
    private let onCompleted: @Sendable () async -> Void

    private let state: Mutex<State>
    /// Serialises checkpoints with the commit hook, so a checkpoint never drops a region a commit just recorded.
    private let storeLock = Mutex(())

    private struct State {
        var record: RelocationRecord
        var tracker: RegionTracker
        var governor: GuestLoadGovernor
        var limits: GuestLoadGovernor.Limits
        var request: Request = .run
        var running = false
        var resumeWaiters: [CheckedContinuation<Void, Never>] = []
        var finishWaiters: [CheckedContinuation<RelocationPhase, Never>] = []
        /// Pacing: when the next copy may start.
        var nextStart: ContinuousClock.Instant = .now
        var lastTick: ContinuousClock.Instant = .now
        var lastCheckpoint: ContinuousClock.Instant = .now
        /// (time, bytes done) samples for the rate.
        var samples: [(ContinuousClock.Instant, UInt64)] = []
        var staged = 0
        /// The sequential pass may copy regions below this: they are recorded as dirty in the store.
        var reservedThrough = 0
        var consecutiveFailures = 0
        var lastFailure: String?
    }

    private enum Request: Equatable {
        case run
        case pause
        case cancel
        /// The daemon is shutting down: checkpoint and stop, keeping the phase (it resumes at the next start).
        case stop
    }

    /// A pump for `record` (new or resumed from `store`); `start()` runs it.
    public init(
        record: RelocationRecord, tracker: RegionTracker, source: any RelocationSource, primary: any PrimaryLUN,
        store: RelocationStore, settings: RelocationSettings, logger: Logger,
        onCompleted: @escaping @Sendable () async -> Void = {}
    ) {
        self.mountID = record.mountID
        self.source = source
        self.primary = primary
        self.store = store
        self.settings = settings
        self.logger = logger
        self.onCompleted = onCompleted
        self.metrics = RelocationMetrics(dimensions: [("target", record.target), ("lun", String(record.lun))])
        let cap = [record.maxRateMiB, settings.maxRateMiB > 0 ? settings.maxRateMiB : nil].compactMap { $0 }.min()
        let busy = min(settings.busyRateMiB, cap ?? settings.busyRateMiB)
        let governor = GuestLoadGovernor(
            maxRate: cap.map { Double($0) * 1_048_576 }, busyRate: Double(busy) * 1_048_576,
            maxInFlight: settings.maxInFlight)
        self.state = Mutex(State(record: record, tracker: tracker, governor: governor, limits: governor.limits))
    }

    // MARK: - Control

    /// Starts the pump (attaching the dirty tracking at once); a paused, completed or cancelled one only
    /// tracks, or does nothing.
    public func start() {
        let phase = state.withLock { $0.record.phase }
        guard !phase.isFinal else { return }
        source.setRelocationTap(self)
        guard phase != .paused && phase != .failed else { return }
        launch()
    }

    private func launch() {
        let go = state.withLock { state -> Bool in
            guard !state.running else { return false }
            state.running = true
            state.request = .run
            return true
        }
        guard go else { return }
        Task(executorPreference: PumpExecutor.shared) { await self.run() }
    }

    /// Pauses between copies; a checkpoint records where. Returns the status once paused.
    public func pause() async -> RelocationStatus {
        let wasRunning = state.withLock { state -> Bool in
            guard state.running, !state.record.phase.isFinal else { return false }
            state.request = .pause
            return true
        }
        if wasRunning { _ = await waitForStop() }
        return status
    }

    /// Checkpoints and stops without changing the phase (daemon shutdown; the next start resumes it).
    public func stop() async {
        let wasRunning = state.withLock { state -> Bool in
            guard state.running else { return false }
            state.request = .stop
            return true
        }
        // The tap stays: writes until the LUN closes are still recorded by the commit hook.
        if wasRunning { _ = await waitForStop() }
        if state.withLock({ $0.record.phase }) != .completed { await primary.close() }
    }

    /// Resumes a paused or failed relocation.
    public func resume() -> RelocationStatus {
        let resumable = state.withLock { state -> Bool in
            guard state.record.phase == .paused || state.record.phase == .failed else { return false }
            state.record.phase = state.record.resumePhase
            state.record.error = nil
            state.consecutiveFailures = 0
            return true
        }
        if resumable {
            persist()
            source.setRelocationTap(self)
            launch()
        }
        return status
    }

    /// Cancels: the pump stops, the LUN stays a live mount, the destination keeps what was copied.
    public func cancel() async -> RelocationStatus {
        let wasRunning = state.withLock { state -> Bool in
            guard !state.record.phase.isFinal else { return false }
            state.request = .cancel
            return state.running
        }
        if wasRunning {
            _ = await waitForStop()
        } else {
            finishCancel()
        }
        return status
    }

    /// Waits until the pump stops running (paused, failed, cancelled or completed) and returns the phase.
    public func waitForStop() async -> RelocationPhase {
        await withCheckedContinuation { continuation in
            let phase = state.withLock { state -> RelocationPhase? in
                guard state.running else { return state.record.phase }
                state.finishWaiters.append(continuation)
                return nil
            }
            if let phase { continuation.resume(returning: phase) }
        }
    }

    // MARK: - Status

    public var status: RelocationStatus {
        state.withLock { state in
            let now = ContinuousClock.now
            let rate = Self.rate(state.samples, now: now)
            let left = state.record.phase == .completed ? 0 : state.tracker.bytesLeft
            return RelocationStatus(
                target: state.record.target, lun: state.record.lun,
                destination: Self.redact(state.record.destination), phase: state.record.phase,
                bytesTotal: state.record.totalBytes,
                bytesDone: state.record.phase == .completed ? state.record.totalBytes : state.tracker.bytesStarted,
                bytesLeft: left, bytesWritten: state.record.bytesWritten, bytesZero: state.record.bytesZero,
                dirtyRegions: state.tracker.dirty.count, rateBytesPerSecond: rate,
                etaSeconds: rate > 0 && left > 0 ? Double(left) / rate : (left == 0 ? 0 : nil),
                backoffs: state.governor.backoffs, verifyMismatches: state.record.verifyMismatches,
                resumes: state.record.resumes, startedAt: state.record.startedAt,
                completedAt: state.record.completedAt, error: state.record.error)
        }
    }

    /// Removes a CHAP secret (`user%secret@`) from a URL.
    public static func redact(_ url: String) -> String {
        guard url.hasPrefix("iscsi://"), let at = url.firstIndex(of: "@") else { return url }
        let credentials = url[url.index(url.startIndex, offsetBy: 8)..<at]
        guard let percent = credentials.firstIndex(of: "%") else { return url }
        return "iscsi://" + credentials[..<percent] + "%***" + url[at...]
    }

    private static func rate(_ samples: [(ContinuousClock.Instant, UInt64)], now: ContinuousClock.Instant) -> Double {
        guard let first = samples.first, let last = samples.last, last.0 > first.0 else { return 0 }
        let seconds = Double((last.0 - first.0).components.attoseconds) / 1e18 + Double((last.0 - first.0).components.seconds)
        return seconds > 0 ? Double(last.1 &- first.1) / seconds : 0
    }

    // MARK: - Tap (called by the live mount)

    public func guestWrote(_ range: Range<UInt64>) {
        state.withLock { $0.tracker.guestWrote(range) }
    }

    public func willCommit(_ ranges: [Range<UInt64>]) -> Bool {
        storeLock.withLock { _ in
            let regions = state.withLock { state -> [Int] in
                var result: Set<Int> = []
                for range in ranges {
                    guard let touched = state.tracker.regions(touching: range) else { continue }
                    for region in touched
                    where region < state.tracker.nextSequential || state.tracker.inFlight.contains(region) {
                        result.insert(region)
                    }
                    state.tracker.guestWrote(range)
                }
                return result.sorted()
            }
            guard !regions.isEmpty else { return true }
            do {
                try store.addDirty(mountID: mountID, regions: regions)
                return true
            } catch {
                logger.error("cannot record dirty regions", metadata: ["error": "\(error)"])
                return false
            }
        }
    }

    // MARK: - The pump

    private func run() async {
        logger.info("relocation running", metadata: ["mount": "\(mountID)", "phase": "\(state.withLock { $0.record.phase })"])
        var outcome: RelocationPhase
        do {
            outcome = try await drive()
        } catch {
            switch error {
            case .paused:
                outcome = .paused
                await checkpoint()
                state.withLock { $0.record.phase = .paused }
                persist()
                logger.info("relocation paused", metadata: ["mount": "\(mountID)"])
            case .stopped:
                outcome = state.withLock { $0.record.phase }
                await checkpoint()
                logger.info("relocation stopped for shutdown", metadata: ["mount": "\(mountID)"])
            case .cancelled:
                outcome = .cancelled
                await checkpoint()
                finishCancel()
            case .failed(let message):
                outcome = .failed
                await checkpoint()
                fail(message)
            }
        }
        let waiters = state.withLock { state -> [CheckedContinuation<RelocationPhase, Never>] in
            state.running = false
            defer { state.finishWaiters = [] }
            return state.finishWaiters
        }
        if outcome == .completed { await onCompleted() }
        for waiter in waiters { waiter.resume(returning: state.withLock { $0.record.phase }) }
        updateMetrics()
    }

    /// Runs the phases from where the record is; returns the phase it stopped in.
    private func drive() async throws(PumpStop) -> RelocationPhase {
        var phase = state.withLock { $0.record.phase }
        if phase == .switching { phase = .verifying }
        if phase == .copying {
            try await pass(.sequential, verifying: false)
            try await converge(verifying: false)
            phase = .verifying
        }
        if phase == .verifying && settings.verify {
            // When everything is copied, the destination is flushed and every region read back and compared with
            // the CRC32C of what was copied into it: this checks what the destination made durable, including
            // damage done after a copy, and keeps reads from interleaving with the copy's writes. A region that
            // differs is copied again (and read back after that copy).
            setPhase(.verifying)
            do {
                try await primary.device.flush()
            } catch {
                throw PumpStop.failed("flushing the destination before verifying: \(error)")
            }
            try await pass(.verifyAll, verifying: true)
            try await converge(verifying: true)
        }
        try await switchOver()
        return .completed
    }

    /// Why the pump stopped before the end.
    private enum PumpStop: Error {
        case paused
        case stopped
        case cancelled
        case failed(String)
    }

    /// What one pass does.
    private enum PassMode {
        /// The first pass: every region not started yet, in ascending order.
        case sequential
        /// Copies again the regions that were dirty when the round began (later ones wait for the next round, so
        /// a round ends however fast the guest writes), lowest first.
        case round(Set<Int>)
        /// Reads every region back and compares it with what was copied there (a pump resumed from a checkpoint).
        case verifyAll
    }

    /// How many regions the sequential pass reserves at a time: they are recorded as dirty before copies into them
    /// start, so a `kill -9` before the next checkpoint leaves no region copied but unknown to the resumed pump.
    private static let reserveRegions = 64

    /// Runs `mode`'s copies (or verifications) with the governor's concurrency and pace; `unpaced` (guest writes
    /// held) uses all of `maxInFlight` at once.
    private func pass(_ mode: PassMode, verifying: Bool, unpaced: Bool = false) async throws(PumpStop) {
        let count = state.withLock { $0.tracker.regionCount }
        var cursor = 0
        var remaining: [Int] = []
        if case .round(let regions) = mode { remaining = regions.sorted(by: >) }
        let failure = await withTaskGroup(of: Void.self) { group -> PumpStop? in
            var running = 0
            while true {
                if let stop = checkRequest() {
                    await group.waitForAll()
                    return stop
                }
                if let failure = state.withLock({ $0.consecutiveFailures >= 3 ? $0.lastFailure : nil }) {
                    await group.waitForAll()
                    return .failed(failure)
                }
                let limit = unpaced ? settings.maxInFlight : await pace(bytes: 0).maxInFlight
                while running >= max(1, limit) {
                    await group.next()
                    running -= 1
                }
                // What to do next.
                let job: (region: Int, verifyOnly: Bool)? = state.withLock { state in
                    switch mode {
                    case .verifyAll:
                        while cursor < count
                            && (state.tracker.dirty.contains(cursor) || state.tracker.inFlight.contains(cursor))
                        {
                            cursor += 1
                        }
                        guard cursor < count else { return nil }
                        defer { cursor += 1 }
                        return (cursor, true)
                    case .sequential:
                        return state.tracker.nextInSequence.map { ($0, false) }
                    case .round:
                        while let region = remaining.popLast() {
                            if state.tracker.dirty.contains(region) && !state.tracker.inFlight.contains(region) {
                                return (region, false)
                            }
                        }
                        return nil
                    }
                }
                guard let job else {
                    if running > 0 {
                        await group.next()
                        running -= 1
                        continue
                    }
                    return nil
                }
                if case .sequential = mode, let failure = reserve(through: job.region) {
                    await group.waitForAll()
                    return .failed(failure)
                }
                let bytes = state.withLock { $0.tracker.range(of: job.region).count }
                if !unpaced { _ = await pace(bytes: bytes) }
                if job.verifyOnly {
                    group.addTask { await self.verify(job.region) }
                } else {
                    guard let prior = begin(job.region) else { continue }
                    stageAhead(from: job.region)
                    group.addTask { await self.copy(job.region, prior: prior, verify: verifying) }
                }
                running += 1
                if !unpaced { await checkpointIfDue() }
            }
        }
        if let failure { throw failure }
        if !unpaced { await checkpoint() }
    }

    /// Records the regions from `region` on as dirty (a block of `reserveRegions`) before the sequential pass
    /// copies into them; nil, or why it could not.
    private func reserve(through region: Int) -> String? {
        storeLock.withLock { _ -> String? in
            let block = state.withLock { state -> Range<Int>? in
                guard region >= state.reservedThrough else { return nil }
                let end = min(state.tracker.regionCount, region + Self.reserveRegions)
                return region..<end
            }
            guard let block else { return nil }
            do {
                try store.addDirty(mountID: mountID, regions: block)
            } catch {
                return "cannot record the regions about to be copied: \(error)"
            }
            state.withLock { $0.reservedThrough = block.upperBound }
            return nil
        }
    }

    /// Copies the dirty regions again, round after round (each round takes the regions dirty when it begins), until
    /// few enough are left to copy with the guest's writes held. A guest that dirties regions faster than the pump
    /// copies them would keep it here for ever: after `maxRounds` rounds it switches over anyway, holding the
    /// guest's writes for longer.
    private func converge(verifying: Bool) async throws(PumpStop) {
        let maxRounds = 12
        var round = 0
        var fewest = Int.max
        while round < maxRounds {
            let dirty = state.withLock { $0.tracker.dirty }
            guard dirty.count > Self.switchThreshold(round: round) else { return }
            // Rounds that no longer shrink the dirty set are not worth going on with.
            if round >= 3 && dirty.count >= fewest { break }
            fewest = min(fewest, dirty.count)
            try await pass(.round(dirty), verifying: verifying)
            round += 1
        }
        let left = state.withLock { $0.tracker.dirty.count }
        logger.warning(
            "the guest keeps writing faster than the relocation converges; switching over with its writes held",
            metadata: ["mount": "\(mountID)", "dirtyRegions": "\(left)", "rounds": "\(round)"])
    }

    /// How many dirty regions may be left for the switchover (copied with writes held) after `round` rounds.
    static func switchThreshold(round: Int) -> Int { 8 << min(round, 4) }

    /// Holds guest writes, copies and verifies what is still dirty, records completion, and switches the LUN.
    private func switchOver() async throws(PumpStop) {
        setPhase(.switching)
        await source.holdWrites()
        do {
            var rounds = 0
            while true {
                let dirty = state.withLock { $0.tracker.dirty }
                if dirty.isEmpty { break }
                rounds += 1
                if rounds > 5 { throw PumpStop.failed("regions still differ on the destination after 5 copies") }
                try await pass(.round(dirty), verifying: true, unpaced: true)
            }
            do {
                try await primary.device.flush()
            } catch {
                throw PumpStop.failed("flushing the destination: \(error)")
            }
        } catch let stop as PumpStop {
            source.releaseWrites()
            throw stop
        } catch {
            source.releaseWrites()
            throw .failed("\(error)")
        }
        let record = state.withLock { state -> RelocationRecord in
            state.record.phase = .completed
            state.record.completedAt = Int64(Date().timeIntervalSince1970)
            state.record.nextSequential = state.tracker.regionCount
            state.record.error = nil
            return state.record
        }
        do {
            try store.update(record)
        } catch {
            source.releaseWrites()
            state.withLock { $0.record.phase = .verifying }
            throw .failed("cannot record the switchover: \(error)")
        }
        source.setRelocationTap(nil)
        await source.switchOver(to: primary.device)
        try? store.dropRegions(mountID: mountID)
        logger.info(
            "relocation completed; the LUN is served by its primary",
            metadata: ["mount": "\(mountID)", "destination": "\(Self.redact(record.destination))"])
    }

    // MARK: - One region

    /// Marks `region` as being copied and returns what the destination held there (nil: already in flight).
    private func begin(_ region: Int) -> RegionContent? {
        state.withLock { state in
            guard !state.tracker.inFlight.contains(region) else { return nil }
            let prior = state.tracker.content[region]
            state.tracker.beginCopy(region)
            return prior
        }
    }

    /// Copies one region: zeros the cheapest way, data as one write. With `verify` the destination is read back.
    private func copy(_ region: Int, prior: RegionContent, verify: Bool) async {
        let range = state.withLock { $0.tracker.range(of: region) }
        let length = Int(range.count)
        do throws(BlockDeviceError) {
            var content: RegionContent
            var zero = source.isKnownZero(offset: range.lowerBound, length: length)
            var data: ByteBuffer?
            if !zero {
                let read = try await source.readForRelocation(offset: range.lowerBound, length: length)
                if Self.isZero(read) { zero = true } else { data = read }
            }
            if let data {
                try await primary.device.write(offset: range.lowerBound, data: data, fua: false)
                content = .data(crc: Self.crc(data))
                state.withLock { $0.record.bytesWritten += UInt64(length) }
                metrics.written.increment(by: length)
            } else {
                if prior != .zero {
                    if primary.zeroFillIsCheap {
                        try await primary.zeroFill(offset: range.lowerBound, length: UInt64(length))
                    } else {
                        try await primary.device.write(
                            offset: range.lowerBound, data: ByteBuffer(repeating: 0, count: length), fua: false)
                    }
                }
                content = .zero
                state.withLock { $0.record.bytesZero += UInt64(length) }
                metrics.zero.increment(by: length)
            }
            if verify, !(try await matches(region, range: range, content: content)) {
                state.withLock { state in
                    state.tracker.endCopy(region, content: .unknown)
                    state.tracker.verifyFailed(region)
                    state.record.verifyMismatches += 1
                }
                logger.warning("destination differs after copy", metadata: ["region": "\(region)"])
                return
            }
            state.withLock { state in
                state.tracker.endCopy(region, content: content)
                state.consecutiveFailures = 0
            }
        } catch {
            let message = "region \(region) (bytes \(range.lowerBound)-\(range.upperBound)): \(error)"
            logger.error("relocation copy failed", metadata: ["mount": "\(mountID)", "error": "\(message)"])
            state.withLock { state in
                state.tracker.failCopy(region)
                state.consecutiveFailures += 1
                state.lastFailure = message
            }
        }
    }

    /// Reads one region of the destination back and compares it with what was copied; a difference is copied again.
    private func verify(_ region: Int) async {
        let (range, content) = state.withLock { ($0.tracker.range(of: region), $0.tracker.content[region]) }
        do throws(BlockDeviceError) {
            if try await matches(region, range: range, content: content) { return }
            state.withLock { state in
                // A region the guest dirtied meanwhile is being handled by its own copy.
                guard !state.tracker.inFlight.contains(region) else { return }
                state.tracker.verifyFailed(region)
                state.record.verifyMismatches += 1
            }
            logger.warning("verification found a region different; copying it again", metadata: ["region": "\(region)"])
        } catch {
            state.withLock { state in
                state.tracker.verifyFailed(region)
                state.consecutiveFailures += 1
                state.lastFailure = "verifying region \(region): \(error)"
            }
        }
    }

    /// Whether the destination holds `content` in `range`.
    private func matches(_ region: Int, range: Range<UInt64>, content: RegionContent) async throws(BlockDeviceError)
        -> Bool
    {
        switch content {
        case .unknown:
            return false
        case .zero:
            return try await primary.inspect(offset: range.lowerBound, length: Int(range.count)) { pieces in
                pieces.allSatisfy(Self.isZero)
            }
        case .data(let crc):
            return try await primary.inspect(offset: range.lowerBound, length: Int(range.count)) { pieces in
                pieces.reduce(UInt32(0)) { livemount_crc32c_update($0, $1.baseAddress, $1.count) } == crc
            }
        }
    }

    /// Stages the backup chunks of the regions ahead of the sequential pass.
    private func stageAhead(from region: Int) {
        let ahead = max(1, (settings.stageAheadMiB << 20) / settings.regionBytes)
        let toStage: Range<Int>? = state.withLock { state in
            let from = max(state.staged, region + 1)
            let to = min(state.tracker.regionCount, region + 1 + ahead)
            guard settings.stageAheadMiB > 0, from < to, region < state.tracker.nextSequential else { return nil }
            state.staged = to
            return from..<to
        }
        guard let toStage else { return }
        let (start, end) = state.withLock { ($0.tracker.range(of: toStage.lowerBound).lowerBound, $0.tracker.range(of: toStage.upperBound - 1).upperBound) }
        source.stageForRelocation(offset: start, length: Int(end - start))
    }

    // MARK: - Pacing

    /// Waits until `bytes` may be copied under the governor's limits, and returns the limits.
    private func pace(bytes: Int) async -> GuestLoadGovernor.Limits {
        while true {
            let now = ContinuousClock.now
            let (limits, wait) = state.withLock { state -> (GuestLoadGovernor.Limits, Duration) in
                if now - state.lastTick >= .milliseconds(100) {
                    state.lastTick = now
                    state.limits = state.governor.tick(source.guestLoad)
                    state.samples.append((now, state.tracker.bytesStarted &+ state.record.bytesWritten))
                    if state.samples.count > 50 { state.samples.removeFirst(state.samples.count - 50) }
                }
                guard bytes > 0 else { return (state.limits, .zero) }
                guard let rate = state.limits.bytesPerSecond else { return (state.limits, .zero) }
                guard rate > 0 else { return (state.limits, .milliseconds(100)) }
                if state.nextStart < now { state.nextStart = now }
                let wait = state.nextStart - now
                guard wait <= .milliseconds(100) else { return (state.limits, .milliseconds(100)) }
                state.nextStart += .nanoseconds(Int64(Double(bytes) / rate * 1e9))
                return (state.limits, wait)
            }
            if wait == .zero { return limits }
            try? await Task.sleep(for: wait)
            if bytes > 0, wait < .milliseconds(100) { return limits }
            if checkRequest() != nil { return limits }
        }
    }

    // MARK: - Checkpoints

    private func checkpointIfDue() async {
        let due = state.withLock { ContinuousClock.now - $0.lastCheckpoint >= .seconds(settings.checkpointSeconds) }
        if due { await checkpoint() }
    }

    /// Flushes the destination, then records (in one transaction) the position, the regions that are dirty or whose
    /// copy may not be durable, the contents that changed, and the counters.
    private func checkpoint() async {
        let flushedThrough = state.withLock { state -> UInt64 in
            state.lastCheckpoint = .now
            return state.tracker.sequence
        }
        do {
            try await primary.device.flush()
        } catch {
            logger.error("flushing the destination failed", metadata: ["error": "\(error)"])
            return
        }
        let uncommitted = source.uncommittedRanges()
        storeLock.withLock { _ in
            let (record, snapshot) = state.withLock { state in
                var snapshot = state.tracker.durableSnapshot(flushedThrough: flushedThrough)
                for range in uncommitted {
                    guard let regions = state.tracker.regions(touching: range) else { continue }
                    for region in regions where region < snapshot.nextSequential { snapshot.dirty.insert(region) }
                }
                // The reservation stays recorded: copies into it may start before the next checkpoint.
                if snapshot.nextSequential < state.reservedThrough {
                    snapshot.dirty.formUnion(snapshot.nextSequential..<state.reservedThrough)
                }
                state.record.nextSequential = snapshot.nextSequential
                return (state.record, snapshot)
            }
            do {
                try store.checkpoint(record, dirty: snapshot.dirty, content: snapshot.content)
            } catch {
                state.withLock { $0.tracker.restoreChanged(snapshot.content.keys) }
                logger.error("relocation checkpoint failed", metadata: ["error": "\(error)"])
            }
        }
        updateMetrics()
    }

    // MARK: - Phases and requests

    /// The operator's request, acted on: nil to go on.
    private func checkRequest() -> PumpStop? {
        switch state.withLock({ $0.request }) {
        case .run: nil
        case .pause: .paused
        case .cancel: .cancelled
        case .stop: .stopped
        }
    }

    private func setPhase(_ phase: RelocationPhase) {
        state.withLock { state in
            state.record.phase = phase
            if !phase.isFinal && phase != .paused && phase != .failed { state.record.resumePhase = phase }
        }
        persist()
    }

    private func persist() {
        let record = state.withLock { $0.record }
        do {
            try store.update(record)
        } catch {
            logger.error("cannot record the relocation", metadata: ["error": "\(error)"])
        }
    }

    private func fail(_ message: String) {
        logger.error("relocation stopped", metadata: ["mount": "\(mountID)", "error": "\(message)"])
        state.withLock { state in
            state.record.phase = .failed
            state.record.error = message
        }
        persist()
    }

    private func finishCancel() {
        state.withLock { $0.record.phase = .cancelled }
        persist()
        source.setRelocationTap(nil)
        let primary = self.primary
        Task { await primary.close() }
        logger.info("relocation cancelled", metadata: ["mount": "\(mountID)"])
    }

    // MARK: - Metrics

    private func updateMetrics() {
        let status = self.status
        metrics.left.record(status.bytesLeft)
        metrics.dirty.record(status.dirtyRegions)
        metrics.rate.record(status.rateBytesPerSecond)
        metrics.backoffs.record(status.backoffs)
    }

    // MARK: - Bytes

    static func isZero(_ buffer: ByteBuffer) -> Bool {
        buffer.withUnsafeReadableBytes(isZero)
    }

    static func isZero(_ raw: UnsafeRawBufferPointer) -> Bool {
        var index = 0
        let count = raw.count
        while index + 8 <= count {
            if raw.loadUnaligned(fromByteOffset: index, as: UInt64.self) != 0 { return false }
            index += 8
        }
        while index < count {
            if raw[index] != 0 { return false }
            index += 1
        }
        return true
    }

    static func crc(_ buffer: ByteBuffer) -> UInt32 {
        buffer.withUnsafeReadableBytes { raw in livemount_crc32c_update(0, raw.baseAddress, raw.count) }
    }
}

/// The pump's metrics (swift-metrics), per target and LUN.
struct RelocationMetrics: Sendable {
    let written: Counter
    let zero: Counter
    let left: Gauge
    let dirty: Gauge
    let rate: Gauge
    let backoffs: Gauge

    init(dimensions: [(String, String)]) {
        written = Counter(label: "livemount_relocation_bytes_copied_total", dimensions: dimensions)
        zero = Counter(label: "livemount_relocation_bytes_zero_total", dimensions: dimensions)
        left = Gauge(label: "livemount_relocation_bytes_left", dimensions: dimensions)
        dirty = Gauge(label: "livemount_relocation_dirty_regions", dimensions: dimensions)
        rate = Gauge(label: "livemount_relocation_rate_bytes_per_second", dimensions: dimensions)
        backoffs = Gauge(label: "livemount_relocation_backoffs", dimensions: dimensions)
    }
}
