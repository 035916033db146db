// Trace replay's driver: runs a `ReplaySchedule` against real sessions on their own threads (issue 4, Replay).
import Foundation
#if canImport(Glibc)
import Glibc
#endif

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
    /// When each read could have been sent by the schedule (its dependencies and think time); empty when not
    /// measured. `issueTimes` minus this is the driver's own lateness.
    public var readyTimes: [UInt64]
    /// The reads that failed.
    public var failures: [ReplayFailure]
    /// Sessions used.
    public var sessions: Int
    /// Whether think times were kept.
    public var keptThinkTime: Bool

    public init(
        issueTimes: [UInt64], completionTimes: [UInt64], readyTimes: [UInt64] = [], failures: [ReplayFailure],
        sessions: Int, keptThinkTime: Bool
    ) {
        self.issueTimes = issueTimes
        self.completionTimes = completionTimes
        self.readyTimes = readyTimes
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

    /// How late the driver sent each read after the schedule allowed it, µs (empty when not measured).
    public var lateness: [UInt64] {
        guard readyTimes.count == issueTimes.count else { return [] }
        return zip(issueTimes, readyTimes).map { $0 > $1 ? $0 - $1 : 0 }
    }
}

// MARK: - The driver

/// Replays reads through a set of sessions, one thread per session, following a `ReplaySchedule`.
///
/// There is no coordinator thread: the session threads share the schedule under one lock, and whichever
/// thread is free asks it what to do. The thread whose read completes sends the next read itself when it is
/// due, so a guest-like chain of dependent reads costs no hand-off between threads. At most one free thread
/// waits for a think time to pass (sleeping to an absolute deadline, then spinning the last
/// `spinMicroseconds`); the others wait for a completion. A thread that sends a read wakes a free one only if
/// another read could follow without waiting for a completion.
///
/// The calling thread only waits, and reports progress about once a second; it blocks, so call it from a
/// thread of its own (`runOnThread`), never from Swift concurrency's cooperative pool.
public enum ReplayDriver {
    /// The last part of a think time, µs, that a thread spins through instead of sleeping: a sleeping thread
    /// wakes tens of µs late, and a boot trace has thousands of short think times.
    public static let defaultSpinMicroseconds: UInt64 = 100

    /// Replays `reads` (in the LUN's block size, in trace order) through `devices`, one session each; the
    /// schedule allows as many reads outstanding as there are devices. The thread waiting out a think time
    /// spins through its last `spinMicroseconds` (`.max`: all of it, as a guest's vCPU computes through its
    /// think time rather than idling). `progress` is called on the calling thread about once a second with
    /// (reads completed, reads in all).
    public static func run(
        reads: [TraceRead], devices: [any ReplayDevice], keepThinkTime: Bool = true,
        spinMicroseconds: UInt64 = defaultSpinMicroseconds, progress: (@Sendable (Int, Int) -> Void)? = nil
    ) -> ReplayOutcome {
        guard !devices.isEmpty else {
            return ReplayOutcome(
                issueTimes: [], completionTimes: [],
                failures: reads.indices.map {
                    ReplayFailure(index: $0, lba: reads[$0].lba, blocks: reads[$0].blocks, message: "no session")
                }, sessions: 0, keptThinkTime: keepThinkTime)
        }
        let shared = SharedSchedule(
            reads: reads, schedule: ReplaySchedule(reads: reads, sessions: devices.count, keepThinkTime: keepThinkTime),
            spinMicroseconds: spinMicroseconds)
        let group = DispatchGroup()
        for (id, device) in devices.enumerated() {
            group.enter()
            let thread = Thread {
                shared.serve(device)
                group.leave()
            }
            thread.name = "livemount.replay.\(id)"
            thread.stackSize = 1 << 20
            thread.start()
        }
        while group.wait(timeout: .now() + 1) == .timedOut {
            progress?(shared.completedCount, reads.count)
        }
        return shared.outcome(sessions: devices.count, keptThinkTime: keepThinkTime, progress: progress)
    }

    /// `run` on a thread of its own, for callers in Swift concurrency.
    public static func runOnThread(
        reads: [TraceRead], devices: [any ReplayDevice], keepThinkTime: Bool = true,
        spinMicroseconds: UInt64 = defaultSpinMicroseconds, progress: (@Sendable (Int, Int) -> Void)? = nil
    ) async -> ReplayOutcome {
        await withCheckedContinuation { continuation in
            let thread = Thread {
                continuation.resume(
                    returning: run(
                        reads: reads, devices: devices, keepThinkTime: keepThinkTime,
                        spinMicroseconds: spinMicroseconds, progress: progress))
            }
            thread.name = "livemount.replay"
            thread.stackSize = 1 << 20
            thread.start()
        }
    }
}

// MARK: - Threads

/// A monotonic clock in µs since the replay started (CLOCK_MONOTONIC, the clock `sleep(until:)` sleeps on).
struct ReplayClock: Sendable {
    private let origin = ReplayClock.monotonicNanoseconds()

    var now: UInt64 { (Self.monotonicNanoseconds() - origin) / 1000 }

    static func monotonicNanoseconds() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }

    /// Blocks until replay time `until` (µs): sleeps to an absolute deadline `spin` µs before it, then spins.
    func sleep(until: UInt64, spin: UInt64) {
        let current = now
        if until > current, until - current > spin {
            let deadline = origin + (until - spin) * 1000
            var spec = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
            while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &spec, nil) == EINTR {}
        }
        while now < until {}
    }
}

/// The schedule and the measured times, shared by the session threads under one condition variable.
private final class SharedSchedule: @unchecked Sendable {
    private let reads: [TraceRead]
    private let condition = NSCondition()
    private let clock = ReplayClock()
    // Everything below is under `condition`.
    private var schedule: ReplaySchedule
    private var issueTimes: [UInt64]
    private var completionTimes: [UInt64]
    private var failures: [ReplayFailure] = []
    /// A free thread is sleeping until the next read is due.
    private var timerHeld = false
    /// Free threads waiting on `condition`.
    private var waiting = 0
    private let spinMicroseconds: UInt64

    init(reads: [TraceRead], schedule: ReplaySchedule, spinMicroseconds: UInt64) {
        self.reads = reads
        self.schedule = schedule
        self.spinMicroseconds = spinMicroseconds
        issueTimes = Array(repeating: 0, count: reads.count)
        completionTimes = Array(repeating: 0, count: reads.count)
    }

    var completedCount: Int { condition.withLock { schedule.completedCount } }

    /// One session's thread: sends what is due through `device` until every read has completed.
    func serve(_ device: any ReplayDevice) {
        condition.lock()
        while true {
            switch schedule.nextAction(now: clock.now) {
            case .issue(let index):
                if waiting > 0, !timerHeld, case .at = schedule.readiness() {
                    // Another read can follow without a completion: a free thread must see to it.
                    condition.signal()
                }
                condition.unlock()
                let read = reads[index]
                let issued = clock.now
                var failure: String?
                do {
                    try device.read(lba: read.lba, blocks: read.blocks)
                } catch {
                    failure = "\(error)"
                }
                let completed = clock.now
                condition.lock()
                issueTimes[index] = issued
                completionTimes[index] = completed
                schedule.readCompleted(index, at: completed)
                if let failure {
                    failures.append(ReplayFailure(index: index, lba: read.lba, blocks: read.blocks, message: failure))
                }
            case .wait(let until) where !timerHeld:
                // Nothing but sending this read changes `until` (ReplaySchedule.readiness), so sleep to it.
                timerHeld = true
                condition.unlock()
                clock.sleep(until: until, spin: spinMicroseconds)
                condition.lock()
                timerHeld = false
            case .wait, .awaitCompletion:
                waiting += 1
                condition.wait()
                waiting -= 1
            case .finished:
                condition.broadcast()
                condition.unlock()
                return
            }
        }
    }

    func outcome(sessions: Int, keptThinkTime: Bool, progress: (@Sendable (Int, Int) -> Void)?) -> ReplayOutcome {
        condition.lock()
        defer { condition.unlock() }
        progress?(schedule.completedCount, reads.count)
        return ReplayOutcome(
            issueTimes: issueTimes, completionTimes: completionTimes,
            readyTimes: schedule.readyTimes.map { $0 ?? 0 },
            failures: failures.sorted { $0.index < $1.index }, sessions: sessions, keptThinkTime: keptThinkTime)
    }
}
