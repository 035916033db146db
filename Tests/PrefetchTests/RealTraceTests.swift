import Foundation
import Prefetch
import Testing

/// The real boot traces in Traces/ (three cold boots of the tools/boot guest).
private func realTrace(_ number: Int) throws -> Trace {
    let url = try #require(
        Bundle.module.url(forResource: "boot-b-\(number)", withExtension: "csv", subdirectory: "Traces"),
        "Traces/boot-b-\(number).csv is missing")
    return try TraceCSV.parse(try String(contentsOf: url, encoding: .utf8), source: url.lastPathComponent)
}

/// The chunks (1 MiB) a trace reads.
private func chunks(of trace: Trace) -> Set<UInt64> {
    var result = Set<UInt64>()
    for read in trace.reads where read.blocks > 0 {
        let start = read.lba * UInt64(trace.info.blockSize)
        let end = start + UInt64(read.blocks) * UInt64(trace.info.blockSize)
        for chunk in (start >> 20)...((end - 1) >> 20) { result.insert(chunk) }
    }
    return result
}

@Suite("Real boot traces")
struct RealTraceTests {
    @Test("the recorded boots round-trip through CSV and describe the same guest")
    func roundTrip() throws {
        for number in 1...3 {
            let trace = try realTrace(number)
            #expect(trace.info.profile == "boot-b")
            #expect(trace.reads.count > 1000)
            #expect(try TraceCSV.parse(TraceCSV.export(trace), source: "again") == trace)
        }
    }

    @Test("a plan trained on two boots covers the third: what a prefetcher following it could reach")
    func planCoversUnseenBoot() throws {
        let plan = PlanTrainer.train(
            [try realTrace(1), try realTrace(2)], profile: "boot-b", granularity: 1 << 20, now: 0)
        let unseen = try realTrace(3)
        var planned = Set<UInt64>()
        for entry in plan.entries {
            for chunk in (entry.offset >> 20)...((entry.offset + entry.length - 1) >> 20) { planned.insert(chunk) }
        }
        let read = chunks(of: unseen)
        let recall = Double(read.intersection(planned).count) / Double(read.count)
        let precision = Double(planned.intersection(read).count) / Double(planned.count)
        #expect(recall >= 0.9, "recall \(recall)")
        #expect(precision >= 0.8, "precision \(precision)")
        // Ordered by expected first access: the boot sector's chunk comes first.
        #expect(plan.entries.first?.offset == 0)
        #expect(zip(plan.entries, plan.entries.dropFirst()).allSatisfy { $0.expectedTime <= $1.expectedTime })
    }

    @Test("following the plan along the unseen boot stays in step and never diverges")
    func followerTracksUnseenBoot() throws {
        let plan = PlanTrainer.train(
            [try realTrace(1), try realTrace(2)], profile: "boot-b", granularity: 1 << 20, now: 0)
        let unseen = try realTrace(3)
        var follower = PlanFollower(entries: plan.entries)
        var queue = follower.start()
        var staged = Set<Int>()
        var stagedAhead = 0
        var touchedPlanned = 0
        for read in unseen.reads {
            // Stages complete before the next read (a fast backend).
            while !queue.isEmpty {
                if case .stage(let index) = queue.removeFirst() {
                    staged.insert(index)
                    queue += follower.stageCompleted(index)
                }
            }
            let offset = read.lba * UInt64(unseen.info.blockSize)
            let (touched, actions) = follower.guestRead(
                offset: offset, length: UInt64(read.blocks) * UInt64(unseen.info.blockSize))
            touchedPlanned += touched.count
            stagedAhead += touched.filter { staged.contains($0) }.count
            queue += actions
            #expect(follower.phase != .diverged)
        }
        #expect(touchedPlanned > 0)
        #expect(Double(stagedAhead) / Double(touchedPlanned) >= 0.9, "\(stagedAhead) of \(touchedPlanned)")
    }
}
