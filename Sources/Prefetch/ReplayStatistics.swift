// The figures a trace replay reports: think and stall time, latency distribution (issue 4, Replay).

// MARK: - The trace's own figures

/// Time figures of a trace (or of a replay's issue and completion times), in µs.
///
/// The span runs from the first issue to the last completion. Think time is the part of the span with no
/// read outstanding: the guest was computing, not waiting. Stall time is the rest, the time with at least one
/// read outstanding: what the guest spent waiting on storage.
public struct TraceTiming: Sendable, Equatable, Codable {
    /// First issue to last completion, µs.
    public var span: UInt64
    /// Time in the span with no read outstanding, µs.
    public var think: UInt64
    /// Time in the span with at least one read outstanding (`span − think`), µs.
    public var stall: UInt64 { span - think }
    /// The most reads outstanding at once.
    public var maxConcurrency: Int

    public init(span: UInt64, think: UInt64, maxConcurrency: Int) {
        self.span = span
        self.think = min(think, span)
        self.maxConcurrency = maxConcurrency
    }

    /// The figures of the intervals `[issued, completed]` of `reads` (any order).
    public init(reads: [TraceRead]) {
        self.init(intervals: reads.map { ($0.issued, $0.completed) })
    }

    /// The figures of a set of `(issued, completed)` intervals, µs (any order). A read that completes at the
    /// instant another is issued does not overlap it.
    public init(intervals: [(issued: UInt64, completed: UInt64)]) {
        guard !intervals.isEmpty else {
            self.init(span: 0, think: 0, maxConcurrency: 0)
            return
        }
        let sorted = intervals.map { ($0.issued, max($0.completed, $0.issued)) }.sorted { $0.0 < $1.0 }
        var busy: UInt64 = 0
        var runStart = sorted[0].0
        var runEnd = sorted[0].1
        for (issued, completed) in sorted.dropFirst() {
            if issued > runEnd {
                busy += runEnd - runStart
                runStart = issued
                runEnd = completed
            } else {
                runEnd = max(runEnd, completed)
            }
        }
        busy += runEnd - runStart
        let first = sorted[0].0
        let last = sorted.map(\.1).max() ?? first
        // Sweep: completions at an instant are counted before issues at the same instant.
        var events: [(time: UInt64, delta: Int)] = []
        events.reserveCapacity(sorted.count * 2)
        for (issued, completed) in sorted {
            events.append((issued, 1))
            events.append((completed, -1))
        }
        events.sort { $0.time != $1.time ? $0.time < $1.time : $0.delta < $1.delta }
        var current = 0
        var peak = 0
        for event in events {
            current += event.delta
            peak = max(peak, current)
        }
        self.init(span: last - first, think: (last - first) - busy, maxConcurrency: peak)
    }
}

// MARK: - Latency

/// The latency distribution of a replay's reads, µs.
public struct LatencySummary: Sendable, Equatable, Codable {
    public var count: Int
    public var min: Double
    public var p50: Double
    public var p90: Double
    public var p99: Double
    public var max: Double
    public var mean: Double

    public init(count: Int, min: Double, p50: Double, p90: Double, p99: Double, max: Double, mean: Double) {
        self.count = count
        self.min = min
        self.p50 = p50
        self.p90 = p90
        self.p99 = p99
        self.max = max
        self.mean = mean
    }

    /// The summary of `latencies` (µs, any order); all zero when empty. Percentiles are nearest-rank: the
    /// smallest latency at or above which the given share of reads lie.
    public init(latencies: [UInt64]) {
        guard !latencies.isEmpty else {
            self.init(count: 0, min: 0, p50: 0, p90: 0, p99: 0, max: 0, mean: 0)
            return
        }
        let sorted = latencies.sorted()
        func percentile(_ share: Double) -> Double {
            let rank = Int((share * Double(sorted.count)).rounded(.up))
            return Double(sorted[Swift.min(Swift.max(rank, 1), sorted.count) - 1])
        }
        let total = sorted.reduce(0.0) { $0 + Double($1) }
        self.init(
            count: sorted.count, min: Double(sorted[0]), p50: percentile(0.50), p90: percentile(0.90),
            p99: percentile(0.99), max: Double(sorted[sorted.count - 1]), mean: total / Double(sorted.count))
    }
}

/// One bar of the latency histogram: reads whose latency is at least `from` µs and below `upTo` µs; the last
/// bucket has no upper bound.
public struct LatencyBucket: Sendable, Equatable, Codable {
    /// Inclusive lower bound in µs.
    public var from: UInt64
    /// Exclusive upper bound in µs; nil for the last, open bucket.
    public var upTo: UInt64?
    public var count: Int

    public init(from: UInt64, upTo: UInt64?, count: Int) {
        self.from = from
        self.upTo = upTo
        self.count = count
    }

    /// A histogram of `latencies` (µs) with power-of-four bounds from 64 µs to 1 s and an open last bucket:
    /// loopback reads, SSD hits, backup fetches and timeouts each land in their own few bars. Leading and
    /// trailing empty buckets are left out.
    public static func histogram(_ latencies: [UInt64]) -> [LatencyBucket] {
        var bounds: [UInt64] = []
        var bound: UInt64 = 64
        while bound <= 1_048_576 {
            bounds.append(bound)
            bound *= 4
        }
        let lowers = [0] + bounds
        let uppers: [UInt64?] = bounds + [nil]
        var buckets = zip(lowers, uppers).map { LatencyBucket(from: $0, upTo: $1, count: 0) }
        for latency in latencies {
            let slot = bounds.firstIndex { latency < $0 } ?? bounds.count
            buckets[slot].count += 1
        }
        guard let first = buckets.firstIndex(where: { $0.count > 0 }),
            let last = buckets.lastIndex(where: { $0.count > 0 })
        else { return [] }
        return Array(buckets[first...last])
    }
}

// MARK: - The report

/// A read that failed in the replay.
public struct ReplayFailure: Sendable, Equatable, Codable {
    /// Index of the read in the (possibly limited) trace.
    public var index: Int
    /// First block, in the LUN's block size.
    public var lba: UInt64
    public var blocks: UInt32
    public var message: String

    public init(index: Int, lba: UInt64, blocks: UInt32, message: String) {
        self.index = index
        self.lba = lba
        self.blocks = blocks
        self.message = message
    }
}

/// Everything a replay measured, as `livemount trace replay --json` prints it (times in seconds, latencies
/// in µs).
public struct ReplayReport: Sendable, Equatable, Codable {
    /// Reads replayed (issued), including failed ones.
    public var reads: Int
    /// Bytes those reads asked for.
    public var bytes: UInt64
    /// Reads that failed.
    public var errors: Int
    /// Initiator sessions used.
    public var sessions: Int
    /// Whether the trace's think times were kept (false with `--no-think`).
    public var keptThinkTime: Bool
    /// Replay time from the first issue to the last completion, s.
    public var totalSeconds: Double
    /// The trace's own think time as the replay keeps it: the recorded gaps from a read's completion to the
    /// next read's issue, summed along the replay's chain of dependencies (the replay's total with instant
    /// storage, `ReplaySchedule.instantStorageSpan`), s; zero when think times were not kept.
    public var thinkSeconds: Double
    /// `totalSeconds − thinkSeconds`: what a guest would have spent waiting on storage, s.
    public var stallSeconds: Double
    /// `totalSeconds − traceThinkSeconds` (zero think when think times were not kept): the stall measured
    /// against the trace's idle time instead. Where the trace's reads overlapped, that idle time is shorter
    /// than the gaps the replay keeps, so this is larger than `stallSeconds` by the difference, whatever the
    /// storage; shown for comparison with earlier reports.
    public var idleStallSeconds: Double
    /// The trace's own span (first issue to last completion), s.
    public var traceSpanSeconds: Double
    /// The trace's own think time, s (also when think times were not kept).
    public var traceThinkSeconds: Double
    /// The trace's own stall time (`traceSpanSeconds − traceThinkSeconds`), s.
    public var traceStallSeconds: Double
    /// The most reads outstanding at once in the trace.
    public var traceMaxConcurrency: Int
    /// The most reads outstanding at once in the replay.
    public var replayMaxConcurrency: Int
    /// The replay's own lateness: the sum over reads of how long after the schedule allowed it each was sent,
    /// s. It is part of `stallSeconds` (a guest would not have had it), shown so that a slow harness is not
    /// mistaken for slow storage; it should be a small fraction of the stall.
    public var harnessLateSeconds: Double
    /// Latencies of the reads that succeeded, µs.
    public var latency: LatencySummary
    /// Their histogram.
    public var histogram: [LatencyBucket]
    /// Every failed read, in index order.
    public var failures: [ReplayFailure]

    /// Computes the report of a replay of `reads` (as replayed: in the LUN's block size) with `blockSize`-byte
    /// blocks.
    public init(reads: [TraceRead], blockSize: Int, outcome: ReplayOutcome) {
        let trace = TraceTiming(reads: reads)
        let intervals = zip(outcome.issueTimes, outcome.completionTimes).map { (issued: $0, completed: $1) }
        let replay = TraceTiming(intervals: intervals)
        let latencies = outcome.latencies(excluding: Set(outcome.failures.map(\.index)))
        self.reads = reads.count
        bytes = reads.reduce(0) { $0 + UInt64($1.blocks) * UInt64(blockSize) }
        errors = outcome.failures.count
        sessions = outcome.sessions
        keptThinkTime = outcome.keptThinkTime
        totalSeconds = Double(replay.span) / 1e6
        let think = ReplaySchedule.instantStorageSpan(reads: reads, sessions: max(1, outcome.sessions))
        thinkSeconds = outcome.keptThinkTime ? Double(think) / 1e6 : 0
        stallSeconds = totalSeconds - thinkSeconds
        idleStallSeconds = totalSeconds - (outcome.keptThinkTime ? Double(trace.think) / 1e6 : 0)
        traceSpanSeconds = Double(trace.span) / 1e6
        traceThinkSeconds = Double(trace.think) / 1e6
        traceStallSeconds = Double(trace.stall) / 1e6
        traceMaxConcurrency = trace.maxConcurrency
        replayMaxConcurrency = replay.maxConcurrency
        harnessLateSeconds = Double(outcome.lateness.reduce(0, +)) / 1e6
        latency = LatencySummary(latencies: latencies)
        histogram = LatencyBucket.histogram(latencies)
        failures = outcome.failures.sorted { $0.index < $1.index }
    }
}
