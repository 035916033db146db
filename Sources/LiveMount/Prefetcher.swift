import Cache
import Dispatch
import Logging
import Metrics
import Prefetch
import Repository
import Synchronization

/// Follows a prefetch plan for one live mount (issue 4, Prefetching).
///
/// It turns `PlanFollower`'s actions into pinned, background-priority `ChunkCache.stage` calls, so guest misses
/// always go first (the cache runs foreground fetches before background ones) and a chunk wanted by the guest
/// and the prefetcher at once is fetched once. It also keeps the figures: a chunk the guest reads for the first
/// time counts as a hit (staged and ready), a miss (not staged, or still in flight) or warm (cached before).
public final class Prefetcher: Sendable {
    public let plan: PrefetchPlan
    private let manifest: DiskManifest
    private let cache: ChunkCache
    private let source: any ChunkSource
    private let settings: PrefetchSettings
    private let logger: Logger
    private let state: Mutex<State>
    private let metrics: PrefetchMetrics

    /// What a chunk is to the prefetcher.
    private enum ChunkStatus {
        /// A stage was issued (by us, the chunk was not cached then); nanoseconds when it completed.
        case staging
        case staged(readyAt: UInt64)
        /// Cached before we asked for it.
        case warm
        /// The guest has read it; it counts no more.
        case read
    }

    private struct State {
        var follower: PlanFollower
        var chunks: [Int: ChunkStatus] = [:]
        /// Chunk pins taken per plan entry, released when the entry is read or passed.
        var pins: [Int: [ChunkID]] = [:]
        var stagedBytes: UInt64 = 0
        var usedBytes: UInt64 = 0
        var hitBytes: UInt64 = 0
        var missBytes: UInt64 = 0
        var warmBytes: UInt64 = 0
        var prestagedBytes: UInt64 = 0
        var prestageSeconds: Double = 0
        var leadTimes: [Double] = []
        var filesStaged = 0
        var fileProblems: [String] = []
        var closed = false
    }

    public init(
        plan: PrefetchPlan, manifest: DiskManifest, cache: ChunkCache, source: any ChunkSource,
        settings: PrefetchSettings, metricDimensions: [(String, String)] = [], logger: Logger
    ) {
        self.metrics = PrefetchMetrics(dimensions: metricDimensions + [("profile", plan.profile)])
        self.plan = plan
        self.manifest = manifest
        self.cache = cache
        self.source = source
        self.settings = settings
        self.logger = logger
        let capacityCap = max(UInt64(manifest.chunkSize), UInt64(cache.statistics.slotCount) * UInt64(manifest.chunkSize) / 4)
        let configuration = PlanFollower.Configuration(
            leadBytes: min(settings.leadBytes, capacityCap),
            leadTime: UInt64(max(0, settings.leadSeconds) * 1_000_000),
            maxInFlight: settings.maxInFlight)
        state = Mutex(State(follower: PlanFollower(entries: plan.entries, configuration: configuration)))
    }

    // MARK: - Pre-stage

    /// Stages the plan's first seconds (and `files`, guest file extents) before the LUN goes live, within the
    /// byte budget, waiting at most the timeout; stages still running then go on in the background. Then starts
    /// following.
    public func prestage(files: [(offset: UInt64, length: UInt64)] = [], fileProblems: [String] = []) async {
        let started = DispatchTime.now().uptimeNanoseconds
        let window = UInt64(max(0, settings.prestageSeconds) * 1_000_000)
        var budget = settings.prestageBytes
        var chosen: [Int] = []
        for (index, entry) in plan.entries.enumerated() where entry.expectedTime <= window {
            guard entry.length <= budget else { break }
            budget -= entry.length
            chosen.append(index)
        }
        // Guest files the profile names: their chunks, staged unpinned (the cache's scan resistance keeps them).
        var fileChunks: [Int] = []
        var seen = Set<Int>()
        for extent in files where extent.length > 0 {
            let chunkSize = UInt64(manifest.chunkSize)
            for index in Int(extent.offset / chunkSize)...Int((extent.offset + extent.length - 1) / chunkSize)
            where index < manifest.chunkCount && seen.insert(index).inserted {
                fileChunks.append(index)
            }
        }
        state.withLock { state in
            state.follower.stagingExternally(chosen)
            state.filesStaged = files.isEmpty ? 0 : fileChunks.count
            state.fileProblems = fileProblems
        }
        let timeout = UInt64(max(0, settings.prestageTimeoutSeconds) * 1_000_000_000)
        let entries = chosen
        let chunks = fileChunks
        // Wait for the stages or the timeout, whichever comes first; stages still running go on by themselves.
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            let resumed = Mutex(false)
            let finish: @Sendable () -> Void = {
                if resumed.withLock({ value in defer { value = true }; return !value }) { done.resume() }
            }
            Task {
                await withTaskGroup(of: Void.self) { stages in
                    for index in entries { stages.addTask { await self.stageEntry(index, paced: false) } }
                    for chunk in chunks { stages.addTask { _ = await self.stageChunk(chunk, pin: false) } }
                }
                finish()
            }
            Task {
                try? await Task.sleep(nanoseconds: timeout)
                finish()
            }
        }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        let bytes = chosen.reduce(UInt64(0)) { $0 + plan.entries[$1].length }
        state.withLock {
            $0.prestagedBytes = bytes
            $0.prestageSeconds = elapsed
        }
        logger.info(
            "pre-staged",
            metadata: [
                "profile": "\(plan.profile)", "entries": "\(chosen.count)", "bytes": "\(bytes)",
                "file_chunks": "\(fileChunks.count)", "seconds": "\(elapsed)",
            ])
        start()
    }

    /// Starts following the plan (after the pre-stage, or without one).
    public func start() {
        let actions = state.withLock { $0.follower.start() }
        perform(actions)
    }

    // MARK: - Guest reads

    /// The guest is reading `offset ..< offset + length`: the figures are updated, the window moves. Returns
    /// whether every backup chunk of the read had been staged by the prefetcher and was ready (the trace's
    /// `prefetched`).
    public func guestRead(offset: UInt64, length: Int) -> Bool {
        guard length > 0 else { return false }
        let now = DispatchTime.now().uptimeNanoseconds
        let chunkSize = UInt64(manifest.chunkSize)
        let first = Int(offset / chunkSize)
        let last = min(Int((offset + UInt64(length) - 1) / chunkSize), manifest.chunkCount - 1)
        var unpin: [ChunkID] = []
        let (prefetched, actions, counted) = state.withLock { state -> (Bool, [PlanFollower.Action], Bool) in
            guard !state.closed else { return (false, [], false) }
            var allHit = true
            var anyBackup = false
            // Whether a figure moved: a chunk read for the first time.
            var counted = false
            if first <= last {
                for index in first...last {
                    guard let id = manifest.chunk(at: index) else { continue }
                    let bytes = UInt64(manifest.length(ofChunk: index))
                    switch state.chunks[index] {
                    case .read:
                        continue
                    case .staged(let readyAt):
                        anyBackup = true
                        state.hitBytes += bytes
                        state.usedBytes += bytes
                        state.leadTimes.append(Double(now - min(now, readyAt)) / 1e9)
                        metrics.leadTime.recordNanoseconds(Int64(clamping: now - min(now, readyAt)))
                    case .staging:
                        anyBackup = true
                        allHit = false
                        state.missBytes += bytes
                        state.usedBytes += bytes
                    case .warm:
                        allHit = false
                        state.warmBytes += bytes
                    case nil:
                        allHit = false
                        if cache.holds(id) {
                            state.warmBytes += bytes
                        } else {
                            anyBackup = true
                            state.missBytes += bytes
                        }
                    }
                    state.chunks[index] = .read
                    counted = true
                }
            }
            let (touched, actions) = state.follower.guestRead(offset: offset, length: UInt64(length))
            for entry in touched { unpin += state.pins.removeValue(forKey: entry) ?? [] }
            return (anyBackup && allHit, actions, counted)
        }
        for id in unpin { cache.unpin(id) }
        perform(actions)
        // Most of a boot's reads land in chunks it already read: nothing to publish then.
        if counted { updateMetrics() }
        return prefetched
    }

    /// Publishes the figures as gauges (`livemount_prefetch_*`, per mount).
    private func updateMetrics() {
        let (staged, used, hit, miss) = state.withLock { ($0.stagedBytes, $0.usedBytes, $0.hitBytes, $0.missBytes) }
        metrics.stagedBytes.record(staged)
        metrics.usedBytes.record(used)
        metrics.hitBytes.record(hit)
        metrics.missBytes.record(miss)
        metrics.precision.record(staged == 0 ? 0 : Double(used) / Double(staged))
        metrics.recall.record(hit + miss == 0 ? 0 : Double(hit) / Double(hit + miss))
    }

    /// The figures now.
    public var statistics: PrefetchStatistics {
        state.withLock { state in
            let sorted = state.leadTimes.sorted()
            func percentile(_ p: Double) -> Double {
                sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p))]
            }
            let phase: String =
                switch state.follower.phase {
                case .following: "following"
                case .diverged: "diverged"
                case .finished: "finished"
                }
            var statistics = PrefetchStatistics()
            statistics.profile = plan.profile
            statistics.planEntries = plan.entries.count
            statistics.planBytes = plan.totalBytes
            statistics.phase = phase
            statistics.position = state.follower.position
            statistics.prestagedBytes = state.prestagedBytes
            statistics.prestageSeconds = state.prestageSeconds
            statistics.stagedBytes = state.stagedBytes
            statistics.usedBytes = state.usedBytes
            statistics.hitBytes = state.hitBytes
            statistics.missBytes = state.missBytes
            statistics.warmBytes = state.warmBytes
            statistics.precision = state.stagedBytes == 0 ? 0 : Double(state.usedBytes) / Double(state.stagedBytes)
            statistics.recall =
                state.hitBytes + state.missBytes == 0
                ? 0 : Double(state.hitBytes) / Double(state.hitBytes + state.missBytes)
            statistics.leadTimeMedian = percentile(0.5)
            statistics.leadTimeP10 = percentile(0.1)
            statistics.filesStaged = state.filesStaged
            statistics.fileProblems = state.fileProblems
            return statistics
        }
    }

    /// Stops staging and releases every pin (unmount).
    public func close() {
        let pins = state.withLock { state -> [ChunkID] in
            state.closed = true
            defer { state.pins = [:] }
            return state.pins.values.flatMap { $0 }
        }
        for id in pins { cache.unpin(id) }
    }

    // MARK: - Staging

    private func perform(_ actions: [PlanFollower.Action]) {
        for action in actions {
            switch action {
            case .stage(let index):
                Task { await self.stageEntry(index) }
            case .release(let index):
                let pins = state.withLock { $0.pins.removeValue(forKey: index) ?? [] }
                for id in pins { cache.unpin(id) }
            }
        }
    }

    /// Stages every chunk of plan entry `index` (pinned), then reports the entry complete.
    ///
    /// Window stages (`paced`) fetch an entry's chunks one after another, so the window keeps at most
    /// `maxInFlight` chunk fetches running beside the guest (fills compete with its reads for CPU and for the
    /// cache file's I/O queue); the pre-stage, before the LUN is live, fetches them all at once.
    private func stageEntry(_ index: Int, paced: Bool = true) async {
        let entry = plan.entries[index]
        let chunkSize = UInt64(manifest.chunkSize)
        var success = true
        if entry.length > 0 {
            let first = Int(entry.offset / chunkSize)
            let last = min(Int((entry.offset + entry.length - 1) / chunkSize), manifest.chunkCount - 1)
            if first <= last {
                var results: [(ChunkID?, Bool)] = []
                if paced {
                    for chunk in first...last { results.append(await stageChunk(chunk, pin: true)) }
                } else {
                    results = await withTaskGroup(of: (ChunkID?, Bool).self) { group in
                        for chunk in first...last { group.addTask { await self.stageChunk(chunk, pin: true) } }
                        var collected: [(ChunkID?, Bool)] = []
                        for await result in group { collected.append(result) }
                        return collected
                    }
                }
                let pinned = results.compactMap(\.0)
                success = results.allSatisfy(\.1)
                let stillWanted = state.withLock { state -> Bool in
                    guard !state.closed, state.follower.states[index] == .inFlight else { return false }
                    state.pins[index, default: []] += pinned
                    return true
                }
                if !stillWanted { for id in pinned { cache.unpin(id) } }
            }
        }
        let actions = state.withLock { $0.closed ? [] : $0.follower.stageCompleted(index, success: success) }
        perform(actions)
        updateMetrics()
    }

    /// Stages one chunk; returns the id it pinned (if `pin`) and whether it is in the cache now.
    private func stageChunk(_ index: Int, pin: Bool) async -> (ChunkID?, Bool) {
        guard let id = manifest.chunk(at: index) else { return (nil, true) }
        let proceed = state.withLock { state -> Bool in
            guard !state.closed else { return false }
            switch state.chunks[index] {
            case .read, .staging, .staged, .warm:
                // Already read (nothing to gain), or another entry is staging it; still pin it for this entry.
                return true
            case nil:
                if cache.holds(id) {
                    state.chunks[index] = .warm
                } else {
                    state.chunks[index] = .staging
                    state.stagedBytes += UInt64(manifest.length(ofChunk: index))
                }
                return true
            }
        }
        guard proceed else { return (nil, false) }
        do {
            try await cache.stage(
                id, chunkLength: manifest.length(ofChunk: index), source: source, priority: .background, pin: pin)
        } catch {
            logger.warning(
                "prefetch of a chunk failed", metadata: ["chunk": "\(index)", "disk": "\(manifest.name)", "error": "\(error)"])
            return (nil, false)
        }
        // The guest's first read of it is then an inline page-cache hit, not an O_DIRECT read.
        cache.warmPageCache(id)
        let now = DispatchTime.now().uptimeNanoseconds
        state.withLock { state in
            if case .staging = state.chunks[index] { state.chunks[index] = .staged(readyAt: now) }
        }
        return (pin ? id : nil, true)
    }
}

// MARK: - Metrics

/// swift-metrics handles of one mount's prefetcher.
struct PrefetchMetrics: Sendable {
    let stagedBytes: Gauge
    let usedBytes: Gauge
    let hitBytes: Gauge
    let missBytes: Gauge
    let precision: Gauge
    let recall: Gauge
    let leadTime: Metrics.Timer

    init(dimensions: [(String, String)]) {
        stagedBytes = Gauge(label: "livemount_prefetch_staged_bytes", dimensions: dimensions)
        usedBytes = Gauge(label: "livemount_prefetch_used_bytes", dimensions: dimensions)
        hitBytes = Gauge(label: "livemount_prefetch_hit_bytes", dimensions: dimensions)
        missBytes = Gauge(label: "livemount_prefetch_miss_bytes", dimensions: dimensions)
        precision = Gauge(label: "livemount_prefetch_precision", dimensions: dimensions)
        recall = Gauge(label: "livemount_prefetch_recall", dimensions: dimensions)
        leadTime = Metrics.Timer(label: "livemount_prefetch_lead_time", dimensions: dimensions)
    }
}
