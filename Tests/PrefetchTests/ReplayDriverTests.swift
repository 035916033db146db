import Foundation
import Prefetch
import Testing

/// An in-memory session that records every read it serves, counts how many are in flight across all
/// sessions, and fails reads at chosen LBAs.
final class FakeReplayDevice: ReplayDevice, @unchecked Sendable {
    /// What all sessions of one fake LUN share.
    final class Shared: @unchecked Sendable {
        let lock = NSCondition()
        /// (lba, blocks) of every read, in the order the sessions started them.
        var reads: [(lba: UInt64, blocks: UInt32)] = []
        var inFlight = 0
        var maxInFlight = 0
        /// Reads at these LBAs fail.
        var failing: Set<UInt64> = []
        /// When set, a read waits (up to 10 s, a guard against a hang) until this many reads are in flight.
        var rendezvous: Int?
        /// Whether a rendezvous gave up waiting.
        var rendezvousTimedOut = false
        /// Microseconds each read takes.
        var serviceMicroseconds: UInt32 = 0

        init() {}
    }

    struct Failure: Error, CustomStringConvertible {
        var lba: UInt64
        var description: String { "MEDIUM ERROR at \(lba)" }
    }

    let shared: Shared

    init(shared: Shared) {
        self.shared = shared
    }

    static func sessions(_ count: Int, shared: Shared) -> [any ReplayDevice] {
        (0..<count).map { _ in FakeReplayDevice(shared: shared) }
    }

    func read(lba: UInt64, blocks: UInt32) throws {
        shared.lock.lock()
        shared.reads.append((lba, blocks))
        shared.inFlight += 1
        shared.maxInFlight = max(shared.maxInFlight, shared.inFlight)
        shared.lock.broadcast()
        if let target = shared.rendezvous {
            let deadline = Date(timeIntervalSinceNow: 10)
            while shared.maxInFlight < target {
                if !shared.lock.wait(until: deadline) {
                    shared.rendezvousTimedOut = true
                    break
                }
            }
        }
        let fails = shared.failing.contains(lba)
        let service = shared.serviceMicroseconds
        shared.lock.unlock()
        if service > 0 { usleep(service) }
        shared.lock.lock()
        shared.inFlight -= 1
        shared.lock.unlock()
        if fails { throw Failure(lba: lba) }
    }
}

@Suite("Replay driver")
struct ReplayDriverTests {
    @Test("one session: every read reaches the device once, in trace order")
    func oneSessionInOrder() async {
        let reads =
            burstTrace(bursts: 5, width: 3)
            + sequentialTrace(thinks: [0, 3, 0, 9], services: [20]).map {
                read($0.issued + 60_000, $0.completed + 60_000, lba: $0.lba + 7, blocks: 3)
            }
        let shared = FakeReplayDevice.Shared()
        let outcome = await ReplayDriver.runOnThread(
            reads: reads, devices: FakeReplayDevice.sessions(1, shared: shared))
        #expect(shared.reads.map(\.lba) == reads.map(\.lba))
        #expect(shared.reads.map(\.blocks) == reads.map(\.blocks))
        #expect(outcome.failures.isEmpty)
        #expect(outcome.sessions == 1)
        #expect(outcome.issueTimes.count == reads.count)
        for index in reads.indices {
            #expect(outcome.completionTimes[index] >= outcome.issueTimes[index])
        }
        for index in 1..<reads.count {
            #expect(outcome.issueTimes[index] >= outcome.completionTimes[index - 1])
        }
    }

    @Test("several sessions: every read once; overlapping reads are in flight together")
    func overlapOnSessions() async {
        let reads = burstTrace(bursts: 4, width: 4)
        let shared = FakeReplayDevice.Shared()
        shared.rendezvous = 4
        let outcome = await ReplayDriver.runOnThread(
            reads: reads, devices: FakeReplayDevice.sessions(Replay.defaultSessions(for: reads), shared: shared))
        #expect(outcome.sessions == 4)
        #expect(!shared.rendezvousTimedOut)
        #expect(shared.maxInFlight == 4)
        #expect(shared.reads.map(\.lba).sorted() == reads.map(\.lba).sorted())
        #expect(Set(shared.reads.map(\.lba)).count == reads.count)
    }

    @Test("reads that did not overlap in the trace never overlap, however many sessions")
    func sequentialStaysSequential() async {
        let reads = sequentialTrace(thinks: Array(repeating: 0, count: 30), services: [50, 80])
        let shared = FakeReplayDevice.Shared()
        shared.serviceMicroseconds = 300
        let outcome = await ReplayDriver.runOnThread(
            reads: reads, devices: FakeReplayDevice.sessions(4, shared: shared), keepThinkTime: false)
        #expect(shared.maxInFlight == 1)
        #expect(shared.reads.map(\.lba) == reads.map(\.lba))
        let report = ReplayReport(reads: reads, blockSize: 512, outcome: outcome)
        #expect(report.replayMaxConcurrency == 1)
        #expect(report.reads == 30)
    }

    @Test("think times are kept: each read goes no earlier than its gap after the read it waited on", arguments: [1, 3])
    func thinkTimesKept(sessions: Int) async {
        let thinks: [UInt64] = [0, 2000, 0, 500, 3000, 0, 0, 1200]
        let reads = sequentialTrace(thinks: thinks, services: [150, 40])
        let shared = FakeReplayDevice.Shared()
        shared.serviceMicroseconds = 200
        let outcome = await ReplayDriver.runOnThread(
            reads: reads, devices: FakeReplayDevice.sessions(sessions, shared: shared))
        #expect(shared.maxInFlight == 1)
        #expect(outcome.readyTimes.count == reads.count)
        #expect(outcome.lateness.count == reads.count)
        for index in 1..<reads.count {
            // The schedule allowed read i at read i−1's measured completion plus the recorded gap ...
            #expect(outcome.readyTimes[index] == outcome.completionTimes[index - 1] + thinks[index])
            // ... and the driver never sent it before.
            #expect(outcome.issueTimes[index] >= outcome.readyTimes[index])
            #expect(outcome.lateness[index] == outcome.issueTimes[index] - outcome.readyTimes[index])
        }
        let report = ReplayReport(reads: reads, blockSize: 512, outcome: outcome)
        #expect(report.thinkSeconds == Double(thinks.reduce(0, +)) / 1e6)
        #expect(report.harnessLateSeconds == Double(outcome.lateness.reduce(0, +)) / 1e6)
    }

    @Test("a failed read is reported with its index and LBA; the replay goes on")
    func failures() async {
        let reads = sequentialTrace(thinks: Array(repeating: 1, count: 10), services: [10])
        let shared = FakeReplayDevice.Shared()
        shared.failing = [reads[3].lba, reads[7].lba]
        let outcome = await ReplayDriver.runOnThread(
            reads: reads, devices: FakeReplayDevice.sessions(2, shared: shared))
        #expect(shared.reads.count == 10)
        #expect(outcome.failures.map(\.index) == [3, 7])
        #expect(outcome.failures.map(\.lba) == [reads[3].lba, reads[7].lba])
        #expect(outcome.failures.first?.message == "MEDIUM ERROR at \(reads[3].lba)")
        let report = ReplayReport(reads: reads, blockSize: 512, outcome: outcome)
        #expect(report.errors == 2)
        #expect(report.reads == 10)
        #expect(report.latency.count == 8)
    }

    @Test("an empty trace replays to an empty outcome")
    func empty() async {
        let outcome = await ReplayDriver.runOnThread(reads: [], devices: FakeReplayDevice.sessions(2, shared: .init()))
        #expect(outcome.issueTimes.isEmpty)
        #expect(outcome.failures.isEmpty)
        let report = ReplayReport(reads: [], blockSize: 512, outcome: outcome)
        #expect(report.totalSeconds == 0)
        #expect(report.histogram.isEmpty)
    }

    @Test("the JSON report carries every figure")
    func json() throws {
        let reads = [read(0, 100), read(200, 300)]
        let outcome = ReplayOutcome(
            issueTimes: [0, 150], completionTimes: [80, 250], failures: [], sessions: 1, keptThinkTime: true)
        let data = try JSONEncoder().encode(ReplayReport(reads: reads, blockSize: 512, outcome: outcome))
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        for key in [
            "reads", "bytes", "errors", "sessions", "keptThinkTime", "totalSeconds", "thinkSeconds", "stallSeconds",
            "traceSpanSeconds", "traceThinkSeconds", "traceStallSeconds", "traceMaxConcurrency",
            "replayMaxConcurrency", "latency", "histogram", "failures", "harnessLateSeconds", "idleStallSeconds",
        ] {
            #expect(object[key] != nil, "\(key)")
        }
        let latency = try #require(object["latency"] as? [String: Any])
        #expect(Set(latency.keys) == ["count", "min", "p50", "p90", "p99", "max", "mean"])
        let stall = try #require(object["stallSeconds"] as? Double)
        #expect(abs(stall - 150 / 1e6) < 1e-12)
    }
}
