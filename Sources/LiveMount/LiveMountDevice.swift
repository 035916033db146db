import BlockDevice
import Cache
import Logging
import NIOCore
import Dispatch
import Prefetch
import Relocation
import Repository
import Synchronization

/// A backup disk served as a LUN (DESIGN.md, The parts: `LiveMountDevice`).
///
/// Reads come from the write overlay where the guest wrote, else from the SSD-tier cache, else from the
/// backup's chunk (decompressed, verified, then inserted into the cache). Writes, UNMAP and WRITE SAME go to
/// the overlay; the backup is never written (invariant 1). The SCSI layer has already checked every range.
///
/// A chunk that cannot be read (missing, corrupt) fails that read with `BlockDeviceError.readFailed`, which the
/// SCSI layer answers with MEDIUM ERROR / UNRECOVERED READ ERROR on this LUN only; its bytes are never served.
public final class LiveMountDevice: BlockDevice {
    public let blockSize: Int
    public let blockCount: UInt64
    public let isReadOnly: Bool
    public var supportsUnmap: Bool {
        if switched.load(ordering: .acquiring), let primary = relocation.withLock({ $0.primary }) {
            return primary.supportsUnmap
        }
        return overlay != nil
    }

    /// The backup disk being served.
    public let manifest: DiskManifest
    private let source: any ChunkSource
    private let cache: ChunkCache
    /// The guest's writes; nil for a read-only mount.
    public let overlay: WriteOverlay?
    /// Chunks staged ahead of a sequential reader.
    private let readaheadChunks: Int
    private let readahead = Mutex(ReadaheadState())
    private let logger: Logger
    /// The trace recorder and the prefetcher, when the mount has them.
    public let activity: MountActivity
    /// Relocation: the pump's tap, held writes, and the primary LUN once switched over.
    private let relocation = Mutex(RelocationHooks())
    /// Set once the LUN is served by its primary (checked before the lock on every command).
    private let switched = Atomic<Bool>(false)
    /// Reads running on the live mount (overlay, cache, backup), so its overlay is closed only after them.
    private let liveReads = Atomic<Int>(0)
    /// Guest commands finished and their summed latency, for the pump's governor.
    private let guestOperations = Atomic<UInt64>(0)
    private let guestLatency = Atomic<UInt64>(0)

    /// What relocation changes on the write path.
    private struct RelocationHooks {
        var tap: (any RelocationTap)?
        var held = false
        var heldWriters: [CheckedContinuation<Void, Never>] = []
        var writesInFlight = 0
        var drained: [CheckedContinuation<Void, Never>] = []
        var primary: (any BlockDevice)?
    }

    /// Where a sequential reader was and how far ahead chunks have been staged.
    private struct ReadaheadState {
        var lastEnd: UInt64 = .max
        var frontier = 0
    }

    /// Serves `manifest` through `cache` (fetching from `source`), with `overlay` for writes (nil: read-only).
    /// The size in blocks rounds up, so a disk whose size is not a whole number of blocks is served whole
    /// (the tail reads as zeros).
    /// `relocatedTo`: the mount's relocation completed earlier; the LUN is served by this primary alone
    /// (writable unless `readOnly`).
    public init(
        manifest: DiskManifest, source: any ChunkSource, cache: ChunkCache, overlay: WriteOverlay?,
        blockSize: Int = 512, readaheadChunks: Int = 8, logger: Logger, relocatedTo primary: (any BlockDevice)? = nil,
        readOnly: Bool? = nil
    ) {
        self.manifest = manifest
        self.source = source
        self.cache = cache
        self.overlay = overlay
        self.blockSize = blockSize
        self.blockCount = (manifest.size + UInt64(blockSize) - 1) / UInt64(blockSize)
        self.isReadOnly = readOnly ?? (overlay == nil)
        self.readaheadChunks = readaheadChunks
        self.logger = logger
        self.activity = MountActivity(blockSize: blockSize, logger: logger)
        if let primary {
            relocation.withLock { $0.primary = primary }
            switched.store(true, ordering: .releasing)
        }
    }

    // MARK: - Reads

    public func read(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer {
        let started = DispatchTime.now().uptimeNanoseconds
        defer { noteGuest(since: started) }
        if switched.load(ordering: .acquiring), let primary = relocation.withLock({ $0.primary }) {
            return try await primary.read(offset: offset, length: length)
        }
        liveReads.add(1, ordering: .relaxed)
        defer { liveReads.subtract(1, ordering: .releasing) }
        guard let ticket = activity.begin(offset: offset, length: length) else {
            return try await readData(offset: offset, length: length)
        }
        let source = readSource(offset: offset, length: length)
        let data = try await readData(offset: offset, length: length)
        activity.end(ticket, source: source)
        return data
    }

    /// Where a read will be served from (for its trace record): the slowest of its parts.
    private func readSource(offset: UInt64, length: Int) -> ReadSource {
        let extents =
            overlay?.extents(offset: offset, length: length)
            ?? [OverlayExtent(offset: offset, length: length, kind: .absent)]
        var worst = ReadSource.zero
        let chunkSize = UInt64(manifest.chunkSize)
        for extent in extents {
            switch extent.kind {
            case .data: worst = max(worst, .overlay)
            case .zero: break
            case .absent:
                guard extent.length > 0 else { continue }
                let first = Int(extent.offset / chunkSize)
                let last = Int((extent.offset + UInt64(extent.length) - 1) / chunkSize)
                for index in first...last where index < manifest.chunkCount {
                    guard let id = manifest.chunk(at: index) else { continue }
                    worst = max(worst, cache.holds(id) ? .cache : .backup)
                }
            }
        }
        return worst
    }

    /// `priority` and `admit` as for `ChunkCache.read`: the pump reads at background priority without filling the cache.
    private func readData(offset: UInt64, length: Int, priority: FetchPriority = .foreground, admit: Bool = true)
        async throws(BlockDeviceError) -> ByteBuffer
    {
        guard let overlay else {
            return try await readBackup(offset: offset, length: length, priority: priority, admit: admit)
        }
        let extents = overlay.extents(offset: offset, length: length)
        if extents.count == 1, let only = extents.first {
            return try await readExtent(only, overlay: overlay, priority: priority, admit: admit)
        }
        var result = ByteBuffer()
        result.reserveCapacity(length)
        for extent in extents {
            var piece = try await readExtent(extent, overlay: overlay, priority: priority, admit: admit)
            result.writeBuffer(&piece)
        }
        return result
    }

    /// The inline read path (no I/O submitted): a range of the backup that the guest has not written, each chunk
    /// of it served from zeros (an elided chunk, or what the guest unmapped) or from a cache slot the kernel's
    /// page cache holds. Nil otherwise. A recorder or prefetcher that listens is told of each read served here.
    public func readIfReady(offset: UInt64, length: Int) -> ByteBuffer? {
        if switched.load(ordering: .acquiring) {
            return relocation.withLock({ $0.primary })?.readIfReady(offset: offset, length: length)
        }
        guestOperations.add(1, ordering: .relaxed)
        guard activity.isListening else { return readDataIfReady(offset: offset, length: length)?.0 }
        // Recording or prefetching: reported once the bytes are at hand (a read that is not ready goes on to
        // `readAsync` or `read`, which report it).
        let issued = activity.now()
        guard let (data, source) = readDataIfReady(offset: offset, length: length) else { return nil }
        if let ticket = activity.begin(offset: offset, length: length, issued: issued) {
            activity.end(ticket, source: source)
        }
        return data
    }

    private func readDataIfReady(offset: UInt64, length: Int) -> (ByteBuffer, ReadSource)? {
        guard length > 0 else { return nil }
        if let overlay {
            let extents = overlay.extents(offset: offset, length: length)
            guard extents.count == 1, let only = extents.first else { return nil }
            switch only.kind {
            case .data: return nil
            case .zero: return (ByteBuffer(repeating: 0, count: length), .zero)
            case .absent: break
            }
        }
        let pieces = chunkPieces(offset: offset, length: length)
        guard let first = pieces.first?.index else { return nil }
        if pieces.count == 1 {
            guard let (data, source) = chunkIfReady(first, range: pieces[pieces.startIndex].range) else { return nil }
            noteRead(chunk: first, offset: offset, length: length)
            return (data, source)
        }
        // Across chunks: each piece inline, or none. A piece the page cache does not hold sends the whole read on
        // to `readAsync`, where the pieces already read here count as hits once more (rare: the kernel dropped
        // part of a slot since it was read).
        guard pieces.count <= Self.mostChunksPerCallbackRead else { return nil }
        var joined = ByteBuffer()
        joined.reserveCapacity(length)
        var fromCache = false
        for (index, range) in pieces {
            guard let (bytes, source) = chunkIfReady(index, range: range) else { return nil }
            var piece = bytes
            if source == .cache { fromCache = true }
            joined.writeBuffer(&piece)
        }
        noteRead(chunk: first, offset: offset, length: length)
        return (joined, fromCache ? .cache : .zero)
    }

    /// The chunks `length` bytes at `offset` touch, in order, each with the part of it they cover (offsets in the
    /// chunk). Lazy: the inline and callback paths call it for every read and allocate nothing.
    private func chunkPieces(offset: UInt64, length: Int)
        -> LazyMapCollection<Range<Int>, (index: Int, range: Range<Int>)>
    {
        let chunkSize = UInt64(manifest.chunkSize)
        let end = offset + UInt64(max(0, length))
        let indices = length > 0 ? Int(offset / chunkSize)..<(Int((end - 1) / chunkSize) + 1) : 0..<0
        return indices.lazy.map { index in
            let chunkStart = UInt64(index) * chunkSize
            let lower = max(offset, chunkStart)
            let upper = min(end, chunkStart + chunkSize)
            return (index, Int(lower - chunkStart)..<Int(upper - chunkStart))
        }
    }

    /// `range` of chunk `index`: zeros for an elided zero chunk or past the disk's end, else a cache slot's bytes
    /// if the page cache holds them; nil otherwise.
    private func chunkIfReady(_ index: Int, range: Range<Int>) -> (ByteBuffer, ReadSource)? {
        guard index < manifest.chunkCount, let id = manifest.chunk(at: index) else {
            return (ByteBuffer(repeating: 0, count: range.count), .zero)
        }
        let chunkLength = manifest.length(ofChunk: index)
        let available = max(0, min(range.upperBound, chunkLength) - range.lowerBound)
        guard available > 0 else { return (ByteBuffer(repeating: 0, count: range.count), .zero) }
        let resident = range.lowerBound..<(range.lowerBound + available)
        guard var data = cache.readIfResident(id, chunkLength: chunkLength, range: resident) else { return nil }
        if available < range.count { data.writeRepeatingByte(0, count: range.count - available) }
        return (data, .cache)
    }

    /// The callback read path for what needs no fetch: a range that is one overlay extent and either the
    /// guest's data (read from the overlay file), zeros it unmapped, or the backup where each chunk it touches
    /// is an elided zero chunk or resident and verified in the cache. Anything else (several extents, a cache
    /// miss) returns false with no effect, and the caller uses `read`. A cache slot that fails
    /// while being read is dropped and the range read again through `read` (from the source), as there.
    public func readAsync(
        offset: UInt64, length: Int, completion: @escaping @Sendable (Result<ByteBuffer, BlockDeviceError>) -> Void
    ) -> Bool {
        guard length > 0 else { return false }
        if switched.load(ordering: .acquiring) {
            return relocation.withLock({ $0.primary })?.readAsync(offset: offset, length: length, completion: completion)
                ?? false
        }
        // Counted as a live read until it completes; the guest's latency is noted then.
        let started = DispatchTime.now().uptimeNanoseconds
        liveReads.add(1, ordering: .relaxed)
        let completion: @Sendable (Result<ByteBuffer, BlockDeviceError>) -> Void = { [self] result in
            noteGuest(since: started)
            liveReads.subtract(1, ordering: .releasing)
            completion(result)
        }
        let submitted = readAsyncLive(offset: offset, length: length, completion: completion)
        if !submitted { liveReads.subtract(1, ordering: .releasing) }
        return submitted
    }

    private func readAsyncLive(
        offset: UInt64, length: Int, completion: @escaping @Sendable (Result<ByteBuffer, BlockDeviceError>) -> Void
    ) -> Bool {
        guard activity.isListening else { return readDataAsync(offset: offset, length: length, completion: completion) }
        // Recording or prefetching: the read is reported once submitted (a read that cannot be submitted goes on
        // to `read`, which reports it); whichever of the report and the completion comes second ends it.
        let issued = activity.now()
        let source = activity.isRecording ? readSource(offset: offset, length: length) : .cache
        let report = ReadReport()
        let submitted = readDataAsync(offset: offset, length: length) { [activity] result in
            if let ticket = report.completed() { activity.end(ticket, source: source) }
            completion(result)
        }
        guard submitted else { return false }
        if let ticket = activity.begin(offset: offset, length: length, issued: issued), report.begun(ticket) {
            activity.end(ticket, source: source)
        }
        return true
    }

    /// Pairs a callback read's report with its completion, in whichever order they come.
    private final class ReadReport: Sendable {
        private let state = Mutex<(ticket: MountActivity.Ticket?, completed: Bool)>((nil, false))

        /// The read completed: the ticket to end now, if the report came first.
        func completed() -> MountActivity.Ticket? {
            state.withLock { state in
                state.completed = true
                return state.ticket
            }
        }

        /// The read was reported: true if it already completed (end it now).
        func begun(_ ticket: MountActivity.Ticket) -> Bool {
            state.withLock { state in
                state.ticket = ticket
                return state.completed
            }
        }
    }

    private func readDataAsync(
        offset: UInt64, length: Int, completion: @escaping @Sendable (Result<ByteBuffer, BlockDeviceError>) -> Void
    ) -> Bool {
        let kind: OverlayExtent.Kind
        if let overlay {
            let extents = overlay.extents(offset: offset, length: length)
            guard extents.count == 1, let only = extents.first else { return false }
            kind = only.kind
        } else {
            kind = .absent
        }
        switch kind {
        case .data:
            return overlay?.readAsync(offset: offset, length: length, completion: completion) ?? false
        case .zero:
            completion(.success(ByteBuffer(repeating: 0, count: length)))
            return true
        case .absent:
            return readBackupAsync(offset: offset, length: length, completion: completion)
        }
    }

    /// The backup part of `readAsync`: chunks that are zero or cached. A read within one chunk goes straight to
    /// the cache. A read across chunks (a 128 KiB read crosses a 1 MiB chunk boundary one time in eight) is
    /// split by chunk when every chunk is zero or resident now; each piece goes by itself and the pieces are
    /// joined in order, so such a read makes no hop to the task pool, as the single-chunk read does not.
    private func readBackupAsync(
        offset: UInt64, length: Int, completion: @escaping @Sendable (Result<ByteBuffer, BlockDeviceError>) -> Void
    ) -> Bool {
        let pieces = chunkPieces(offset: offset, length: length)
        guard let first = pieces.first?.index else { return false }
        if pieces.count == 1 {
            let submitted = readChunkAsync(first, range: pieces[pieces.startIndex].range, completion: completion)
            if submitted { noteRead(chunk: first, offset: offset, length: length) }
            return submitted
        }
        // Several chunks: all of them must be at hand, or the read goes to `read` (which fetches in parallel).
        guard pieces.count <= Self.mostChunksPerCallbackRead,
            pieces.allSatisfy({ piece in
                guard piece.index < manifest.chunkCount, let id = manifest.chunk(at: piece.index) else { return true }
                return cache.contains(id)
            })
        else { return false }
        let join = PieceJoin(pieces: pieces.count, completion: completion)
        for (piece, (index, range)) in pieces.enumerated() {
            let submitted = readChunkAsync(index, range: range) { result in join.deliver(piece, result) }
            if !submitted {
                // The slot went (or is not verified yet) since the check: this piece through the cache, which
                // fetches it again if need be.
                Task {
                    do throws(BlockDeviceError) {
                        join.deliver(piece, .success(try await self.readChunk(index, range: range)))
                    } catch {
                        join.deliver(piece, .failure(error))
                    }
                }
            }
        }
        noteRead(chunk: first, offset: offset, length: length)
        return true
    }

    /// At most this many chunks in one callback read (a 32 MiB read at 1 MiB chunks); longer reads go to `read`.
    static let mostChunksPerCallbackRead = 32

    /// `range` of chunk `index`: zeros for an elided zero chunk or past the disk's end, else from the cache if
    /// the chunk is resident and verified (false, with no effect, if it is not).
    private func readChunkAsync(
        _ index: Int, range: Range<Int>, completion: @escaping @Sendable (Result<ByteBuffer, BlockDeviceError>) -> Void
    ) -> Bool {
        let length = range.count
        guard index < manifest.chunkCount, let id = manifest.chunk(at: index) else {
            completion(.success(ByteBuffer(repeating: 0, count: length)))
            return true
        }
        let chunkLength = manifest.length(ofChunk: index)
        let available = max(0, min(range.upperBound, chunkLength) - range.lowerBound)
        guard available > 0 else {
            completion(.success(ByteBuffer(repeating: 0, count: length)))
            return true
        }
        return cache.readIfCached(
            id, chunkLength: chunkLength, range: range.lowerBound..<(range.lowerBound + available)
        ) { [self] result in
            switch result {
            case .success(var data):
                if available < length { data.writeRepeatingByte(0, count: length - available) }
                completion(.success(data))
            case .failure:
                // The slot was dropped: read the chunk again through the cache, which refetches it.
                Task {
                    do throws(BlockDeviceError) {
                        completion(.success(try await self.readChunk(index, range: range)))
                    } catch {
                        completion(.failure(error))
                    }
                }
            }
        }
    }

    /// The pieces of a callback read across chunks: completes once with all of them joined in order, or with the
    /// first error (later pieces are then dropped).
    private final class PieceJoin: Sendable {
        private struct State {
            var pieces: [ByteBuffer?]
            var remaining: Int
            var done = false
        }
        private let state: Mutex<State>
        private let completion: @Sendable (Result<ByteBuffer, BlockDeviceError>) -> Void

        init(pieces: Int, completion: @escaping @Sendable (Result<ByteBuffer, BlockDeviceError>) -> Void) {
            state = Mutex(State(pieces: Array(repeating: nil, count: pieces), remaining: pieces))
            self.completion = completion
        }

        func deliver(_ piece: Int, _ result: Result<ByteBuffer, BlockDeviceError>) {
            let outcome = state.withLock { state -> Result<ByteBuffer, BlockDeviceError>? in
                guard !state.done, state.pieces.indices.contains(piece), state.pieces[piece] == nil else { return nil }
                switch result {
                case .failure(let error):
                    state.done = true
                    state.pieces = []
                    return .failure(error)
                case .success(let bytes):
                    state.pieces[piece] = bytes
                    state.remaining -= 1
                    guard state.remaining == 0 else { return nil }
                    state.done = true
                    var joined = ByteBuffer()
                    joined.reserveCapacity(state.pieces.reduce(0) { $0 + ($1?.readableBytes ?? 0) })
                    for case var bytes? in state.pieces { joined.writeBuffer(&bytes) }
                    state.pieces = []
                    return .success(joined)
                }
            }
            if let outcome { completion(outcome) }
        }
    }

    /// One overlay extent: the guest's data, zeros it unmapped, or the backup beneath.
    private func readExtent(_ extent: OverlayExtent, overlay: WriteOverlay, priority: FetchPriority, admit: Bool)
        async throws(BlockDeviceError) -> ByteBuffer
    {
        switch extent.kind {
        case .data: return try await overlay.read(offset: extent.offset, length: extent.length)
        case .zero: return ByteBuffer(repeating: 0, count: extent.length)
        case .absent:
            return try await readBackup(offset: extent.offset, length: extent.length, priority: priority, admit: admit)
        }
    }

    /// Bytes of the backup disk itself (not the overlay), for GuestFS.
    func readFromBackup(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer {
        try await readBackup(offset: offset, length: length)
    }

    /// Bytes of the backup disk: one chunk at a time, the chunks of a multi-chunk read fetched in parallel.
    private func readBackup(offset: UInt64, length: Int, priority: FetchPriority = .foreground, admit: Bool = true)
        async throws(BlockDeviceError) -> ByteBuffer
    {
        let spans = chunkPieces(offset: offset, length: length)
        guard let first = spans.first?.index, let last = spans.last?.index else { return ByteBuffer() }
        // The guest's sequential reads get readahead; the pump stages for itself.
        if priority == .foreground { noteRead(chunk: first, offset: offset, length: length) }
        if spans.count == 1 {
            return try await readChunk(first, range: spans[spans.startIndex].range, priority: priority, admit: admit)
        }
        let pieces: [Int: ByteBuffer]
        do {
            pieces = try await withThrowingTaskGroup(of: (Int, ByteBuffer).self) { group in
                for (index, range) in spans {
                    group.addTask {
                        (index, try await self.readChunk(index, range: range, priority: priority, admit: admit))
                    }
                }
                var collected: [Int: ByteBuffer] = [:]
                for try await (index, buffer) in group { collected[index] = buffer }
                return collected
            }
        } catch let error as BlockDeviceError {
            throw error
        } catch {
            throw .readFailed("\(error)")
        }
        var result = ByteBuffer()
        result.reserveCapacity(length)
        for index in first...last {
            guard var piece = pieces[index] else { throw .readFailed("chunk \(index) was not read") }
            result.writeBuffer(&piece)
        }
        return result
    }

    /// `range` of chunk `index`: zeros for an elided zero chunk or past the disk's end, else through the cache.
    private func readChunk(_ index: Int, range: Range<Int>, priority: FetchPriority = .foreground, admit: Bool = true)
        async throws(BlockDeviceError) -> ByteBuffer
    {
        guard index < manifest.chunkCount, let id = manifest.chunk(at: index) else {
            return ByteBuffer(repeating: 0, count: range.count)
        }
        let chunkLength = manifest.length(ofChunk: index)
        let available = max(0, min(range.upperBound, chunkLength) - range.lowerBound)
        guard available > 0 else { return ByteBuffer(repeating: 0, count: range.count) }
        var data: ByteBuffer
        do {
            data = try await cache.read(
                id, chunkLength: chunkLength, range: range.lowerBound..<(range.lowerBound + available),
                source: source, priority: priority, admit: admit)
        } catch {
            logger.error(
                "read failed",
                metadata: ["chunk": "\(index)", "error": "\(error)", "disk": "\(manifest.name)"])
            throw .readFailed("disk \(manifest.name) chunk \(index): \(error)")
        }
        if available < range.count { data.writeRepeatingByte(0, count: range.count - available) }
        return data
    }

    /// Stages the next chunks in the background when reads are sequential, so a streaming reader (a restore, a
    /// relocation, `dd`) keeps several fetches in flight instead of waiting on one chunk at a time.
    private func noteRead(chunk: Int, offset: UInt64, length: Int) {
        guard readaheadChunks > 0 else { return }
        let toStage: Range<Int>? = readahead.withLock { state in
            defer { state.lastEnd = offset + UInt64(length) }
            guard state.lastEnd == offset else {
                state.frontier = chunk + 1
                return nil
            }
            let from = max(state.frontier, chunk + 1)
            let to = min(chunk + 1 + readaheadChunks, manifest.chunkCount)
            guard from < to else { return nil }
            state.frontier = to
            return from..<to
        }
        guard let toStage else { return }
        for index in toStage {
            guard let id = manifest.chunk(at: index), !cache.contains(id) else { continue }
            let length = manifest.length(ofChunk: index)
            let cache = self.cache
            let source = self.source
            Task { _ = try? await cache.stage(id, chunkLength: length, source: source, priority: .background) }
        }
    }

    // MARK: - Writes

    public func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(BlockDeviceError) {
        let started = DispatchTime.now().uptimeNanoseconds
        defer { noteGuest(since: started) }
        switch await enterWrite() {
        case .primary(let primary):
            try await primary.write(offset: offset, data: data, fua: fua)
        case .live(let tap):
            defer { leaveWrite() }
            guard let overlay else { throw .writeProtected("live mount of \(manifest.name) is read-only") }
            try await overlay.write(offset: offset, data: data, fua: fua)
            tap?.guestWrote(offset..<offset + UInt64(data.readableBytes))
        }
    }

    public func flush() async throws(BlockDeviceError) {
        if switched.load(ordering: .acquiring), let primary = relocation.withLock({ $0.primary }) {
            return try await primary.flush()
        }
        try await overlay?.flush()
    }

    public func unmap(offset: UInt64, length: Int) async throws(BlockDeviceError) {
        switch await enterWrite() {
        case .primary(let primary):
            try await primary.unmap(offset: offset, length: length)
        case .live(let tap):
            defer { leaveWrite() }
            guard let overlay else { throw .writeProtected("live mount of \(manifest.name) is read-only") }
            try await overlay.unmap(offset: offset, length: length)
            tap?.guestWrote(offset..<offset + UInt64(length))
        }
    }

    /// Where a write goes: the live mount (telling the relocation tap, if any), or the primary after switchover.
    private enum WritePath {
        case live(tap: (any RelocationTap)?)
        case primary(any BlockDevice)
    }

    /// Waits while writes are held for a switchover, then counts the write in flight on the live mount.
    private func enterWrite() async -> WritePath {
        while true {
            let path = relocation.withLock { hooks -> WritePath? in
                if let primary = hooks.primary { return .primary(primary) }
                guard !hooks.held else { return nil }
                hooks.writesInFlight += 1
                return .live(tap: hooks.tap)
            }
            if let path { return path }
            await withCheckedContinuation { continuation in
                let wait = relocation.withLock { hooks -> Bool in
                    guard hooks.held, hooks.primary == nil else { return false }
                    hooks.heldWriters.append(continuation)
                    return true
                }
                if !wait { continuation.resume() }
            }
        }
    }

    private func leaveWrite() {
        let drained = relocation.withLock { hooks -> [CheckedContinuation<Void, Never>] in
            hooks.writesInFlight -= 1
            guard hooks.writesInFlight == 0 else { return [] }
            defer { hooks.drained = [] }
            return hooks.drained
        }
        for waiter in drained { waiter.resume() }
    }

    private func noteGuest(since started: UInt64) {
        guestOperations.add(1, ordering: .relaxed)
        guestLatency.add(DispatchTime.now().uptimeNanoseconds &- started, ordering: .relaxed)
    }

    /// Deallocated: what the guest unmapped, and the backup's zero chunks it has not written over
    /// (SBC-4 §5.8, GET LBA STATUS).
    public func allocationStatus(offset: UInt64, length: Int) async throws(BlockDeviceError) -> [AllocationExtent] {
        if switched.load(ordering: .acquiring), let primary = relocation.withLock({ $0.primary }) {
            return try await primary.allocationStatus(offset: offset, length: length)
        }
        let extents =
            overlay?.extents(offset: offset, length: length)
            ?? [OverlayExtent(offset: offset, length: length, kind: .absent)]
        var result: [AllocationExtent] = []
        func append(_ start: UInt64, _ count: UInt64, _ status: AllocationExtent.Status) {
            guard count > 0 else { return }
            if let lastIndex = result.indices.last, result[lastIndex].status == status,
                result[lastIndex].offset + result[lastIndex].length == start
            {
                result[lastIndex].length += count
            } else {
                result.append(AllocationExtent(offset: start, length: count, status: status))
            }
        }
        let chunkSize = UInt64(manifest.chunkSize)
        for extent in extents {
            switch extent.kind {
            case .data: append(extent.offset, UInt64(extent.length), .mapped)
            case .zero: append(extent.offset, UInt64(extent.length), .deallocated)
            case .absent:
                var position = extent.offset
                let end = extent.offset + UInt64(extent.length)
                while position < end {
                    let index = Int(position / chunkSize)
                    let chunkEnd = min(end, (UInt64(index) + 1) * chunkSize)
                    let present = index < manifest.chunkCount && manifest.chunk(at: index) != nil
                    append(position, chunkEnd - position, present ? .mapped : .deallocated)
                    position = chunkEnd
                }
            }
        }
        return result
    }

    public func sessionStarted() {
        activity.sessionStarted()
    }

    /// Makes the guest's writes durable (a clean shutdown loses nothing), then closes the overlay (or, once
    /// relocated, the primary).
    public func close() async {
        if let primary = relocation.withLock({ $0.primary }) {
            await activity.close()
            try? await primary.flush()
            await primary.close()
            await overlay?.close()
            return
        }
        await activity.close()
        do {
            try await overlay?.flush()
        } catch {
            logger.error("flushing the overlay at close failed", metadata: ["error": "\(error)"])
        }
        await overlay?.close()
    }
}

// MARK: - Relocation (issue 5)

extension LiveMountDevice: RelocationSource {
    public var sizeInBytes: UInt64 { capacity }

    /// Whether the LUN is served by its primary now.
    public var isRelocated: Bool { switched.load(ordering: .acquiring) }

    public func isKnownZero(offset: UInt64, length: Int) -> Bool {
        let extents =
            overlay?.extents(offset: offset, length: length)
            ?? [OverlayExtent(offset: offset, length: length, kind: .absent)]
        let chunkSize = UInt64(manifest.chunkSize)
        for extent in extents {
            switch extent.kind {
            case .data: return false
            case .zero: continue
            case .absent:
                guard extent.length > 0 else { continue }
                let first = Int(extent.offset / chunkSize)
                let last = Int((extent.offset + UInt64(extent.length) - 1) / chunkSize)
                for index in first...last where index < manifest.chunkCount && manifest.chunk(at: index) != nil {
                    return false
                }
            }
        }
        return true
    }

    public func readForRelocation(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer {
        try await readData(offset: offset, length: length, priority: .background, admit: false)
    }

    public func stageForRelocation(offset: UInt64, length: Int) {
        guard length > 0 else { return }
        let chunkSize = UInt64(manifest.chunkSize)
        let first = Int(offset / chunkSize)
        let last = min(manifest.chunkCount - 1, Int((offset + UInt64(length) - 1) / chunkSize))
        guard first <= last else { return }
        for index in first...last {
            // Chunks the guest overwrote whole need no fetch.
            let start = UInt64(index) * chunkSize
            let chunkLength = manifest.length(ofChunk: index)
            if let overlay, overlay.extents(offset: start, length: chunkLength).allSatisfy({ $0.kind != .absent }) {
                continue
            }
            guard let id = manifest.chunk(at: index), !cache.contains(id) else { continue }
            let cache = self.cache
            let source = self.source
            Task { _ = try? await cache.stage(id, chunkLength: chunkLength, source: source, priority: .background) }
        }
    }

    public var guestLoad: GuestLoadSample {
        GuestLoadSample(
            operations: guestOperations.load(ordering: .relaxed),
            latencyNanoseconds: guestLatency.load(ordering: .relaxed))
    }

    public func setRelocationTap(_ tap: (any RelocationTap)?) {
        relocation.withLock { $0.tap = tap }
        if let tap {
            overlay?.setCommitObserver { [weak tap] ranges in tap?.willCommit(ranges) ?? true }
        } else {
            overlay?.setCommitObserver(nil)
        }
    }

    public func uncommittedRanges() -> [Range<UInt64>] {
        overlay?.uncommittedRanges() ?? []
    }

    public func holdWrites() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let idle = relocation.withLock { hooks -> Bool in
                hooks.held = true
                guard hooks.writesInFlight > 0 else { return true }
                hooks.drained.append(continuation)
                return false
            }
            if idle { continuation.resume() }
        }
    }

    public func releaseWrites() {
        let waiters = relocation.withLock { hooks -> [CheckedContinuation<Void, Never>] in
            hooks.held = false
            defer { hooks.heldWriters = [] }
            return hooks.heldWriters
        }
        for waiter in waiters { waiter.resume() }
    }

    public func switchOver(to primary: any BlockDevice) async {
        let waiters = relocation.withLock { hooks -> [CheckedContinuation<Void, Never>] in
            hooks.primary = primary
            hooks.held = false
            hooks.tap = nil
            defer { hooks.heldWriters = [] }
            return hooks.heldWriters
        }
        switched.store(true, ordering: .releasing)
        for waiter in waiters { waiter.resume() }
        overlay?.setCommitObserver(nil)
        await activity.close()
        // Reads that started on the live mount finish there; then its overlay and cache slots go.
        var waited = 0
        while liveReads.load(ordering: .acquiring) > 0 && waited < 3000 {
            try? await Task.sleep(for: .milliseconds(10))
            waited += 1
        }
        if let overlay {
            await overlay.destroy()
        }
        let ids = (0..<manifest.chunkCount).compactMap { manifest.chunk(at: $0) }
        let released = cache.release(ids)
        logger.info(
            "switched over to the primary LUN",
            metadata: ["disk": "\(manifest.name)", "cacheSlotsReleased": "\(released)"])
    }
}
