// The scheduling core of trace replay: which recorded read may be issued next, and when
// (issue 4, Replay; ../shared/DESIGN.md, Formats: Traces).

/// Decides, from completion events, when each read of a trace is issued in a replay.
///
/// A pure state machine in the swift-nio-ssh style: no clock, no threads, no I/O. The driver asks
/// `nextAction(now:)` what to do at replay time `now` (µs since the replay started), performs it, and reports
/// every completion with `readCompleted(_:at:)`. A discrete-event simulation drives it the same way in tests.
///
/// The rules, for read `i` of the trace (times in the trace unless said otherwise):
/// - **Order**: `i` is never issued before `i − 1` was issued.
/// - **Dependencies**: every earlier read that had completed when `i` was issued must have completed in the
///   replay before `i` is issued. As in dependency-preserving block replay (hfplayer, ARTC), a completion the
///   guest saw before it sent a command may have caused that command; reads that were still outstanding when
///   `i` was issued did not, and may overlap `i` in the replay just as they did in the trace. So reads that
///   overlapped in the trace overlap in the replay, and reads that did not, do not.
/// - **Think time**: let `p` be the earlier read with the latest completion at or before `issued_i`. `i` is
///   issued `issued_i − completed_p` after `p` completes in the replay. If no earlier read had completed,
///   `i` is issued `issued_i − issued_{i−1}` after `i − 1`'s replay issue (read 0 at once). Without think
///   time (`keepThinkTime: false`) both gaps are zero: reads go as fast as order, dependencies and sessions
///   allow.
/// - **Sessions**: at most `sessions` reads are outstanding at once (one per initiator session).
///
/// Issue times that go backwards in the trace are taken as equal to the previous read's.
public struct ReplaySchedule: Sendable {
    /// What the driver should do next.
    public enum Action: Sendable, Equatable {
        /// Issue read `index` now; the schedule has recorded it as issued at `now`.
        case issue(index: Int)
        /// Nothing can be issued before replay time `until` (µs), unless a completion arrives first.
        case wait(until: UInt64)
        /// Nothing can be issued until an outstanding read completes.
        case awaitCompletion
        /// Every read was issued and has completed.
        case finished
    }

    /// What the trace says about one read, precomputed for the replay.
    private struct Step: Sendable {
        /// The read whose replay completion anchors this read's issue time (`p` above), if any.
        var anchor: Int?
        /// The think time after the anchor event, µs: after `anchor`'s completion, or after the previous read's
        /// issue when there is no anchor.
        var gap: UInt64
        /// Where this read's new dependencies start in `dependencies` (they end where the next read's start).
        var dependencyStart: Int
    }

    /// The number of sessions (the most reads outstanding at once).
    public let sessions: Int
    /// Whether think times are kept.
    public let keepThinkTime: Bool

    private let steps: [Step]
    /// For each read, the earlier reads that completed between the previous read's issue and its own (in the
    /// trace), back to back; together with the previous read's they are all it depends on.
    private let dependencies: [Int]

    /// Replay issue time of each read (µs), once issued.
    public private(set) var issueTimes: [UInt64?]
    /// Replay completion time of each read (µs), once completed.
    public private(set) var completionTimes: [UInt64?]
    /// The earliest replay time (µs) each issued read could have been issued at; `issueTimes` minus this is
    /// how late the driver was.
    public private(set) var readyTimes: [UInt64?]
    /// The next read to issue.
    public private(set) var nextIndex = 0
    /// Reads issued and not yet completed.
    public private(set) var outstanding = 0
    /// Reads completed.
    public private(set) var completedCount = 0

    /// Builds the schedule of `reads` (in the trace's issue order) over `sessions` sessions (at least 1).
    public init(reads: [TraceRead], sessions: Int, keepThinkTime: Bool = true) {
        self.sessions = max(1, sessions)
        self.keepThinkTime = keepThinkTime
        var steps: [Step] = []
        steps.reserveCapacity(reads.count)
        var dependencies: [Int] = []
        // Reads issued so far that had not completed by the current read's issue time, in the trace.
        var pending: [Int] = []
        var anchor: Int?
        var previousIssued: UInt64 = 0
        for (index, read) in reads.enumerated() {
            let issued = max(read.issued, previousIssued)
            let start = dependencies.count
            var kept: [Int] = []
            for earlier in pending {
                if reads[earlier].completed <= issued {
                    dependencies.append(earlier)
                    if let current = anchor, reads[current].completed >= reads[earlier].completed {
                        continue
                    }
                    anchor = earlier
                } else {
                    kept.append(earlier)
                }
            }
            pending = kept
            pending.append(index)
            let gap: UInt64
            if let anchor {
                gap = issued - reads[anchor].completed
            } else {
                gap = index == 0 ? 0 : issued - previousIssued
            }
            steps.append(Step(anchor: anchor, gap: gap, dependencyStart: start))
            previousIssued = issued
        }
        self.steps = steps
        self.dependencies = dependencies
        issueTimes = Array(repeating: nil, count: reads.count)
        completionTimes = Array(repeating: nil, count: reads.count)
        readyTimes = Array(repeating: nil, count: reads.count)
    }

    /// Number of reads in the schedule.
    public var count: Int { steps.count }

    /// When the next read may be issued, without issuing anything.
    public enum Readiness: Sendable, Equatable {
        /// At replay time `at` (µs) or later; nothing that happens before then changes it.
        case at(UInt64)
        /// Not until an outstanding read completes.
        case awaitCompletion
        /// Every read was issued and has completed.
        case finished
    }

    /// When the next read may be issued. Once this is `.at(t)`, only issuing that read changes it: its
    /// dependencies have all completed, so completions of other reads do not move `t`.
    public func readiness() -> Readiness {
        guard nextIndex < steps.count else {
            return outstanding == 0 ? .finished : .awaitCompletion
        }
        guard outstanding < sessions else { return .awaitCompletion }
        let index = nextIndex
        let step = steps[index]
        let end = index + 1 < steps.count ? steps[index + 1].dependencyStart : dependencies.count
        var ready: UInt64 = 0
        for dependency in dependencies[step.dependencyStart..<end] {
            guard let completed = completionTimes[dependency] else { return .awaitCompletion }
            ready = max(ready, completed)
        }
        let gap = keepThinkTime ? step.gap : 0
        if let anchor = step.anchor {
            // The anchor is a dependency of this read or of an earlier one, so it has completed.
            ready = max(ready, (completionTimes[anchor] ?? 0) + gap)
        } else if index > 0 {
            ready = max(ready, (issueTimes[index - 1] ?? 0) + gap)
        }
        if index > 0 { ready = max(ready, issueTimes[index - 1] ?? 0) }
        return .at(ready)
    }

    /// What to do at replay time `now` (µs). When it returns `.issue`, the read counts as issued at `now`, and
    /// `readyTimes` holds when it could have been.
    public mutating func nextAction(now: UInt64) -> Action {
        switch readiness() {
        case .finished: return .finished
        case .awaitCompletion: return .awaitCompletion
        case .at(let ready):
            guard now >= ready else { return .wait(until: ready) }
            let index = nextIndex
            issueTimes[index] = now
            readyTimes[index] = ready
            nextIndex += 1
            outstanding += 1
            return .issue(index: index)
        }
    }

    /// The trace's think time as a replay keeps it: the sum of the recorded gaps (a read's completion to the
    /// next read's issue) along the replay's chain of dependencies, which is how long the replay of `reads` on
    /// `sessions` sessions takes when every read completes the instant it is issued, µs. Where reads overlapped
    /// in the trace this is more than the trace's idle time (`TraceTiming.think`): a gap counted from one
    /// read's completion may have overlapped another read that was still outstanding.
    public static func instantStorageSpan(reads: [TraceRead], sessions: Int) -> UInt64 {
        var schedule = ReplaySchedule(reads: reads, sessions: sessions, keepThinkTime: true)
        var now: UInt64 = 0
        while true {
            switch schedule.nextAction(now: now) {
            case .issue(let index): schedule.readCompleted(index, at: now)
            case .wait(let until): now = until
            // Every read completes at once, so nothing is ever outstanding.
            case .awaitCompletion, .finished: return now
            }
        }
    }

    /// Records that read `index` completed at replay time `now` (µs). A completion of a read that was not
    /// issued, or that already completed, is ignored.
    public mutating func readCompleted(_ index: Int, at now: UInt64) {
        guard issueTimes.indices.contains(index), issueTimes[index] != nil, completionTimes[index] == nil else {
            return
        }
        completionTimes[index] = now
        outstanding -= 1
        completedCount += 1
    }
}
