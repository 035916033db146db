// Training: from several recorded boots of one profile to a prefetch plan (../shared/DESIGN.md, Formats:
// Prefetch plan; issue 4, Training).

/// Builds a profile's prefetch plan from its boot traces.
///
/// The choices, and why:
/// - **Granules.** Every read is turned into a byte range with its own trace's block size and cut into
///   granules of `granularity` bytes (the cache's chunk size: the unit a prefetch fetches). A granule is
///   "read by a trace" if any read of that trace touches it; its first access in that trace is the issue time
///   of the first such read.
/// - **Support** of a granule is the share of traces that read it. Granules below `minSupport` are dropped:
///   with the default 0.25, a read seen in one boot out of ten (a log rotation, a cron job, a fsck that ran
///   once) is not prefetched, while what every boot reads is. With one trace every granule has support 1.
/// - **Expected time** is the median of the first-access times over the traces that read the granule. The
///   median, not the mean, so that one slow (cold) boot or one boot that waited on a timeout does not drag a
///   granule later.
/// - **Coalescing.** Adjacent granules whose expected times lie within `Tuning.timeTolerance` of each other
///   and whose supports lie within `Tuning.supportTolerance` become one entry, at most
///   `Tuning.maxEntryGranules` long: long enough to keep the plan short for sequential reads (a kernel, an
///   initramfs), short enough that the plan follower can still tell where in the plan the guest is. Granules
///   read at very different times stay apart even when adjacent, so a block read late does not get staged
///   with an early one.
/// - An entry's support is the share of traces that read any part of it, and its expected time the median,
///   over those traces, of the first access to any part of it: the same definitions as for a granule, so an
///   entry is due when its first granule is.
/// - **Order**: by expected time, then offset. Reads served as zero or from the overlay still count: the plan
///   describes what a boot reads; the prefetcher skips what needs no fetch.
public enum PlanTrainer {
    /// How granules coalesce into entries.
    public struct Tuning: Sendable, Equatable {
        /// At most this many granules per entry.
        public var maxEntryGranules: Int
        /// Granules whose expected times differ by more than this (µs) are not merged.
        public var timeTolerance: UInt64
        /// Granules whose supports differ by more than this are not merged.
        public var supportTolerance: Double

        public init(maxEntryGranules: Int = 16, timeTolerance: UInt64 = 250_000, supportTolerance: Double = 0.2) {
            self.maxEntryGranules = max(1, maxEntryGranules)
            self.timeTolerance = timeTolerance
            self.supportTolerance = supportTolerance
        }
    }

    /// One trace's first access to a granule (or to an entry).
    private struct Access {
        var trace: Int
        var time: UInt64
    }

    /// A granule that survived the support cut.
    private struct Granule {
        var index: UInt64
        var accesses: [Access]  // sorted by trace
        var support: Double
        var expectedTime: UInt64
    }

    /// Trains a plan for `profile` from `traces`; `granularity` is in bytes (must be positive), `now` is the
    /// plan's creation time in seconds since 1970.
    public static func train(
        _ traces: [Trace], profile: String, granularity: Int, minSupport: Double = 0.25, now: Int64,
        tuning: Tuning = Tuning()
    ) -> PrefetchPlan {
        precondition(granularity > 0, "granularity must be positive")
        let plan = PrefetchPlan(
            profile: profile, granularity: granularity, traceIDs: traces.map(\.info.id), createdAt: now, entries: [])
        guard !traces.isEmpty else { return plan }
        let count = Double(traces.count)
        let granules = firstAccesses(traces, granularity: UInt64(granularity))
            .compactMap { index, accesses -> Granule? in
                let support = Double(accesses.count) / count
                guard support + 1e-9 >= minSupport else { return nil }
                return Granule(
                    index: index, accesses: accesses, support: support,
                    expectedTime: median(accesses.map(\.time)))
            }
            .sorted { $0.index < $1.index }
        var result = plan
        result.entries = coalesce(granules, granularity: UInt64(granularity), traceCount: count, tuning: tuning)
            .sorted { ($0.expectedTime, $0.offset) < ($1.expectedTime, $1.offset) }
        return result
    }

    /// For every granule any trace touched: each trace's first access to it, in trace order.
    private static func firstAccesses(_ traces: [Trace], granularity: UInt64) -> [UInt64: [Access]] {
        var granules: [UInt64: [Access]] = [:]
        for (traceIndex, trace) in traces.enumerated() {
            let blockSize = UInt64(max(trace.info.blockSize, 1))
            var first: [UInt64: UInt64] = [:]
            for read in trace.reads where read.blocks > 0 {
                let (start, startOverflow) = read.lba.multipliedReportingOverflow(by: blockSize)
                let (length, lengthOverflow) = UInt64(read.blocks).multipliedReportingOverflow(by: blockSize)
                let (end, endOverflow) = start.addingReportingOverflow(length)
                guard !startOverflow, !lengthOverflow, !endOverflow else { continue }
                for granule in (start / granularity)...((end - 1) / granularity) {
                    if let seen = first[granule], seen <= read.issued { continue }
                    first[granule] = read.issued
                }
            }
            for (granule, time) in first {
                granules[granule, default: []].append(Access(trace: traceIndex, time: time))
            }
        }
        return granules
    }

    /// Merges runs of adjacent granules with close expected times and supports into entries.
    private static func coalesce(
        _ granules: [Granule], granularity: UInt64, traceCount: Double, tuning: Tuning
    ) -> [PlanEntry] {
        var entries: [PlanEntry] = []
        var run: [Granule] = []
        var minTime = UInt64.max
        var maxTime: UInt64 = 0
        var minSupport = Double.infinity
        var maxSupport = -Double.infinity

        func flush() {
            guard let firstGranule = run.first else { return }
            var firstByTrace: [Int: UInt64] = [:]
            for granule in run {
                for access in granule.accesses {
                    firstByTrace[access.trace] = min(firstByTrace[access.trace] ?? .max, access.time)
                }
            }
            entries.append(
                PlanEntry(
                    offset: firstGranule.index * granularity, length: UInt64(run.count) * granularity,
                    support: Double(firstByTrace.count) / traceCount, expectedTime: median(Array(firstByTrace.values))))
            run.removeAll(keepingCapacity: true)
        }

        for granule in granules {
            if let last = run.last {
                let fits =
                    granule.index == last.index + 1 && run.count < tuning.maxEntryGranules
                    && max(maxTime, granule.expectedTime) - min(minTime, granule.expectedTime) <= tuning.timeTolerance
                    && max(maxSupport, granule.support) - min(minSupport, granule.support)
                        <= tuning.supportTolerance + 1e-9
                if !fits { flush() }
            }
            if run.isEmpty {
                minTime = .max
                maxTime = 0
                minSupport = .infinity
                maxSupport = -.infinity
            }
            run.append(granule)
            minTime = min(minTime, granule.expectedTime)
            maxTime = max(maxTime, granule.expectedTime)
            minSupport = min(minSupport, granule.support)
            maxSupport = max(maxSupport, granule.support)
        }
        flush()
        return entries
    }

    /// The median of `values` (the mean of the middle two for an even count); 0 for none.
    static func median(_ values: [UInt64]) -> UInt64 {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        let middle = sorted.count / 2
        if sorted.count % 2 == 1 { return sorted[middle] }
        let low = sorted[middle - 1]
        return low + (sorted[middle] - low) / 2
    }
}
