// Trace replay's driver: runs a `ReplaySchedule` against real sessions on their own threads (issue 4, Replay).
import Foundation

// MARK: - Sessions

/// One initiator session a replay reads through.
///
/// `read` blocks its thread until the LUN answers, so a replay gives each session a thread of its own and
/// calls it from that thread only (libiscsi's sync API is one context per thread). Tests use an in-memory
/// fake; `ISCSIReplaySession` is the libiscsi one.
public protocol ReplayDevice: Sendable {
    /// Reads `blocks` blocks at `lba` (in the LUN's block size) and discards the data.
    func read(lba: UInt64, blocks: UInt32) throws
}

// MARK: - Errors

/// A replay that cannot start: a bad trace, a LUN it does not fit, no session.
public struct ReplayError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The trace or an option is unusable.
        case invalidArgument
        /// A read lies beyond the LUN's capacity.
        case outOfRange
        /// The LUN could not be reached or logged in to.
        case connectFailed
    }
    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }

    public static func invalidArgument(_ message: String) -> Self { .init(.invalidArgument, message) }
    public static func outOfRange(_ message: String) -> Self { .init(.outOfRange, message) }
    public static func connectFailed(_ message: String) -> Self { .init(.connectFailed, message) }
}

// MARK: - Preparing a trace

/// Helpers that turn a stored trace into the reads a replay sends.
public enum Replay {
    /// The most sessions a replay opens by default.
    public static let maxDefaultSessions = 32

    /// The first `limit` reads of `trace` (all when nil), with LBAs and lengths converted from the trace's
    /// block size to `lunBlockSize`. A read that does not fall on the LUN's block boundaries is widened to
    /// whole LUN blocks.
    public static func reads(of trace: Trace, limit: Int? = nil, lunBlockSize: Int) throws(ReplayError)
        -> [TraceRead]
    {
        let traceBlockSize = trace.info.blockSize
        guard traceBlockSize > 0, lunBlockSize > 0 else {
            throw .invalidArgument("block size \(traceBlockSize) (trace) or \(lunBlockSize) (LUN) is not positive")
        }
        let selected = limit.map { Array(trace.reads.prefix(max(0, $0))) } ?? trace.reads
        guard traceBlockSize != lunBlockSize else { return selected }
        var converted: [TraceRead] = []
        converted.reserveCapacity(selected.count)
        for (index, read) in selected.enumerated() {
            let (start, startOverflow) = read.lba.multipliedReportingOverflow(by: UInt64(traceBlockSize))
            let length = UInt64(read.blocks) * UInt64(traceBlockSize)
            let (end, endOverflow) = start.addingReportingOverflow(length)
            guard !startOverflow, !endOverflow else {
                throw .outOfRange("read \(index) at LBA \(read.lba) lies beyond any LUN")
            }
            let size = UInt64(lunBlockSize)
            let first = start / size
            let last = (end + size - 1) / size
            guard let blocks = UInt32(exactly: last - first) else {
                throw .invalidArgument("read \(index) at LBA \(read.lba) is too long for one READ (16)")
            }
            var copy = read
            copy.lba = first
            copy.blocks = blocks
            converted.append(copy)
        }
        return converted
    }

    /// Checks that every read (in LUN blocks) lies inside a LUN of `blockCount` blocks; the error names the
    /// first that does not, before anything is sent.
    public static func checkCapacity(_ reads: [TraceRead], blockCount: UInt64) throws(ReplayError) {
        for (index, read) in reads.enumerated() {
            let (end, overflow) = read.lba.addingReportingOverflow(UInt64(read.blocks))
            if overflow || end > blockCount {
                throw .outOfRange(
                    "read \(index) at LBA \(read.lba) (\(read.blocks) blocks) ends beyond the LUN's \(blockCount) blocks"
                )
            }
        }
    }

    /// The default session count: the trace's maximum concurrency, at least 1 and at most
    /// `maxDefaultSessions`.
    public static func defaultSessions(for reads: [TraceRead]) -> Int {
        min(max(1, TraceTiming(reads: reads).maxConcurrency), maxDefaultSessions)
    }
}

// MARK: - The outcome

/// What a replay observed, per read (times in µs since the replay started, measured around each session's
/// blocking read).
public struct ReplayOutcome: Sendable, Equatable {
    /// When each read was sent.
    public var issueTimes: [UInt64]
    /// When each read's answer came back.
    public var completionTimes: [UInt64]
    /// The reads that failed.
    public var failures: [ReplayFailure]
    /// Sessions used.
    public var sessions: Int
    /// Whether think times were kept.
    public var keptThinkTime: Bool

    public init(
        issueTimes: [UInt64], completionTimes: [UInt64], failures: [ReplayFailure], sessions: Int,
        keptThinkTime: Bool
    ) {
        self.issueTimes = issueTimes
        self.completionTimes = completionTimes
        self.failures = failures
        self.sessions = sessions
        self.keptThinkTime = keptThinkTime
    }

    /// Latency of every read not in `excluded`, µs.
    public func latencies(excluding excluded: Set<Int> = []) -> [UInt64] {
        var result: [UInt64] = []
        result.reserveCapacity(issueTimes.count)
        for index in issueTimes.indices where !excluded.contains(index) {
            result.append(completionTimes[index] >= issueTimes[index] ? completionTimes[index] - issueTimes[index] : 0)
        }
        return result
    }
}

// MARK: - The driver

/// Replays reads through a set of sessions, one thread per session, following a `ReplaySchedule`.
///
/// The calling thread is the coordinator: it asks the schedule what to do, hands each read to an idle
/// session's thread, and sleeps until the next issue time or the next completion. It blocks, so call it from a
/// thread of its own (`runOnThread`), never from Swift concurrency's cooperative pool.
public enum ReplayDriver {
    /// Below this many µs before an issue time the coordinator spins instead of sleeping: a condition
    /// variable wakes tens of µs late, and a boot trace has thousands of short think times.
    static let spinMicroseconds: UInt64 = 1000

    /// Replays `reads` (in the LUN's block size, in trace order) through `devices`, one session each; the
    /// schedule allows as many reads outstanding as there are devices. `progress` is called on the
    /// coordinator's thread about once a second with (reads completed, reads in all).
    public static func run(
        reads: [TraceRead], devices: [any ReplayDevice], keepThinkTime: Bool = true,
        progress: (@Sendable (Int, Int) -> Void)? = nil
    ) -> ReplayOutcome {
        let coordinator = Coordinator(count: reads.count)
        let workers = devices.enumerated().map { Worker(id: $0.offset, device: $0.element, coordinator: coordinator) }
        guard !workers.isEmpty else {
            return ReplayOutcome(
                issueTimes: [], completionTimes: [],
                failures: reads.indices.map {
                    ReplayFailure(index: $0, lba: reads[$0].lba, blocks: reads[$0].blocks, message: "no session")
                }, sessions: 0, keptThinkTime: keepThinkTime)
        }
        var schedule = ReplaySchedule(reads: reads, sessions: workers.count, keepThinkTime: keepThinkTime)
        let group = DispatchGroup()
        for worker in workers { worker.start(group: group) }
        var idle = Array(workers.reversed())
        var failures: [ReplayFailure] = []
        var nextProgress: UInt64 = 1_000_000

        coordinator.condition.lock()
        loop: while true {
            for completion in coordinator.completions {
                schedule.readCompleted(completion.index, at: completion.completed)
                idle.append(workers[completion.worker])
                if let message = completion.error {
                    let read = reads[completion.index]
                    failures.append(
                        ReplayFailure(index: completion.index, lba: read.lba, blocks: read.blocks, message: message))
                }
            }
            coordinator.completions.removeAll(keepingCapacity: true)
            let now = coordinator.clock.now
            if let progress, now >= nextProgress {
                progress(schedule.completedCount, reads.count)
                nextProgress = now + 1_000_000
            }
            switch schedule.nextAction(now: now) {
            case .issue(let index):
                // The schedule never issues more reads than there are sessions, so one is idle.
                guard let worker = idle.popLast() else { preconditionFailure("replay schedule exceeded its sessions") }
                worker.assign(index: index, read: reads[index])
            case .wait(let until):
                let remaining = until > now ? until - now : 0
                if remaining > spinMicroseconds {
                    let sleep = Double(remaining - spinMicroseconds / 2) / 1e6
                    _ = coordinator.condition.wait(until: Date(timeIntervalSinceNow: sleep))
                } else {
                    coordinator.condition.unlock()
                    while coordinator.clock.now < until && !coordinator.hasCompletions {
                        sched_yield()
                    }
                    coordinator.condition.lock()
                }
            case .awaitCompletion:
                while coordinator.completions.isEmpty { coordinator.condition.wait() }
            case .finished:
                break loop
            }
        }
        coordinator.condition.unlock()
        for worker in workers { worker.stop() }
        group.wait()
        progress?(schedule.completedCount, reads.count)
        return ReplayOutcome(
            issueTimes: coordinator.issueTimes, completionTimes: coordinator.completionTimes,
            failures: failures.sorted { $0.index < $1.index }, sessions: workers.count, keptThinkTime: keepThinkTime)
    }

    /// `run` on a thread of its own, for callers in Swift concurrency.
    public static func runOnThread(
        reads: [TraceRead], devices: [any ReplayDevice], keepThinkTime: Bool = true,
        progress: (@Sendable (Int, Int) -> Void)? = nil
    ) async -> ReplayOutcome {
        await withCheckedContinuation { continuation in
            let thread = Thread {
                continuation.resume(
                    returning: run(reads: reads, devices: devices, keepThinkTime: keepThinkTime, progress: progress))
            }
            thread.name = "livemount.replay"
            thread.stackSize = 1 << 20
            thread.start()
        }
    }
}

// MARK: - Threads

/// A monotonic clock in µs since the replay started.
struct ReplayClock: Sendable {
    private let origin = DispatchTime.now().uptimeNanoseconds

    var now: UInt64 { (DispatchTime.now().uptimeNanoseconds - origin) / 1000 }
}

/// What the session threads share with the coordinator: completions and the measured times, under one
/// condition variable.
private final class Coordinator: @unchecked Sendable {
    struct Completion {
        var index: Int
        var worker: Int
        var completed: UInt64
        var error: String?
    }

    let condition = NSCondition()
    let clock = ReplayClock()
    /// Completions the coordinator has not handled yet (under `condition`).
    var completions: [Completion] = []
    /// Measured times per read (under `condition`).
    var issueTimes: [UInt64]
    var completionTimes: [UInt64]

    init(count: Int) {
        issueTimes = Array(repeating: 0, count: count)
        completionTimes = Array(repeating: 0, count: count)
    }

    var hasCompletions: Bool {
        condition.lock()
        defer { condition.unlock() }
        return !completions.isEmpty
    }

    func complete(index: Int, worker: Int, issued: UInt64, completed: UInt64, error: String?) {
        condition.lock()
        issueTimes[index] = issued
        completionTimes[index] = completed
        completions.append(Completion(index: index, worker: worker, completed: completed, error: error))
        condition.signal()
        condition.unlock()
    }
}

/// One session's thread: waits for a read, performs it, reports the completion.
private final class Worker: @unchecked Sendable {
    private struct Job {
        var index: Int
        var read: TraceRead
    }

    let id: Int
    private let device: any ReplayDevice
    private let coordinator: Coordinator
    private let wake = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    /// The read to do next; nil after a wake-up means stop (under `lock`).
    private var job: Job?

    init(id: Int, device: any ReplayDevice, coordinator: Coordinator) {
        self.id = id
        self.device = device
        self.coordinator = coordinator
    }

    func start(group: DispatchGroup) {
        group.enter()
        let thread = Thread { [self] in
            loop()
            group.leave()
        }
        thread.name = "livemount.replay.\(id)"
        thread.stackSize = 1 << 20
        thread.start()
    }

    func assign(index: Int, read: TraceRead) {
        lock.withLock { job = Job(index: index, read: read) }
        wake.signal()
    }

    func stop() {
        lock.withLock { job = nil }
        wake.signal()
    }

    private func loop() {
        while true {
            wake.wait()
            guard let job = lock.withLock({ self.job.take() }) else { return }
            let issued = coordinator.clock.now
            var failure: String?
            do {
                try device.read(lba: job.read.lba, blocks: job.read.blocks)
            } catch {
                failure = "\(error)"
            }
            let completed = coordinator.clock.now
            coordinator.complete(index: job.index, worker: id, issued: issued, completed: completed, error: failure)
        }
    }
}
