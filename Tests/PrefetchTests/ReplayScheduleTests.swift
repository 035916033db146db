import Prefetch
import Testing

// MARK: - A discrete-event simulation of a replay

/// What a simulated replay did: replay issue and completion times per read (µs).
struct SimulatedReplay {
    var issued: [UInt64]
    var completed: [UInt64]

    /// The most reads outstanding at once (a completion at the instant of an issue does not overlap it).
    var maxConcurrency: Int {
        TraceTiming(intervals: zip(issued, completed).map { (issued: $0, completed: $1) }).maxConcurrency
    }
}

/// Drives a `ReplaySchedule` with a virtual clock: every read takes `service(index)` µs, and time jumps to
/// the next issue time or completion. Deterministic: simultaneous completions are delivered in index order.
func simulate(
    _ reads: [TraceRead], sessions: Int, keepThinkTime: Bool = true, service: (Int) -> UInt64
) throws -> SimulatedReplay {
    var schedule = ReplaySchedule(reads: reads, sessions: sessions, keepThinkTime: keepThinkTime)
    var now: UInt64 = 0
    var inFlight: [(time: UInt64, index: Int)] = []
    var issued = [UInt64](repeating: 0, count: reads.count)
    var completed = [UInt64](repeating: 0, count: reads.count)

    func completeEarliest() -> Bool {
        guard
            let earliest = inFlight.indices.min(by: {
                (inFlight[$0].time, inFlight[$0].index) < (inFlight[$1].time, inFlight[$1].index)
            })
        else { return false }
        let event = inFlight.remove(at: earliest)
        now = max(now, event.time)
        completed[event.index] = event.time
        schedule.readCompleted(event.index, at: event.time)
        return true
    }

    for _ in 0..<(reads.count * 8 + 16) {
        switch schedule.nextAction(now: now) {
        case .issue(let index):
            issued[index] = now
            inFlight.append((now + service(index), index))
        case .wait(let until):
            try #require(until > now, "a wait must lie in the future")
            if let earliest = inFlight.map(\.time).min(), earliest <= until {
                _ = completeEarliest()
            } else {
                now = until
            }
        case .awaitCompletion:
            try #require(completeEarliest(), "the schedule waits for a completion while nothing is in flight")
        case .finished:
            return SimulatedReplay(issued: issued, completed: completed)
        }
    }
    Issue.record("the schedule did not finish")
    return SimulatedReplay(issued: issued, completed: completed)
}

/// A read of `blocks` blocks at `lba` issued and completed at the given µs.
func read(_ issued: UInt64, _ completed: UInt64, lba: UInt64 = 0, blocks: UInt32 = 8) -> TraceRead {
    TraceRead(issued: issued, completed: completed, lba: lba, blocks: blocks, source: .backup, prefetched: false)
}

/// A sequential trace: one read at a time, each after its own think time, with varied service times.
func sequentialTrace(thinks: [UInt64], services: [UInt64]) -> [TraceRead] {
    var reads: [TraceRead] = []
    var clock: UInt64 = 0
    for (index, think) in thinks.enumerated() {
        let issued = clock + think
        let completed = issued + services[index % services.count]
        reads.append(read(issued, completed, lba: UInt64(index) * 64))
        clock = completed
    }
    return reads
}

/// A trace of bursts: `width` reads issued 5 µs apart, all in flight together, then a think time before the
/// next burst; the trace's maximum concurrency is `width`.
func burstTrace(bursts: Int, width: Int) -> [TraceRead] {
    var reads: [TraceRead] = []
    var clock: UInt64 = 1000
    for burst in 0..<bursts {
        var last: UInt64 = clock
        for slot in 0..<width {
            let issued = clock + UInt64(slot) * 5
            let completed = issued + 400 + UInt64((burst * 7 + slot * 13) % 50)
            reads.append(read(issued, completed, lba: UInt64(reads.count) * 8))
            last = max(last, completed)
        }
        clock = last + 2000 + UInt64(burst % 3) * 700
    }
    return reads
}

// MARK: - Schedule

@Suite("Replay schedule")
struct ReplayScheduleTests {
    @Test("a sequential trace's think times are reproduced exactly")
    func sequentialThinkTimes() throws {
        let thinks: [UInt64] = [0, 5, 1000, 0, 20000, 37, 1, 450, 0, 3000]
        let reads = sequentialTrace(thinks: thinks, services: [100, 900, 250, 4000])
        let replay = try simulate(reads, sessions: 1) { _ in 250 }
        #expect(replay.issued[0] == 0)
        for index in 1..<reads.count {
            #expect(replay.issued[index] - replay.completed[index - 1] == thinks[index])
        }
        #expect(replay.maxConcurrency == 1)
        // Total = service + think; so the stall (total − the trace's think time) is the service time alone.
        let total = try #require(replay.completed.last) - replay.issued[0]
        let think = TraceTiming(reads: reads).think
        #expect(think == thinks.dropFirst().reduce(0, +))
        #expect(total - think == UInt64(reads.count) * 250)
    }

    @Test("reads that overlapped in the trace overlap in the replay; max concurrency equals the trace's")
    func overlapKept() throws {
        let reads = burstTrace(bursts: 6, width: 4)
        let timing = TraceTiming(reads: reads)
        #expect(timing.maxConcurrency == 4)
        let replay = try simulate(reads, sessions: Replay.defaultSessions(for: reads)) { _ in 300 }
        #expect(replay.maxConcurrency == timing.maxConcurrency)
        for a in reads.indices {
            for b in reads.indices where a < b {
                let inTrace = reads[b].issued < reads[a].completed
                let inReplay = replay.issued[b] < replay.completed[a]
                #expect(inTrace == inReplay, "reads \(a) and \(b)")
            }
        }
        // Within a burst the reads keep their 5 µs spacing; between bursts the think time is kept.
        #expect(replay.issued[1] - replay.issued[0] == 5)
        #expect(replay.issued[4] - replay.completed[3] == reads[4].issued - reads[3].completed)
    }

    @Test("reads are issued in trace order")
    func orderKept() throws {
        let reads =
            burstTrace(bursts: 5, width: 3)
            + sequentialTrace(thinks: [0, 10, 0, 7], services: [50]).map {
                read($0.issued + 100_000, $0.completed + 100_000, lba: $0.lba)
            }
        // Service times that vary, so completions come back out of order.
        let replay = try simulate(reads, sessions: 3) { index in UInt64(100 + (index * 37) % 400) }
        for index in 1..<reads.count {
            #expect(replay.issued[index] >= replay.issued[index - 1])
        }
    }

    @Test("no read waits on a read the trace did not wait on, and waits on every one it did")
    func dependencies() throws {
        // r0 is slow in the trace; r1 goes while r0 is outstanding; r2 goes after both completed, 100 µs after
        // r1 (the latest completion).
        let reads = [read(0, 50), read(10, 200), read(300, 400)]
        let replay = try simulate(reads, sessions: 4) { _ in 1000 }
        #expect(replay.issued == [0, 10, 1110])
        // Faster storage than the trace's: the same gaps after the replay's own completions.
        let fast = try simulate(reads, sessions: 4) { _ in 20 }
        #expect(fast.issued == [0, 10, 130])
    }

    @Test("a read with nothing completed before it goes its issue gap after the previous read")
    func noAnchor() throws {
        let reads = [read(0, 10_000), read(100, 9000), read(300, 9500)]
        let replay = try simulate(reads, sessions: 3) { _ in 5000 }
        #expect(replay.issued == [0, 100, 300])
        #expect(replay.maxConcurrency == 3)
    }

    @Test("without think time reads follow their dependencies at once")
    func noThink() throws {
        let reads = sequentialTrace(thinks: [0, 500, 1000, 0, 20000], services: [100])
        let replay = try simulate(reads, sessions: 1, keepThinkTime: false) { _ in 250 }
        for index in 1..<reads.count {
            #expect(replay.issued[index] == replay.completed[index - 1])
        }
        let bursts = try simulate(burstTrace(bursts: 3, width: 4), sessions: 4, keepThinkTime: false) { _ in 300 }
        #expect(bursts.issued[0...3].allSatisfy { $0 == 0 })
        #expect(bursts.maxConcurrency == 4)
    }

    @Test("fewer sessions than the trace's concurrency caps the reads in flight")
    func sessionCap() throws {
        let reads = burstTrace(bursts: 4, width: 8)
        let replay = try simulate(reads, sessions: 2) { _ in 300 }
        #expect(replay.maxConcurrency == 2)
        #expect(replay.completed.allSatisfy { $0 > 0 })
    }

    @Test("issue times that go backwards count as the previous read's")
    func backwardsIssueTimes() throws {
        let reads = [read(100, 200), read(50, 300)]
        let replay = try simulate(reads, sessions: 2) { _ in 1000 }
        #expect(replay.issued == [0, 0])
    }

    @Test("an empty trace is finished at once; stray completions are ignored")
    func emptyAndStray() {
        var empty = ReplaySchedule(reads: [], sessions: 4)
        #expect(empty.nextAction(now: 0) == .finished)
        var schedule = ReplaySchedule(reads: [read(0, 10)], sessions: 1)
        schedule.readCompleted(0, at: 5)
        schedule.readCompleted(7, at: 5)
        #expect(schedule.completedCount == 0)
        #expect(schedule.nextAction(now: 0) == .issue(index: 0))
        #expect(schedule.nextAction(now: 0) == .awaitCompletion)
        schedule.readCompleted(0, at: 12)
        schedule.readCompleted(0, at: 13)
        #expect(schedule.completedCount == 1)
        #expect(schedule.nextAction(now: 12) == .finished)
    }
}

// MARK: - Think time, stall and latency arithmetic

@Suite("Replay figures")
struct ReplayFigureTests {
    @Test("think time is the trace's span with no read outstanding")
    func thinkAndStall() {
        let reads = [read(0, 100), read(50, 150), read(300, 400), read(1000, 1200)]
        let timing = TraceTiming(reads: reads)
        #expect(timing.span == 1200)
        #expect(timing.think == 150 + 600)
        #expect(timing.stall == 450)
        #expect(timing.maxConcurrency == 2)
    }

    @Test("a read completing at the instant the next is issued does not overlap it")
    func touchingReads() {
        let timing = TraceTiming(reads: [read(0, 100), read(100, 200), read(200, 200)])
        #expect(timing.think == 0)
        #expect(timing.stall == 200)
        #expect(timing.maxConcurrency == 1)
    }

    @Test("a read nested in another adds no stall; a trace not starting at 0 spans from its first issue")
    func nested() {
        let timing = TraceTiming(reads: [read(1000, 2000), read(1200, 1300), read(2500, 2600)])
        #expect(timing.span == 1600)
        #expect(timing.stall == 1100)
        #expect(timing.think == 500)
    }

    @Test("the think time of a sequential trace is the sum of its gaps; with instant storage a replay takes that")
    func instantStorageSequential() throws {
        let thinks: [UInt64] = [0, 5, 1000, 0, 20000, 37, 1, 450, 0, 3000]
        let reads = sequentialTrace(thinks: thinks, services: [100, 900, 250, 4000])
        #expect(ReplaySchedule.instantStorageSpan(reads: reads, sessions: 1) == thinks.reduce(0, +))
        #expect(ReplaySchedule.instantStorageSpan(reads: reads, sessions: 4) == thinks.reduce(0, +))
        // Equal to the trace's idle time when no reads overlap.
        #expect(ReplaySchedule.instantStorageSpan(reads: reads, sessions: 1) == TraceTiming(reads: reads).think)
        let replay = try simulate(reads, sessions: 1) { _ in 0 }
        #expect(replay.completed.last == thinks.reduce(0, +))
    }

    @Test("with overlapping reads the kept gaps exceed the trace's idle time; a simulated replay agrees")
    func instantStorageOverlap() throws {
        let reads = burstTrace(bursts: 6, width: 3)
        let span = ReplaySchedule.instantStorageSpan(reads: reads, sessions: 3)
        let replay = try simulate(reads, sessions: 3) { _ in 0 }
        #expect(span == replay.completed.max())
        // A burst's reads go 5 µs apart while the first is outstanding, so up to 10 µs per burst that the trace
        // did not spend idle are kept as gaps.
        let idle = TraceTiming(reads: reads).think
        #expect(span > idle)
        #expect(span - idle <= 6 * 10)
    }

    @Test("readiness is a pure look ahead: it names the time nextAction issues at, and moves only on issue")
    func readiness() {
        let reads = sequentialTrace(thinks: [0, 300, 700], services: [100])
        var schedule = ReplaySchedule(reads: reads, sessions: 2)
        #expect(schedule.readiness() == .at(0))
        #expect(schedule.nextAction(now: 5) == .issue(index: 0))
        #expect(schedule.readyTimes[0] == 0)
        #expect(schedule.readiness() == .awaitCompletion)
        schedule.readCompleted(0, at: 1000)
        #expect(schedule.readiness() == .at(1300))
        #expect(schedule.readiness() == .at(1300))
        #expect(schedule.nextAction(now: 1200) == .wait(until: 1300))
        #expect(schedule.nextAction(now: 1340) == .issue(index: 1))
        #expect(schedule.readyTimes[1] == 1300)
        #expect(schedule.issueTimes[1] == 1340)
        schedule.readCompleted(1, at: 2000)
        #expect(schedule.nextAction(now: 2700) == .issue(index: 2))
        schedule.readCompleted(2, at: 2800)
        #expect(schedule.readiness() == .finished)
    }

    @Test("the report's stall is the replay's total minus the trace's think time")
    func report() {
        let reads = [
            read(0, 100, blocks: 8), read(50, 150, blocks: 16), read(300, 400, blocks: 8), read(1000, 1200, blocks: 1),
        ]
        let outcome = ReplayOutcome(
            issueTimes: [10, 30, 500, 2000], completionTimes: [210, 400, 700, 2510],
            failures: [ReplayFailure(index: 3, lba: 0, blocks: 1, message: "MEDIUM ERROR")], sessions: 2,
            keptThinkTime: true)
        let report = ReplayReport(reads: reads, blockSize: 512, outcome: outcome)
        #expect(report.reads == 4)
        #expect(report.bytes == 33 * 512)
        #expect(report.errors == 1)
        #expect(report.totalSeconds == 2500 / 1e6)
        // The gaps the replay keeps: read 1 goes 50 µs after read 0 (nothing had completed), read 2 150 µs
        // after read 1's completion, read 3 600 µs after read 2's: 800 µs, 50 more than the trace's idle time
        // (read 1's gap overlapped read 0).
        #expect(report.thinkSeconds == 800 / 1e6)
        #expect(report.stallSeconds == report.totalSeconds - report.thinkSeconds)
        #expect(report.idleStallSeconds == report.totalSeconds - 750 / 1e6)
        #expect(report.traceThinkSeconds == 750 / 1e6)
        #expect(report.traceSpanSeconds == 1200 / 1e6)
        #expect(report.traceStallSeconds == 450 / 1e6)
        #expect(report.traceMaxConcurrency == 2)
        #expect(report.replayMaxConcurrency == 2)
        // The failed read's latency is left out.
        #expect(report.latency.count == 3)
        #expect(report.latency.min == 200)
        #expect(report.latency.max == 370)
        let noThink = ReplayReport(
            reads: reads, blockSize: 512,
            outcome: ReplayOutcome(
                issueTimes: outcome.issueTimes, completionTimes: outcome.completionTimes, failures: [], sessions: 2,
                keptThinkTime: false))
        #expect(noThink.thinkSeconds == 0)
        #expect(noThink.stallSeconds == noThink.totalSeconds)
        #expect(noThink.traceThinkSeconds == 750 / 1e6)
    }

    @Test("latency percentiles are nearest-rank")
    func percentiles() {
        let summary = LatencySummary(latencies: (1...100).reversed().map { UInt64($0) })
        #expect(summary.count == 100)
        #expect(summary.min == 1)
        #expect(summary.p50 == 50)
        #expect(summary.p90 == 90)
        #expect(summary.p99 == 99)
        #expect(summary.max == 100)
        #expect(summary.mean == 50.5)
        let one = LatencySummary(latencies: [42])
        #expect(one.p50 == 42 && one.p99 == 42 && one.min == 42)
        #expect(LatencySummary(latencies: []).count == 0)
    }

    @Test("the histogram puts each latency in its power-of-four bucket and trims empty ends")
    func histogram() {
        let buckets = LatencyBucket.histogram([10, 63, 64, 100, 5000, 2_000_000])
        #expect(buckets.first == LatencyBucket(from: 0, upTo: 64, count: 2))
        #expect(buckets[1] == LatencyBucket(from: 64, upTo: 256, count: 2))
        #expect(buckets.last == LatencyBucket(from: 1_048_576, upTo: nil, count: 1))
        #expect(buckets.reduce(0) { $0 + $1.count } == 6)
        #expect(LatencyBucket.histogram([300, 400]) == [LatencyBucket(from: 256, upTo: 1024, count: 2)])
        #expect(LatencyBucket.histogram([]).isEmpty)
    }

    @Test("reads are converted to the LUN's block size and checked against its capacity")
    func conversionAndCapacity() throws {
        let info = TraceInfo(profile: "p", vm: "vm", blockSize: 512, chunkSize: 1 << 20, recordedAt: 0)
        let trace = Trace(
            info: info,
            reads: [read(0, 1, lba: 9, blocks: 2), read(1, 2, lba: 7, blocks: 2), read(2, 3, lba: 64, blocks: 16)])
        let converted = try Replay.reads(of: trace, lunBlockSize: 4096)
        #expect(converted.map(\.lba) == [1, 0, 8])
        #expect(converted.map(\.blocks) == [1, 2, 2])
        #expect(try Replay.reads(of: trace, limit: 2, lunBlockSize: 512).map(\.lba) == [9, 7])
        try Replay.checkCapacity(converted, blockCount: 10)
        #expect(throws: ReplayError.self) { try Replay.checkCapacity(converted, blockCount: 9) }
        do throws(ReplayError) {
            try Replay.checkCapacity(trace.reads, blockCount: 79)
            Issue.record("a read past the end was accepted")
        } catch {
            #expect(error.code == .outOfRange)
            #expect(error.message.contains("read 2 at LBA 64"))
        }
    }

    @Test("the default session count is the trace's concurrency, between 1 and 32")
    func defaultSessions() {
        #expect(Replay.defaultSessions(for: []) == 1)
        #expect(Replay.defaultSessions(for: burstTrace(bursts: 2, width: 5)) == 5)
        #expect(Replay.defaultSessions(for: burstTrace(bursts: 1, width: 40)) == 32)
    }
}
