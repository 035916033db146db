import BlockDevice
import Dispatch
import Logging
import Metrics
import NIOCore
import Repository
import SQLiteStore
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The SSD-tier read cache: backup chunks kept in fixed-size slots of one preallocated file on fast storage,
/// read and written with libaio and O_DIRECT (DESIGN.md, Formats: Cache tier).
///
/// ## Reads
/// A hit reads only the requested range of the slot (widened to the O_DIRECT alignment) and touches only
/// memory. A miss fetches the whole chunk once from the `ChunkSource`: every caller that wants the same chunk
/// meanwhile, foreground or background, waits for that one fetch (single-flight, DESIGN.md invariant 5), and
/// readers arriving while the chunk is being written into its slot are served from the fetched buffer. At most
/// `maxConcurrentFetches` source reads run at once; when they queue, foreground fetches go before background
/// ones, and a background fetch that a foreground reader joins moves to the foreground queue (invariant 4).
///
/// ## Replacement
/// 2Q with a correlated-reference filter; see `TwoQueuePolicy` for the reasons. Pinned slots (prefetch
/// staging with `pin: true`) and slots being read are never evicted; if nothing can be evicted, the fetched
/// chunk is served and not cached.
///
/// ## Crash safety
/// Slot reuse runs in three steps, each finished before the next: the slot's index row is cleared
/// (committed), the new chunk's bytes are written, then the row is filled with the chunk ID, its length, the
/// slot's generation + 1 and the CRC32C of the plaintext. A `kill -9` at any point leaves either no row (the
/// slot is free) or a row whose data was completely written. After a restart no slot is trusted until its
/// CRC32C has been checked against the row, lazily on its first hit; a mismatching slot (a torn write after a
/// power loss, bytes changed behind the cache's back) is dropped and the chunk refetched, never served.
///
/// ## Failures
/// The cache is only a cache: an I/O error on the cache file drops that slot and the read falls back to the
/// source. A source error reaches every caller sharing the fetch as a `ChunkReadError` and caches nothing.
///
/// The index (`CacheIndex`) is written only when a slot changes hands; hits update recency in memory, which
/// is persisted in batches while slots are filled and at `close()`.
public final class ChunkCache: Sendable {
    /// Where a slot fill stops, to test what a crash between its steps leaves behind.
    enum FillFault: Sendable {
        /// Stop after the row was cleared, before the data write.
        case afterClear
        /// Stop after the data write, before the row is filled.
        case afterDataWrite
    }

    /// A slot holding a chunk.
    private struct Resident {
        var id: ChunkID
        var length: Int
        var generation: Int64
        var crc: UInt32
        /// Whether the slot's bytes have been checked against `crc` since the index was loaded.
        var verified: Bool
        var pins: Int = 0
        /// Reads of the slot in progress; a slot being read is not reused.
        var readers: Int = 0
        var lastUse: UInt64
        var touched: TouchMap
        /// The queue a pinned slot returns to when unpinned (pinned slots are off the 2Q lists).
        var parkedQueue: SlotQueue?
        /// Recency changed since it was last persisted.
        var recencyDirty = false
    }

    /// What a slot is doing.
    private enum SlotState {
        case free
        /// Being written; not in the index yet.
        case filling
        case resident(Resident)
        /// Dropped while reads were running; free when the last one ends.
        case retiring(readers: Int)
    }

    /// A fetch of one chunk that callers share.
    private struct Flight {
        var token: UInt64
        var priority: FetchPriority
        /// Callers waiting for the source read.
        var waiters: [CheckedContinuation<JoinOutcome, Never>] = []
        /// The fetched plaintext while it is being written into a slot.
        var fetched: ByteBuffer?
        /// `stage` callers waiting for the slot write to end.
        var fillWaiters: [CheckedContinuation<Void, Never>] = []
        /// Pins asked for by `stage(pin: true)` callers, applied when the slot is filled.
        var pins = 0
        var touched: TouchMap
        /// A caller read bytes that an earlier caller of this flight had read: admit to Am.
        var reReferenced = false
        /// Whether the fetched chunk goes into a slot: false while every caller read it with `admit: false`.
        var admit = true
    }

    /// A fetch waiting for one of the `maxConcurrentFetches` permits.
    private struct PermitWaiter {
        var token: UInt64
        var continuation: CheckedContinuation<Void, Never>
    }

    /// Everything that changes, under one lock.
    private struct State {
        var slots: [SlotState]
        var generations: [Int64]
        var freeSlots: [Int]
        var index: [ChunkID: Int] = [:]
        var policy: TwoQueuePolicy
        var flights: [ChunkID: Flight] = [:]
        var activeFetches = 0
        var foregroundWaiting = CircularBuffer<PermitWaiter>()
        var backgroundWaiting = CircularBuffer<PermitWaiter>()
        var nextToken: UInt64 = 0
        var clock: UInt64 = 0
        var statistics = CacheStatistics()
        var pendingFills = 0
        var fillsDrained: [CheckedContinuation<Void, Never>] = []
        var recencyDirty = 0
        var closed = false
        var fillFault: FillFault?
    }

    /// How a caller joined the fetch of a chunk.
    private enum JoinOutcome {
        /// The chunk is in a slot now: go back to the hit path.
        case resident
        /// The chunk was fetched and is being written to a slot: here are its bytes.
        case buffer(ByteBuffer)
        /// This caller fetches it.
        case lead(token: UInt64)
        /// Another caller's fetch ended.
        case fetched(Result<ByteBuffer, ChunkReadError>)
        /// The cache is closed: read the source directly.
        case closed
    }

    /// The O_DIRECT alignment slot I/O is rounded to.
    static let alignment = 4096

    let configuration: CacheConfiguration
    private let device: AIOFileDevice
    /// A second, buffered descriptor of the cache file for `readIfResident` (nil: that path is off). O_DIRECT
    /// writes to a slot invalidate its pages in the page cache (Linux's direct-I/O write path does so before and
    /// after the write), and a slot is only rewritten once no reader holds it, so what this reads is the slot's
    /// current chunk.
    private let hitReader: AIOFileDevice?
    private let index: CacheIndex
    private let logger: Logger
    private let state: Mutex<State>
    private let metrics: CacheMetrics

    private init(
        configuration: CacheConfiguration, device: AIOFileDevice, hitReader: AIOFileDevice?, index: CacheIndex,
        state: State, logger: Logger
    ) {
        self.configuration = configuration
        self.device = device
        self.hitReader = hitReader
        self.index = index
        self.logger = logger
        self.state = Mutex(state)
        self.metrics = CacheMetrics()
        metrics.update(state.statistics)
    }

    // MARK: - Opening

    /// Preallocates the cache file, opens it for libaio with O_DIRECT, and reloads the index so a warm cache
    /// stays warm across restarts. Rows that no longer fit the configured slot size or count are dropped
    /// (logged), never served.
    public static func open(_ configuration: CacheConfiguration, logger: Logger) async throws(CacheError) -> ChunkCache
    {
        let slotSize = configuration.slotSize
        guard slotSize >= alignment, slotSize % alignment == 0 else {
            throw .invalidConfiguration(
                configuration.dataPath, "slot size \(slotSize) is not a multiple of \(alignment)")
        }
        let slotCount = configuration.slotCount
        guard slotCount >= 1 else {
            throw .invalidConfiguration(
                configuration.dataPath, "capacity \(configuration.capacity) holds no \(slotSize)-byte slot")
        }
        guard configuration.maxConcurrentFetches >= 1 else {
            throw .invalidConfiguration(
                configuration.dataPath, "maxConcurrentFetches \(configuration.maxConcurrentFetches) is below 1")
        }
        let fileSize = UInt64(slotCount) * UInt64(slotSize)
        let dataPath = configuration.dataPath
        let preallocation = await runBlocking { CacheFile.preallocate(path: dataPath, size: fileSize) }
        if let preallocation { throw preallocation }

        let device: AIOFileDevice
        do {
            device = try AIOFileDevice.open(
                path: dataPath, readOnly: false, direct: configuration.direct, blockSize: alignment, logger: logger)
        } catch {
            throw .ioError(dataPath, "\(error)")
        }

        var hitReader: AIOFileDevice?
        if configuration.pageCacheHits {
            if device.isDirect {
                hitReader = try? AIOFileDevice.open(
                    path: dataPath, readOnly: true, direct: false, blockSize: alignment, logger: logger)
            } else {
                hitReader = device
            }
        }
        let index: CacheIndex
        do {
            index = try CacheIndex(path: configuration.indexPath)
        } catch {
            await device.close()
            if let hitReader, hitReader !== device { await hitReader.close() }
            throw error
        }
        let indexPath = configuration.indexPath
        let reload = await index.perform { db in
            try Self.reloadIndex(db, slotSize: slotSize, slotCount: slotCount, logger: logger, path: indexPath)
        }
        let loaded: (generations: [Int: Int64], records: [SlotRecord])
        switch reload {
        case .success(let value): loaded = value
        case .failure(let error):
            await device.close()
            if let hitReader, hitReader !== device { await hitReader.close() }
            throw .indexError(indexPath, "\(error)")
        }

        var state = State(
            slots: Array(repeating: .free, count: slotCount), generations: Array(repeating: 0, count: slotCount),
            freeSlots: [], policy: TwoQueuePolicy(slotCount: slotCount))
        for (slot, generation) in loaded.generations where slot < slotCount { state.generations[slot] = generation }
        for record in loaded.records.sorted(by: { $0.lastUse < $1.lastUse }) {
            state.slots[record.slot] = .resident(
                Resident(
                    id: record.chunk, length: record.length, generation: record.generation, crc: record.crc,
                    verified: false, lastUse: record.lastUse, touched: TouchMap(chunkLength: record.length)))
            state.index[record.chunk] = record.slot
            state.policy.insert(record.slot, on: record.queue)
            state.clock = max(state.clock, record.lastUse)
        }
        state.freeSlots = (0..<slotCount).reversed().filter { !Self.isResident(state.slots[$0]) }
        state.statistics.slotCount = slotCount
        state.statistics.slotsUsed = loaded.records.count
        logger.info(
            "cache opened",
            metadata: [
                "path": "\(dataPath)", "slots": "\(slotCount)", "slotSize": "\(slotSize)",
                "warmChunks": "\(loaded.records.count)", "direct": "\(device.isDirect)",
            ])
        return ChunkCache(
            configuration: configuration, device: device, hitReader: hitReader, index: index, state: state, logger: logger)
    }

    private static func isResident(_ slot: SlotState) -> Bool {
        if case .resident = slot { return true }
        return false
    }

    /// Reads the index, dropping rows that do not fit the current layout, and records the layout.
    private static func reloadIndex(
        _ db: SQLiteDatabase, slotSize: Int, slotCount: Int, logger: Logger, path: String
    ) throws -> (generations: [Int: Int64], records: [SlotRecord]) {
        let previous = try CacheIndex.layout(db)
        var (generations, records) = try CacheIndex.load(db)
        var drop: [SlotRecord] = []
        if let previous, previous.slotSize != slotSize {
            if !records.isEmpty {
                logger.notice(
                    "cache slot size changed: dropping \(records.count) cached chunks",
                    metadata: [
                        "path": "\(path)", "previousSlotSize": "\(previous.slotSize)", "slotSize": "\(slotSize)",
                    ])
            }
            drop = records
            records = []
        } else if let previous, previous.slotCount > slotCount {
            let gone = records.filter { $0.slot >= slotCount }
            if !gone.isEmpty {
                logger.notice(
                    "cache capacity shrank: dropping \(gone.count) cached chunks past the last slot",
                    metadata: ["path": "\(path)", "previousSlots": "\(previous.slotCount)", "slots": "\(slotCount)"])
            }
            records.removeAll { $0.slot >= slotCount }
        }
        try CacheIndex.deleteSlots(db, from: slotCount)
        generations = generations.filter { $0.key < slotCount }

        var seen = Set<ChunkID>()
        var kept: [SlotRecord] = []
        for record in records.sorted(by: { $0.lastUse > $1.lastUse }) {
            if record.length <= 0 || record.length > slotSize || !seen.insert(record.chunk).inserted {
                drop.append(record)
            } else {
                kept.append(record)
            }
        }
        if !drop.isEmpty {
            try CacheIndex.clear(db, slots: drop.map(\.slot), generations: drop.map(\.generation))
        }
        try CacheIndex.setLayout(db, slotSize: slotSize, slotCount: slotCount)
        return (generations, kept)
    }

    // MARK: - Reading

    /// Bytes `range` of chunk `id`'s plaintext (`chunkLength` bytes), from its slot or, on a miss, from one
    /// shared fetch through `source`. With `admit: false` a miss is not kept in a slot (unless another caller of
    /// the same fetch wants it kept): a one-pass reader such as the relocation pump does not fill the cache.
    public func read(
        _ id: ChunkID, chunkLength: Int, range: Range<Int>, source: any ChunkSource,
        priority: FetchPriority = .foreground, admit: Bool = true
    ) async throws(ChunkReadError) -> ByteBuffer {
        guard range.lowerBound >= 0, range.upperBound <= chunkLength else {
            throw ChunkReadError(.ioError, chunk: id, "range \(range) is outside the chunk's \(chunkLength) bytes")
        }
        if range.isEmpty { return ByteBuffer() }
        while true {
            if let lookup = beginHit(id, chunkLength: chunkLength) {
                if let bytes = await readSlot(lookup, range: range) { return bytes }
                continue
            }
            switch await join(
                id, chunkLength: chunkLength, priority: priority, pin: false, reference: range, admit: admit)
            {
            case .resident:
                continue
            case .buffer(let whole):
                return Self.slice(whole, range)
            case .fetched(let result):
                return Self.slice(try result.get(), range)
            case .lead(let token):
                let whole = try await lead(id, chunkLength: chunkLength, source: source, token: token).get()
                return Self.slice(whole, range)
            case .closed:
                return Self.slice(try await source.readChunk(id, length: chunkLength), range)
            }
        }
    }

    /// The hit-only callback read: when chunk `id` is in a slot whose bytes have been verified, starts reading
    /// `range` of it through the cache file's `readAsync` and returns true; `completion` then gets the bytes,
    /// or a failure when the slot read failed (the slot is dropped, as `read` does; the caller reads again
    /// with `read`, which refetches from the source). Returns false, without calling `completion` and without
    /// any other effect, on a miss, an unverified slot (its CRC32C is checked on the `read` path first), a
    /// chunk being fetched, or a closed cache: the caller then uses `read`.
    public func readIfCached(
        _ id: ChunkID, chunkLength: Int, range: Range<Int>,
        completion: @escaping @Sendable (Result<ByteBuffer, ChunkReadError>) -> Void
    ) -> Bool {
        guard range.lowerBound >= 0, range.upperBound <= chunkLength, !range.isEmpty else { return false }
        let lookup = state.withLock { state -> HitLookup? in
            guard !state.closed, let slot = state.index[id], case .resident(var resident) = state.slots[slot],
                resident.verified, resident.length == chunkLength
            else { return nil }
            resident.readers += 1
            state.slots[slot] = .resident(resident)
            return HitLookup(
                id: id, slot: slot, generation: resident.generation, verified: true, length: resident.length)
        }
        guard let lookup else { return false }
        let start = range.lowerBound / Self.alignment * Self.alignment
        let end = Self.alignUp(range.upperBound)
        let base = UInt64(lookup.slot) * UInt64(configuration.slotSize)
        let submitted = device.readAsync(offset: base + UInt64(start), length: end - start) { [self] result in
            switch result {
            case .success(let bytes):
                endHit(lookup, range: range, outcome: .served)
                let slice = bytes.getSlice(at: bytes.readerIndex + range.lowerBound - start, length: range.count)
                completion(.success(slice ?? ByteBuffer()))
            case .failure(let error):
                logger.warning(
                    "cache slot read failed; dropping the slot",
                    metadata: ["slot": "\(lookup.slot)", "chunk": "\(lookup.id)", "error": "\(error)"])
                endHit(lookup, range: range, outcome: .failed)
                completion(.failure(ChunkReadError(.ioError, chunk: id, "cache slot read failed: \(error)")))
            }
        }
        if !submitted { endHit(lookup, range: range, outcome: .abandoned) }
        return submitted
    }

    /// The inline hit path: bytes `range` of chunk `id` when it is in a verified slot AND the kernel's page
    /// cache holds those bytes of the cache file (a non-blocking `preadv2`, no I/O submitted, no thread hop).
    /// Nil, with no other effect, otherwise: the caller then uses `readIfCached` or `read`. A page-cache miss
    /// here starts the kernel's readahead, so a slot read often becomes a page-cache hit.
    public func readIfResident(_ id: ChunkID, chunkLength: Int, range: Range<Int>) -> ByteBuffer? {
        guard let hitReader, range.lowerBound >= 0, range.upperBound <= chunkLength, !range.isEmpty else { return nil }
        let lookup = state.withLock { state -> HitLookup? in
            guard !state.closed, let slot = state.index[id], case .resident(var resident) = state.slots[slot],
                resident.verified, resident.length == chunkLength
            else { return nil }
            resident.readers += 1
            state.slots[slot] = .resident(resident)
            return HitLookup(
                id: id, slot: slot, generation: resident.generation, verified: true, length: resident.length)
        }
        guard let lookup else { return nil }
        let base = UInt64(lookup.slot) * UInt64(configuration.slotSize)
        let bytes = hitReader.readIfReady(offset: base + UInt64(range.lowerBound), length: range.count)
        endHit(lookup, range: range, outcome: bytes == nil ? .abandoned : .served)
        return bytes
    }

    /// Asks the kernel to bring chunk `id`'s slot into the page cache (in the background), so the guest's first
    /// read of a chunk the prefetcher staged is served inline by `readIfResident`, as a hot chunk's would be.
    public func warmPageCache(_ id: ChunkID) {
        guard let hitReader, hitReader !== device else { return }
        let slot = state.withLock { state -> (Int, Int)? in
            guard let slot = state.index[id], case .resident(let resident) = state.slots[slot] else { return nil }
            return (slot, resident.length)
        }
        guard let (index, length) = slot else { return }
        hitReader.adviseWillNeed(offset: UInt64(index) * UInt64(configuration.slotSize), length: Self.alignUp(length))
    }

    /// Brings chunk `id` into the cache (prefetch, readahead); returns once it is in a slot (or could not be
    /// cached). True if it was not cached and had to be fetched. With `pin`, the slot is not evicted until
    /// `unpin` is called as many times.
    @discardableResult
    public func stage(
        _ id: ChunkID, chunkLength: Int, source: any ChunkSource, priority: FetchPriority = .background,
        pin: Bool = false
    ) async throws(ChunkReadError) -> Bool {
        while true {
            let resident = state.withLock { state -> Bool? in
                if state.closed { return false }
                guard let slot = state.index[id], case .resident(var resident) = state.slots[slot] else { return nil }
                if pin {
                    if resident.pins == 0 { Self.park(slot, &resident, in: &state) }
                    resident.pins += 1
                    state.slots[slot] = .resident(resident)
                }
                return true
            }
            if resident != nil {
                if pin { metrics.update(statistics) }
                return false
            }
            switch await join(id, chunkLength: chunkLength, priority: priority, pin: pin, reference: nil) {
            case .resident:
                continue
            case .closed:
                return false
            case .buffer:
                await waitForFill(id)
                return false
            case .fetched(let result):
                _ = try result.get()
                await waitForFill(id)
                return true
            case .lead(let token):
                _ = try await lead(id, chunkLength: chunkLength, source: source, token: token).get()
                await waitForFill(id)
                return true
            }
        }
    }

    /// Releases one pin taken by `stage(pin: true)`.
    public func unpin(_ id: ChunkID) {
        let changed = state.withLock { state -> Bool in
            guard let slot = state.index[id], case .resident(var resident) = state.slots[slot], resident.pins > 0
            else { return false }
            resident.pins -= 1
            if resident.pins == 0 {
                state.statistics.pinnedSlots -= 1
                state.policy.insert(slot, on: resident.parkedQueue ?? .a1in)
                resident.parkedQueue = nil
            }
            state.slots[slot] = .resident(resident)
            return true
        }
        if changed { metrics.update(statistics) }
    }

    /// Frees the slots of `ids` that are resident and not pinned (a relocated mount's chunks, no longer needed);
    /// a slot being read is freed when its readers are done. Returns how many slots were let go.
    @discardableResult
    public func release(_ ids: some Sequence<ChunkID>) -> Int {
        let (rows, snapshot) = state.withLock { state -> ([(Int, Int64)], CacheStatistics) in
            var rows: [(Int, Int64)] = []
            for id in ids {
                guard let slot = state.index[id], case .resident(let resident) = state.slots[slot], resident.pins == 0,
                    let row = Self.drop(slot: slot, in: &state)
                else { continue }
                rows.append(row)
            }
            return (rows, state.statistics)
        }
        for row in rows { clearRow(row) }
        metrics.update(snapshot)
        return rows.count
    }

    /// Whether chunk `id` is in a slot.
    public func contains(_ id: ChunkID) -> Bool {
        state.withLock { $0.index[id] != nil }
    }

    /// Whether a read of chunk `id` would be served without waiting on the source: it is in a slot, or it was
    /// fetched and is being written into one (reads are served from the fetched bytes meanwhile).
    public func holds(_ id: ChunkID) -> Bool {
        state.withLock { $0.index[id] != nil || $0.flights[id]?.fetched != nil }
    }

    /// The counters now.
    public var statistics: CacheStatistics {
        state.withLock { $0.statistics }
    }

    // MARK: - Hits

    /// A slot read about to start.
    private struct HitLookup {
        var id: ChunkID
        var slot: Int
        var generation: Int64
        var verified: Bool
        var length: Int
    }

    /// Takes a reader reference on the chunk's slot, if it has one.
    private func beginHit(_ id: ChunkID, chunkLength: Int) -> HitLookup? {
        let (lookup, clear) = state.withLock { state -> (HitLookup?, (Int, Int64)?) in
            guard !state.closed, let slot = state.index[id], case .resident(var resident) = state.slots[slot] else {
                return (nil, nil)
            }
            guard resident.length == chunkLength else {
                return (nil, Self.drop(slot: slot, in: &state))
            }
            resident.readers += 1
            state.slots[slot] = .resident(resident)
            return (
                HitLookup(
                    id: id, slot: slot, generation: resident.generation, verified: resident.verified,
                    length: resident.length), nil
            )
        }
        if let clear { clearRow(clear) }
        return lookup
    }

    /// Reads `range` from a slot: just that range once the slot is verified, else the whole chunk to check
    /// its CRC32C first. Nil when the slot failed (I/O error, bad CRC) and was dropped.
    private func readSlot(_ lookup: HitLookup, range: Range<Int>) async -> ByteBuffer? {
        let base = UInt64(lookup.slot) * UInt64(configuration.slotSize)
        if lookup.verified {
            let start = range.lowerBound / Self.alignment * Self.alignment
            let end = Self.alignUp(range.upperBound)
            do {
                let bytes = try await device.read(offset: base + UInt64(start), length: end - start)
                endHit(lookup, range: range, outcome: .served)
                return bytes.getSlice(at: bytes.readerIndex + range.lowerBound - start, length: range.count)
            } catch {
                logger.warning(
                    "cache slot read failed; dropping the slot and reading the source",
                    metadata: ["slot": "\(lookup.slot)", "chunk": "\(lookup.id)", "error": "\(error)"])
                endHit(lookup, range: range, outcome: .failed)
                return nil
            }
        }
        let whole: ByteBuffer
        do {
            let bytes = try await device.read(offset: base, length: Self.alignUp(lookup.length))
            guard let plain = bytes.getSlice(at: bytes.readerIndex, length: lookup.length) else {
                endHit(lookup, range: range, outcome: .failed)
                return nil
            }
            whole = plain
        } catch {
            logger.warning(
                "cache slot read failed; dropping the slot and reading the source",
                metadata: ["slot": "\(lookup.slot)", "chunk": "\(lookup.id)", "error": "\(error)"])
            endHit(lookup, range: range, outcome: .failed)
            return nil
        }
        let expected = state.withLock { state -> UInt32? in
            guard case .resident(let resident) = state.slots[lookup.slot] else { return nil }
            return resident.crc
        }
        guard let expected, SlotChecksum.crc32c(whole) == expected else {
            logger.warning(
                "cache slot fails its CRC32C check; dropping it and refetching the chunk",
                metadata: ["slot": "\(lookup.slot)", "chunk": "\(lookup.id)"])
            endHit(lookup, range: range, outcome: .failed)
            return nil
        }
        endHit(lookup, range: range, outcome: .verified)
        return Self.slice(whole, range)
    }

    private enum HitOutcome {
        case served
        case verified
        case failed
        /// The read was never started: only the reader reference is returned.
        case abandoned
    }

    /// Ends a slot read: counts the hit and updates recency (memory only), or drops a failed slot.
    private func endHit(_ lookup: HitLookup, range: Range<Int>, outcome: HitOutcome) {
        let (clear, snapshot) = state.withLock { state -> ((Int, Int64)?, CacheStatistics?) in
            switch state.slots[lookup.slot] {
            case .resident(var resident) where resident.generation == lookup.generation:
                resident.readers -= 1
                if case .abandoned = outcome {
                    state.slots[lookup.slot] = .resident(resident)
                    return (nil, nil)
                }
                if case .failed = outcome {
                    state.slots[lookup.slot] = .resident(resident)
                    return (Self.drop(slot: lookup.slot, in: &state), state.statistics)
                }
                if case .verified = outcome { resident.verified = true }
                state.clock += 1
                resident.lastUse = state.clock
                let reReference = resident.touched.touch(range)
                state.policy.referenced(lookup.slot, reReference: reReference)
                if reReference, resident.parkedQueue == .a1in { resident.parkedQueue = .am }
                if !resident.recencyDirty {
                    resident.recencyDirty = true
                    state.recencyDirty += 1
                }
                state.slots[lookup.slot] = .resident(resident)
                state.statistics.hits += 1
                return (nil, nil)
            case .retiring(let readers):
                if readers <= 1 {
                    state.slots[lookup.slot] = .free
                    state.freeSlots.append(lookup.slot)
                } else {
                    state.slots[lookup.slot] = .retiring(readers: readers - 1)
                }
                return (nil, nil)
            default:
                return (nil, nil)
            }
        }
        if let clear { clearRow(clear) }
        if let snapshot { metrics.update(snapshot) }
        switch outcome {
        case .served, .verified: metrics.hits.increment()
        case .failed, .abandoned: break
        }
    }

    /// Takes a resident slot out of service (bad CRC, I/O error, wrong length). It becomes free once its
    /// readers are done. Returns the row to clear.
    private static func drop(slot: Int, in state: inout State) -> (Int, Int64)? {
        guard case .resident(let resident) = state.slots[slot] else { return nil }
        state.index[resident.id] = nil
        state.policy.remove(slot)
        state.statistics.slotsUsed -= 1
        if resident.pins > 0 { state.statistics.pinnedSlots -= 1 }
        if resident.recencyDirty { state.recencyDirty -= 1 }
        if resident.readers > 0 {
            state.slots[slot] = .retiring(readers: resident.readers)
        } else {
            state.slots[slot] = .free
            state.freeSlots.append(slot)
        }
        return (slot, resident.generation)
    }

    /// Takes a slot that is being pinned off the 2Q lists, remembering its queue.
    private static func park(_ slot: Int, _ resident: inout Resident, in state: inout State) {
        resident.parkedQueue = state.policy.queueOf[slot] ?? .a1in
        state.policy.remove(slot)
        state.statistics.pinnedSlots += 1
    }

    /// Clears a dropped slot's row in the background (a later fill of the slot clears it again first).
    private func clearRow(_ row: (Int, Int64)) {
        index.enqueue { db in try CacheIndex.clear(db, slots: [row.0], generations: [row.1]) }
    }

    // MARK: - Misses: single-flight fetches

    /// Joins the fetch of `id`, or becomes the caller that fetches it.
    private func join(
        _ id: ChunkID, chunkLength: Int, priority: FetchPriority, pin: Bool, reference: Range<Int>?,
        admit: Bool = true
    ) async -> JoinOutcome {
        let counted = reference != nil
        let outcome = await withCheckedContinuation { (continuation: CheckedContinuation<JoinOutcome, Never>) in
            let immediate = state.withLock { state -> JoinOutcome? in
                if state.closed { return .closed }
                if state.index[id] != nil { return .resident }
                if var flight = state.flights[id] {
                    if admit { flight.admit = true }
                    if pin { flight.pins += 1 }
                    if let reference, flight.touched.touch(reference) { flight.reReferenced = true }
                    if let fetched = flight.fetched {
                        state.flights[id] = flight
                        if counted { state.statistics.hits += 1 }
                        return .buffer(fetched)
                    }
                    flight.waiters.append(continuation)
                    if priority == .foreground && flight.priority == .background {
                        flight.priority = .foreground
                        if let position = state.backgroundWaiting.firstIndex(where: { $0.token == flight.token }) {
                            let waiter = state.backgroundWaiting.remove(at: position)
                            state.foregroundWaiting.append(waiter)
                        }
                    }
                    state.flights[id] = flight
                    if counted { state.statistics.misses += 1 }
                    return nil
                }
                state.nextToken += 1
                var flight = Flight(
                    token: state.nextToken, priority: priority, touched: TouchMap(chunkLength: chunkLength))
                if pin { flight.pins = 1 }
                flight.admit = admit
                if let reference { _ = flight.touched.touch(reference) }
                state.flights[id] = flight
                if counted { state.statistics.misses += 1 }
                return .lead(token: state.nextToken)
            }
            if let immediate { continuation.resume(returning: immediate) }
        }
        if counted {
            switch outcome {
            case .buffer: metrics.hits.increment()
            case .fetched, .lead: metrics.misses.increment()
            case .resident, .closed: break
            }
        }
        return outcome
    }

    /// Fetches `id` from `source` for every caller of its flight, then starts writing it into a slot.
    private func lead(
        _ id: ChunkID, chunkLength: Int, source: any ChunkSource, token: UInt64
    ) async -> Result<ByteBuffer, ChunkReadError> {
        await acquirePermit(id)
        var result: Result<ByteBuffer, ChunkReadError>
        do {
            result = .success(try await source.readChunk(id, length: chunkLength))
        } catch {
            result = .failure(error)
        }
        releasePermit()
        if case .success(let bytes) = result, bytes.readableBytes != chunkLength {
            result = .failure(
                ChunkReadError(
                    .corrupt, chunk: id, "source returned \(bytes.readableBytes) bytes, expected \(chunkLength)"))
        }

        switch result {
        case .success(let bytes):
            let cacheable = chunkLength > 0 && chunkLength <= configuration.slotSize
            let (waiters, fillWaiters, fill, snapshot) = state.withLock {
                state -> (
                    [CheckedContinuation<JoinOutcome, Never>], [CheckedContinuation<Void, Never>], Bool, CacheStatistics
                ) in
                state.statistics.fetches += 1
                state.statistics.bytesFetched += UInt64(chunkLength)
                guard var flight = state.flights[id] else { return ([], [], false, state.statistics) }
                let waiters = flight.waiters
                flight.waiters = []
                guard cacheable, !state.closed, flight.admit else {
                    state.flights[id] = nil
                    return (waiters, flight.fillWaiters, false, state.statistics)
                }
                flight.fetched = bytes
                state.flights[id] = flight
                state.pendingFills += 1
                return (waiters, [], true, state.statistics)
            }
            metrics.fetches.increment()
            metrics.bytesFetched.increment(by: Int64(chunkLength))
            metrics.update(snapshot)
            for waiter in waiters { waiter.resume(returning: .fetched(.success(bytes))) }
            for waiter in fillWaiters { waiter.resume() }
            if fill {
                Task { await self.fill(id, bytes: bytes) }
            }
        case .failure(let error):
            let (waiters, fillWaiters) = state.withLock { state in
                let flight = state.flights.removeValue(forKey: id)
                return (flight?.waiters ?? [], flight?.fillWaiters ?? [])
            }
            for waiter in waiters { waiter.resume(returning: .fetched(.failure(error))) }
            for waiter in fillWaiters { waiter.resume() }
        }
        return result
    }

    /// Waits for one of the `maxConcurrentFetches` permits, in the flight's priority queue.
    private func acquirePermit(_ id: ChunkID) async {
        let limit = configuration.maxConcurrentFetches
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let granted = state.withLock { state -> Bool in
                if state.activeFetches < limit {
                    state.activeFetches += 1
                    return true
                }
                let flight = state.flights[id]
                let waiter = PermitWaiter(token: flight?.token ?? 0, continuation: continuation)
                if flight?.priority == .foreground {
                    state.foregroundWaiting.append(waiter)
                } else {
                    state.backgroundWaiting.append(waiter)
                }
                return false
            }
            if granted { continuation.resume() }
        }
    }

    /// Hands the permit to the first foreground waiter, else the first background one, else returns it.
    private func releasePermit() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.foregroundWaiting.popFirst() { return waiter.continuation }
            if let waiter = state.backgroundWaiting.popFirst() { return waiter.continuation }
            state.activeFetches -= 1
            return nil
        }
        next?.resume()
    }

    /// Fetches waiting for a permit, by priority (for tests).
    var waitingFetches: (foreground: Int, background: Int) {
        state.withLock { ($0.foregroundWaiting.count, $0.backgroundWaiting.count) }
    }

    /// Waits until a fetched chunk's slot write has ended (at once if none is running).
    private func waitForFill(_ id: ChunkID) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let waiting = state.withLock { state -> Bool in
                guard var flight = state.flights[id], flight.fetched != nil else { return false }
                flight.fillWaiters.append(continuation)
                state.flights[id] = flight
                return true
            }
            if !waiting { continuation.resume() }
        }
    }

    // MARK: - Filling slots

    /// What a fill does, decided under the lock.
    private struct FillPlan {
        var slot: Int
        var generation: Int64
        var queue: SlotQueue
        var fault: FillFault?
        var evicted: Bool
    }

    /// Writes a fetched chunk into a free or evicted slot: clear the row, write the data, fill the row.
    private func fill(_ id: ChunkID, bytes: ByteBuffer) async {
        defer { endFill() }
        let plan = state.withLock { state -> FillPlan? in
            guard let flight = state.flights[id], !state.closed else { return nil }
            var chosen = state.freeSlots.popLast()
            if chosen == nil {
                let slots = state.slots
                chosen = state.policy.victim { slot in
                    guard case .resident(let resident) = slots[slot] else { return false }
                    return resident.pins == 0 && resident.readers == 0
                }
                if let victim = chosen, case .resident(let old) = state.slots[victim] {
                    if state.policy.queueOf[victim] == .a1in { state.policy.rememberGhost(old.id) }
                    state.policy.remove(victim)
                    state.index[old.id] = nil
                    if old.recencyDirty { state.recencyDirty -= 1 }
                    state.statistics.slotsUsed -= 1
                }
            }
            guard let slot = chosen else { return nil }
            let evicted = Self.isResident(state.slots[slot])
            if evicted { state.statistics.evictions += 1 }
            state.slots[slot] = .filling
            let queue: SlotQueue = state.policy.takeGhost(id) || flight.reReferenced ? .am : .a1in
            // On its list already, so fills in progress count towards A1in; `.filling` is never evicted.
            state.policy.insert(slot, on: queue)
            state.generations[slot] += 1
            return FillPlan(
                slot: slot, generation: state.generations[slot], queue: queue, fault: state.fillFault, evicted: evicted)
        }
        guard let plan else {
            abandonFill(id, freeing: nil)
            return
        }
        if plan.evicted { metrics.evictions.increment() }

        // Step 1: forget what the slot held, durably, before its bytes change.
        let previousGeneration = plan.generation - 1
        let slot = plan.slot
        if case .failure(let error) = await index.perform({ db in
            try CacheIndex.clear(db, slots: [slot], generations: [previousGeneration])
        }) {
            logger.warning("cache index update failed; not caching", metadata: ["error": "\(error)"])
            abandonFill(id, freeing: plan.slot)
            return
        }
        if plan.fault == .afterClear {
            abandonFill(id, freeing: nil)
            return
        }

        // Step 2: the chunk's bytes, padded to the O_DIRECT alignment.
        let length = bytes.readableBytes
        var padded = ByteBufferAllocator().buffer(capacity: Self.alignUp(length))
        padded.writeImmutableBuffer(bytes)
        padded.writeRepeatingByte(0, count: Self.alignUp(length) - length)
        do {
            try await device.write(
                offset: UInt64(plan.slot) * UInt64(configuration.slotSize), data: padded, fua: false)
        } catch {
            logger.warning(
                "cache slot write failed; serving the chunk uncached",
                metadata: ["slot": "\(plan.slot)", "chunk": "\(id)", "error": "\(error)"])
            abandonFill(id, freeing: plan.slot)
            return
        }
        if plan.fault == .afterDataWrite {
            abandonFill(id, freeing: nil)
            return
        }

        // Step 3: the row that makes the slot serve this chunk.
        let lastUse = state.withLock { state -> UInt64 in
            state.clock += 1
            return state.clock
        }
        let record = SlotRecord(
            slot: plan.slot, generation: plan.generation, chunk: id, length: length,
            crc: SlotChecksum.crc32c(bytes), queue: plan.queue, lastUse: lastUse)
        if case .failure(let error) = await index.perform({ db in try CacheIndex.fill(db, record) }) {
            logger.warning("cache index update failed; not caching", metadata: ["error": "\(error)"])
            abandonFill(id, freeing: plan.slot)
            return
        }

        let (fillWaiters, snapshot, persist) = state.withLock {
            state -> ([CheckedContinuation<Void, Never>], CacheStatistics, Bool) in
            let flight = state.flights.removeValue(forKey: id)
            var resident = Resident(
                id: id, length: length, generation: plan.generation, crc: record.crc, verified: true,
                lastUse: lastUse, touched: flight?.touched ?? TouchMap(chunkLength: length))
            resident.pins = flight?.pins ?? 0
            state.index[id] = plan.slot
            // A re-reference may have arrived while the slot was written.
            if flight?.reReferenced == true { state.policy.insert(plan.slot, on: .am) }
            state.statistics.slotsUsed += 1
            if resident.pins > 0 { Self.park(plan.slot, &resident, in: &state) }
            state.slots[plan.slot] = .resident(resident)
            let persist = state.recencyDirty >= max(64, state.slots.count / 8)
            return (flight?.fillWaiters ?? [], state.statistics, persist)
        }
        metrics.update(snapshot)
        for waiter in fillWaiters { waiter.resume() }
        if persist { await saveRecency() }
    }

    /// Ends a fill that could not cache the chunk: releases the flight and, if given, frees the slot.
    private func abandonFill(_ id: ChunkID, freeing slot: Int?) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            if let slot {
                state.policy.remove(slot)
                state.slots[slot] = .free
                state.freeSlots.append(slot)
            }
            return state.flights.removeValue(forKey: id)?.fillWaiters ?? []
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Counts a fill out, waking `close()` after the last one.
    private func endFill() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.pendingFills -= 1
            guard state.pendingFills == 0 else { return [] }
            defer { state.fillsDrained = [] }
            return state.fillsDrained
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once chunk `id`'s slot write (if one is under way) has finished: tests that need every fill done
    /// before the next fetch, so that what they assert does not depend on how far background fills lag.
    func waitUntilFilled(_ id: ChunkID) async {
        await waitForFill(id)
    }

    /// Makes the next fills stop at `fault` (tests of crash safety).
    func injectFillFault(_ fault: FillFault?) {
        state.withLock { $0.fillFault = fault }
    }

    /// The slot holding `id` (tests).
    func slot(of id: ChunkID) -> Int? {
        state.withLock { $0.index[id] }
    }

    // MARK: - Recency and closing

    /// Writes the queue and last use of every slot whose recency changed.
    private func saveRecency() async {
        let records = state.withLock { state -> [RecencyRecord] in
            var records: [RecencyRecord] = []
            for slot in state.slots.indices {
                guard case .resident(var resident) = state.slots[slot], resident.recencyDirty else { continue }
                resident.recencyDirty = false
                state.slots[slot] = .resident(resident)
                records.append(
                    RecencyRecord(
                        slot: slot, generation: resident.generation,
                        queue: state.policy.queueOf[slot] ?? resident.parkedQueue ?? .a1in,
                        lastUse: resident.lastUse))
            }
            state.recencyDirty = 0
            return records
        }
        guard !records.isEmpty else { return }
        if case .failure(let error) = await index.perform({ db in try CacheIndex.saveRecency(db, records) }) {
            logger.notice("could not persist cache recency", metadata: ["error": "\(error)"])
        }
    }

    /// Waits for slot writes in progress, persists recency, and closes the cache file. Reads after close go
    /// straight to their source.
    public func close() async {
        let first = state.withLock { state -> Bool in
            defer { state.closed = true }
            return !state.closed
        }
        guard first else { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { state -> Bool in
                if state.pendingFills == 0 { return true }
                state.fillsDrained.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
        await saveRecency()
        _ = await index.perform { db in try db.checkpoint() }
        if let hitReader, hitReader !== device { await hitReader.close() }
        await device.close()
    }

    // MARK: - Helpers

    private static func alignUp(_ value: Int) -> Int {
        (value + alignment - 1) / alignment * alignment
    }

    private static func slice(_ whole: ByteBuffer, _ range: Range<Int>) -> ByteBuffer {
        whole.getSlice(at: whole.readerIndex + range.lowerBound, length: range.count) ?? ByteBuffer()
    }
}

// MARK: - Metrics

/// The cache's swift-metrics instruments (`livemount_cache_*`).
struct CacheMetrics: Sendable {
    let hits = Counter(label: "livemount_cache_hits")
    let misses = Counter(label: "livemount_cache_misses")
    let fetches = Counter(label: "livemount_cache_fetches")
    let bytesFetched = Counter(label: "livemount_cache_bytes_fetched")
    let evictions = Counter(label: "livemount_cache_evictions")
    let slotsUsed = Gauge(label: "livemount_cache_slots_used")
    let slotCount = Gauge(label: "livemount_cache_slot_count")
    let pinnedSlots = Gauge(label: "livemount_cache_pinned_slots")

    /// Sets the gauges (counters are incremented where things happen).
    func update(_ statistics: CacheStatistics) {
        slotsUsed.record(statistics.slotsUsed)
        slotCount.record(statistics.slotCount)
        pinnedSlots.record(statistics.pinnedSlots)
    }
}

/// Blocking file set-up work, run on a Dispatch worker rather than a Swift concurrency thread.
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(returning: body()) }
    }
}

/// Creating and sizing the cache and overlay files.
enum CacheFile {
    /// Creates `path` if needed and allocates `size` bytes with `posix_fallocate` (a block device must
    /// simply be large enough). A larger file is truncated to `size`.
    static func preallocate(path: String, size: UInt64) -> CacheError? {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return .ioError(path, "open: \(describe(errno))") }
        defer { Glibc.close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return .ioError(path, "fstat: \(describe(errno))") }
        if info.st_mode & S_IFMT == S_IFBLK {
            var bytes: UInt64 = 0
            let blkGetSize64: UInt = 0x8008_1272  // BLKGETSIZE64 = _IOR(0x12, 114, size_t), linux/fs.h
            guard ioctl(fd, blkGetSize64, &bytes) == 0 else {
                return .ioError(path, "BLKGETSIZE64: \(describe(errno))")
            }
            return bytes >= size ? nil : .noSpace(path, "block device holds \(bytes) bytes, the cache needs \(size)")
        }
        if UInt64(max(0, info.st_size)) > size {
            guard ftruncate(fd, off_t(size)) == 0 else { return .ioError(path, "ftruncate: \(describe(errno))") }
        }
        let rc = posix_fallocate(fd, 0, off_t(size))
        switch rc {
        case 0:
            return nil
        case ENOSPC, EDQUOT:
            return .noSpace(path, "cannot preallocate \(size) bytes for the cache file: \(describe(rc))")
        default:
            return .ioError(path, "posix_fallocate of \(size) bytes: \(describe(rc))")
        }
    }

    static func describe(_ code: Int32) -> String {
        guard let message = strerror(code) else { return "errno \(code)" }
        return String(cString: message)
    }
}
