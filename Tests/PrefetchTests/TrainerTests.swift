import Testing

@testable import Prefetch

/// A deterministic pseudo-random generator (SplitMix64), so the synthetic boots are the same on every run.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Synthetic boots of one image: the same underlying reads with timing jitter, a little reordering, some
/// reads only most boots make, and noise reads that each appear in one boot only.
struct SyntheticBoots {
    static let granularity = 65_536
    static let blockSize = 512
    static let blocksPerGranule = UInt64(granularity / blockSize)

    /// One underlying read: a granule index and its true time (µs).
    struct Event {
        var granule: UInt64
        var time: UInt64
        /// Share of boots that make it (1 for most).
        var share: Double
    }

    /// 40 scattered single-granule reads, 100 ms apart, at offsets in another order than their times;
    /// event 7 only in 60% of the boots.
    static let scattered: [Event] = (0..<40).map { index in
        Event(
            granule: 100 + UInt64((index * 7) % 40) * 3, time: UInt64(index) * 100_000 + 50_000,
            share: index == 7 ? 0.6 : 1)
    }

    /// A kernel-like sequential run: granules 500..<508 read 5 ms apart from t = 1.0 s.
    static let sequential: [Event] = (0..<8).map { index in
        Event(granule: 500 + UInt64(index), time: 1_000_000 + UInt64(index) * 5_000, share: 1)
    }

    /// The first granule of the noise reads of boot `boot`.
    static func noiseGranule(boot: Int, index: Int) -> UInt64 { 10_000 + UInt64(boot) * 100 + UInt64(index) * 3 }

    /// `count` boots; boot `b` has id `b + 1`.
    static func boots(_ count: Int, seed: UInt64 = 42) -> [Trace] {
        var random = SplitMix64(state: seed)
        return (0..<count).map { boot in
            var reads: [TraceRead] = []
            var events = scattered + sequential
            if boot % 3 == 0 {
                // Reordering: in boots 0, 3, 6, 9 events 20 and 21 swap places (a minority, so the median keeps
                // the usual order).
                (events[20].time, events[21].time) = (events[21].time, events[20].time)
            }
            for event in events {
                if event.share < 1 && Double(boot % 10) / 10 >= event.share { continue }
                // ±20 ms jitter: enough to swap neighbours of the sequential run, never scattered events.
                let jitter = Int64(random.next() % 40_001) - 20_000
                let issued = UInt64(max(0, Int64(event.time) + jitter))
                // Each granule read in two halves, the second 1 ms later.
                for half in 0..<2 {
                    reads.append(
                        TraceRead(
                            issued: issued + UInt64(half) * 1_000, completed: issued + UInt64(half) * 1_000 + 800,
                            lba: event.granule * blocksPerGranule + UInt64(half) * blocksPerGranule / 2,
                            blocks: UInt32(blocksPerGranule / 2), source: half == 0 ? .backup : .zero,
                            prefetched: false))
                }
            }
            for index in 0..<5 {
                let time = random.next() % 4_000_000
                reads.append(
                    TraceRead(
                        issued: time, completed: time + 500,
                        lba: noiseGranule(boot: boot, index: index) * blocksPerGranule, blocks: 8, source: .backup,
                        prefetched: false))
            }
            reads.sort { $0.issued < $1.issued }
            let info = TraceInfo(
                id: Int64(boot + 1), profile: "web01", vm: "web01", blockSize: blockSize, chunkSize: granularity,
                recordedAt: 1_714_560_000 + Int64(boot) * 3_600)
            return Trace(info: info, reads: reads)
        }
    }
}

@Suite("Plan training")
struct TrainerTests {
    typealias Boots = SyntheticBoots

    private func entry(at granule: UInt64, in plan: PrefetchPlan) -> PlanEntry? {
        let offset = granule * UInt64(Boots.granularity)
        return plan.entries.first { $0.offset <= offset && offset < $0.offset + $0.length }
    }

    @Test("ten boots: every real read is planned near its true time, in order; noise is dropped")
    func tenBoots() throws {
        let boots = Boots.boots(10)
        let plan = PlanTrainer.train(boots, profile: "web01", granularity: Boots.granularity, now: 1_800_000_000)
        #expect(plan.profile == "web01")
        #expect(plan.granularity == Boots.granularity)
        #expect(plan.traceIDs == Array(1...10))
        #expect(plan.createdAt == 1_800_000_000)

        // Ordered by expected time, then offset.
        for (a, b) in zip(plan.entries, plan.entries.dropFirst()) {
            #expect((a.expectedTime, a.offset) <= (b.expectedTime, b.offset))
        }
        // Aligned to the granularity.
        for entry in plan.entries {
            #expect(entry.offset % UInt64(Boots.granularity) == 0)
            #expect(entry.length % UInt64(Boots.granularity) == 0)
        }

        // Each scattered read is its own entry, at its true time within the jitter, with its support.
        for event in Boots.scattered {
            let found = try #require(entry(at: event.granule, in: plan))
            #expect(found.length == UInt64(Boots.granularity))
            #expect(abs(Double(found.expectedTime) - Double(event.time)) <= 20_000)
            #expect(abs(found.support - event.share) < 1e-9)
        }
        // The scattered reads come in their true order.
        let order = Boots.scattered.compactMap { event in
            plan.entries.firstIndex { $0 == entry(at: event.granule, in: plan) }
        }
        #expect(order == order.sorted())

        // The sequential run is one entry, due when its first granule is.
        let run = try #require(entry(at: 500, in: plan))
        #expect(run.offset == 500 * UInt64(Boots.granularity))
        #expect(run.length == 8 * UInt64(Boots.granularity))
        #expect(run.support == 1)
        #expect(abs(Double(run.expectedTime) - 1_000_000) <= 20_000)

        // Noise (one boot in ten) is below the default minimum support.
        for boot in 0..<10 {
            for index in 0..<5 { #expect(entry(at: Boots.noiseGranule(boot: boot, index: index), in: plan) == nil) }
        }
        #expect(plan.entries.count == 41)
        #expect(plan.totalBytes == 48 * UInt64(Boots.granularity))
    }

    @Test("with no minimum support, noise is kept but ranks with support 0.1")
    func noiseRanksLow() throws {
        let plan = PlanTrainer.train(
            Boots.boots(10), profile: "web01", granularity: Boots.granularity, minSupport: 0, now: 0)
        for boot in 0..<10 {
            for index in 0..<5 {
                let noise = try #require(entry(at: Boots.noiseGranule(boot: boot, index: index), in: plan))
                #expect(abs(noise.support - 0.1) < 1e-9)
            }
        }
        for event in Boots.scattered + Boots.sequential {
            #expect((entry(at: event.granule, in: plan)?.support ?? 0) >= 0.6)
        }
    }

    @Test("more traces make it better: noise survives two boots, not ten")
    func moreTraces() {
        let noise = Boots.noiseGranule(boot: 0, index: 0)
        let two = PlanTrainer.train(
            Array(Boots.boots(10).prefix(2)), profile: "p", granularity: Boots.granularity, now: 0)
        #expect(entry(at: noise, in: two)?.support == 0.5)
        let ten = PlanTrainer.train(Boots.boots(10), profile: "p", granularity: Boots.granularity, now: 0)
        #expect(entry(at: noise, in: ten) == nil)
    }

    @Test("one trace: everything it read, with support 1 and its own times")
    func oneTrace() throws {
        let trace = Boots.boots(1)[0]
        let plan = PlanTrainer.train([trace], profile: "p", granularity: Boots.granularity, now: 0)
        #expect(plan.entries.allSatisfy { $0.support == 1 })
        let first = try #require(trace.reads.first)
        #expect(plan.entries.first?.expectedTime == first.issued)
        let noise = try #require(entry(at: Boots.noiseGranule(boot: 0, index: 0), in: plan))
        #expect(noise.length == UInt64(Boots.granularity))
    }

    @Test("each trace's LBAs convert with its own block size")
    func mixedBlockSizes() {
        let small = Trace(
            info: TraceInfo(id: 1, profile: "p", vm: "v", blockSize: 512, chunkSize: 4_096, recordedAt: 0),
            reads: [TraceRead(issued: 10, completed: 20, lba: 64, blocks: 8, source: .cache, prefetched: false)])
        let large = Trace(
            info: TraceInfo(id: 2, profile: "p", vm: "v", blockSize: 4_096, chunkSize: 4_096, recordedAt: 0),
            reads: [TraceRead(issued: 30, completed: 40, lba: 8, blocks: 1, source: .overlay, prefetched: false)])
        let plan = PlanTrainer.train([small, large], profile: "p", granularity: 4_096, now: 0)
        #expect(plan.entries == [PlanEntry(offset: 32_768, length: 4_096, support: 1, expectedTime: 20)])
    }

    @Test("a long sequential read is cut into entries of at most 16 granules")
    func maxEntryLength() {
        let trace = Trace(
            info: TraceInfo(id: 1, profile: "p", vm: "v", blockSize: 512, chunkSize: 65_536, recordedAt: 0),
            reads: [TraceRead(issued: 0, completed: 10, lba: 0, blocks: 40 * 128, source: .backup, prefetched: false)])
        let plan = PlanTrainer.train([trace], profile: "p", granularity: 65_536, now: 0)
        let granule: UInt64 = 65_536
        #expect(plan.entries.map(\.length) == [16 * granule, 16 * granule, 8 * granule])
        #expect(plan.entries.map(\.offset) == [0, 16 * granule, 32 * granule])
    }

    @Test("adjacent granules read far apart in time stay separate entries")
    func timeSeparates() {
        let trace = Trace(
            info: TraceInfo(id: 1, profile: "p", vm: "v", blockSize: 4_096, chunkSize: 4_096, recordedAt: 0),
            reads: [
                TraceRead(issued: 0, completed: 10, lba: 0, blocks: 1, source: .backup, prefetched: false),
                TraceRead(
                    issued: 5_000_000, completed: 5_000_010, lba: 1, blocks: 1, source: .backup, prefetched: false),
                TraceRead(
                    issued: 5_100_000, completed: 5_100_010, lba: 2, blocks: 1, source: .backup, prefetched: false),
            ])
        let plan = PlanTrainer.train([trace], profile: "p", granularity: 4_096, now: 0)
        #expect(
            plan.entries == [
                PlanEntry(offset: 0, length: 4_096, support: 1, expectedTime: 0),
                PlanEntry(offset: 4_096, length: 8_192, support: 1, expectedTime: 5_000_000),
            ])
    }

    @Test("no traces give an empty plan")
    func noTraces() {
        let plan = PlanTrainer.train([], profile: "p", granularity: 4_096, now: 7)
        #expect(plan.entries.isEmpty)
        #expect(plan.createdAt == 7)
    }

    @Test("the median takes the middle value, or the mean of the middle two")
    func median() {
        #expect(PlanTrainer.median([]) == 0)
        #expect(PlanTrainer.median([5]) == 5)
        #expect(PlanTrainer.median([9, 1, 5]) == 5)
        #expect(PlanTrainer.median([10, 1, 20, 2]) == 6)
        #expect(PlanTrainer.median([UInt64.max, UInt64.max - 2]) == UInt64.max - 1)
    }
}
