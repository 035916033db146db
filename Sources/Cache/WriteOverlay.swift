import BlockDevice
import Dispatch
import Foundation
import Logging
import NIOCore
import SQLiteStore
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A live mount's persistent write overlay on the SSD tier: guest writes land here, never in the backup
/// (DESIGN.md invariant 1).
///
/// The overlay file is a sparse file as large as the LUN; a write at LUN offset X is stored at file offset X,
/// so the file never holds one range's bytes at another range's offset. The map (which ranges are `.data`,
/// which are `.zero`, the rest `.absent` = read the backup) is kept at the LUN's block granularity, so no
/// read-modify-write is ever needed, in memory as coalesced runs (`ExtentMap`) and in SQLite.
///
/// ## Durability (DESIGN.md invariant 2)
/// - A write without FUA goes to the file, then the map in memory; its map change is committed at the next
///   `flush()`. `kill -9` before then may lose it: after reopen the range reads as it was at the last flush.
/// - `flush()` first takes the set of ranges changed since the last flush, then `fdatasync`s the file, then
///   commits the map state of those ranges in one SQLite transaction (synchronous=FULL). A map row never
///   says `.data` for bytes that were not synced first.
/// - A FUA write is written with `RWF_DSYNC`, then its map change is committed before it returns.
/// Map commits run one at a time on a serial queue and each reads the map in memory when it runs, so a
/// later commit never writes an older state over a newer one.
///
/// Unmap punches a hole (freeing SSD space) and marks the range `.zero`; a `.zero` range reads as zeros from
/// the map alone, whatever the file holds.
public final class WriteOverlay: Sendable {
    /// Size of the LUN (and of the overlay file) in bytes.
    public let size: UInt64
    /// The LUN's logical block size: the overlay's granularity.
    public let blockSize: Int
    public let dataPath: String
    public let mapPath: String

    private let device: AIOFileDevice
    private let database: SQLiteDatabase
    private let commitQueue: DispatchQueue
    private let logger: Logger

    private struct State {
        var map: ExtentMap
        /// Ranges whose map state changed since the last flush.
        var dirty: [Range<UInt64>] = []
        /// Ranges of the commits running now, by token.
        var committing: [Int: [Range<UInt64>]] = [:]
        var nextCommit = 0
        var closed = false
        /// Told of each commit's ranges before it is made (a relocation records them as dirty first).
        var commitObserver: (@Sendable ([Range<UInt64>]) -> Bool)?

        /// Notes `ranges` as being committed (until `commit` ends) and returns the commit's token.
        mutating func beginCommit(_ ranges: [Range<UInt64>]) -> Int {
            defer { nextCommit += 1 }
            committing[nextCommit] = ranges
            return nextCommit
        }
    }
    private let state: Mutex<State>

    private init(
        size: UInt64, blockSize: Int, dataPath: String, mapPath: String, device: AIOFileDevice,
        database: SQLiteDatabase, map: ExtentMap, logger: Logger
    ) {
        self.size = size
        self.blockSize = blockSize
        self.dataPath = dataPath
        self.mapPath = mapPath
        self.device = device
        self.database = database
        self.commitQueue = DispatchQueue(label: "livemount.overlay.map")
        self.logger = logger
        self.state = Mutex(State(map: map))
    }

    // MARK: - Opening

    /// Creates the overlay (a sparse file of `size` bytes and an SQLite map) or reopens an existing one,
    /// which must have been created with the same size and block size.
    public static func open(
        dataPath: String, mapPath: String, size: UInt64, blockSize: Int, direct: Bool = true, logger: Logger
    ) async throws(OverlayError) -> WriteOverlay {
        guard blockSize >= 512, blockSize <= 65536, blockSize & (blockSize - 1) == 0 else {
            throw OverlayError(
                .invalidConfiguration, path: dataPath, "block size \(blockSize) is not a power of two in 512...65536")
        }
        guard size > 0, size % UInt64(blockSize) == 0 else {
            throw OverlayError(
                .invalidConfiguration, path: dataPath,
                "size \(size) is not a positive multiple of the block size \(blockSize)")
        }
        let database: SQLiteDatabase
        let map: ExtentMap
        do {
            database = try SQLiteDatabase(path: mapPath, options: .init(journalMode: .wal, synchronous: .full))
            try database.migrate(OverlayMapStore.migrations)
            if let layout = try OverlayMapStore.layout(database) {
                guard layout.size == size, layout.blockSize == blockSize else {
                    throw OverlayError(
                        .invalidConfiguration, path: mapPath,
                        "overlay was created for \(layout.size) bytes in \(layout.blockSize)-byte blocks, "
                            + "not \(size) in \(blockSize)"
                    )
                }
            } else {
                try OverlayMapStore.setLayout(database, size: size, blockSize: blockSize)
            }
            map = try OverlayMapStore.load(database)
        } catch let error as OverlayError {
            throw error
        } catch {
            throw OverlayError(.mapError, path: mapPath, "\(error)")
        }

        let created = await runBlocking { () -> OverlayError? in Self.createSparse(path: dataPath, size: size) }
        if let created { throw created }
        let device: AIOFileDevice
        do {
            device = try AIOFileDevice.open(
                path: dataPath, readOnly: false, direct: direct, blockSize: blockSize, logger: logger)
        } catch {
            throw OverlayError(.ioError, path: dataPath, "\(error)")
        }
        return WriteOverlay(
            size: size, blockSize: blockSize, dataPath: dataPath, mapPath: mapPath, device: device,
            database: database, map: map, logger: logger)
    }

    /// Creates the overlay file, or grows a short one, sparse to `size` bytes.
    private static func createSparse(path: String, size: UInt64) -> OverlayError? {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return OverlayError(.ioError, path: path, "open: \(CacheFile.describe(errno))") }
        defer { Glibc.close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            return OverlayError(.ioError, path: path, "fstat: \(CacheFile.describe(errno))")
        }
        guard UInt64(max(0, info.st_size)) != size else { return nil }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let code = errno
            return OverlayError(
                code == ENOSPC || code == EFBIG ? .noSpace : .ioError, path: path,
                "ftruncate to \(size) bytes: \(CacheFile.describe(code))")
        }
        return nil
    }

    // MARK: - Map

    /// A contiguous cover of `[offset, offset + length)`: `.absent` (read the backup), `.data` (read this
    /// overlay), `.zero` (zeros).
    public func extents(offset: UInt64, length: Int) -> [OverlayExtent] {
        guard length > 0 else { return [] }
        return state.withLock { $0.map.cover(offset, offset + UInt64(length)) }
    }

    /// Bytes of the LUN held in the overlay file.
    public var dataBytes: UInt64 {
        state.withLock { $0.map.dataBytes }
    }

    // MARK: - I/O

    /// The overlay file's bytes (meaningful for `.data` ranges).
    public func read(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer {
        try checkRange(offset: offset, length: length)
        return try await device.read(offset: offset, length: length)
    }

    /// The callback form of `read` for `.data` ranges: starts the read through the overlay file's
    /// `readAsync` and returns true, `completion` then getting the bytes or the error on the I/O thread.
    /// False (nothing started) for a range `read` would refuse, or a closed overlay: the caller uses `read`.
    public func readAsync(
        offset: UInt64, length: Int, completion: @escaping @Sendable (Result<ByteBuffer, BlockDeviceError>) -> Void
    ) -> Bool {
        guard (try? checkRange(offset: offset, length: length)) != nil, length > 0 else { return false }
        return device.readAsync(offset: offset, length: length, completion: completion)
    }

    /// Writes `data` at `offset` (block-aligned); with `fua` it survives `kill -9` once this returns.
    public func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(BlockDeviceError) {
        let length = data.readableBytes
        try checkRange(offset: offset, length: length)
        guard length > 0 else { return }
        try await device.write(offset: offset, data: data, fua: fua)
        let range = offset..<offset + UInt64(length)
        let token = state.withLock { state -> Int? in
            state.map.set(range.lowerBound, range.upperBound, .data)
            guard fua else {
                state.dirty.append(range)
                return nil
            }
            return state.beginCommit([range])
        }
        if let token { try await commit([range], token: token) }
    }

    // MARK: - Relocation support

    /// Calls `observer` with the ranges of every map commit, on the commit queue, just before the commit is made;
    /// false from it fails the commit (the flush or FUA write reports a write error). Nil removes it.
    public func setCommitObserver(_ observer: (@Sendable ([Range<UInt64>]) -> Bool)?) {
        state.withLock { $0.commitObserver = observer }
    }

    /// Ranges whose map change is not committed yet (written or unmapped since the last flush, or in a commit
    /// that has not finished): after a `kill -9` they may read as they were before.
    public func uncommittedRanges() -> [Range<UInt64>] {
        state.withLock { state in state.dirty + state.committing.values.flatMap { $0 } }
    }

    /// Deallocates `[offset, offset + length)`: later reads of it return zeros (punches a hole where the
    /// file system can, to give the space back).
    public func unmap(offset: UInt64, length: Int) async throws(BlockDeviceError) {
        try checkRange(offset: offset, length: length)
        guard length > 0 else { return }
        if device.supportsUnmap { try await device.unmap(offset: offset, length: length) }
        let range = offset..<offset + UInt64(length)
        state.withLock { state in
            state.map.set(range.lowerBound, range.upperBound, .zero)
            state.dirty.append(range)
        }
    }

    /// Makes every completed write and unmap durable: `fdatasync` the file, then commit the map changes
    /// since the last flush in one transaction.
    public func flush() async throws(BlockDeviceError) {
        let (ranges, token) = state.withLock { state -> ([Range<UInt64>], Int) in
            defer { state.dirty = [] }
            return (state.dirty, state.beginCommit(state.dirty))
        }
        do {
            try await device.flush()
            try await commit(ranges, token: token)
        } catch {
            state.withLock { state in
                state.committing.removeValue(forKey: token)
                state.dirty.append(contentsOf: ranges)
            }
            throw error
        }
    }

    /// Commits the map state in memory of `ranges`, read when the commit runs, in one transaction.
    /// `token` is the one `State.beginCommit` gave for these ranges; it is ended here.
    private func commit(_ ranges: [Range<UInt64>], token: Int) async throws(BlockDeviceError) {
        defer { _ = state.withLock { $0.committing.removeValue(forKey: token) } }
        let merged = Self.merge(ranges)
        guard !merged.isEmpty else { return }
        let database = self.database
        let failure = await withCheckedContinuation { (continuation: CheckedContinuation<BlockDeviceError?, Never>) in
            commitQueue.async {
                let (runs, observer) = self.state.withLock { state in
                    (merged.map { state.map.runs(in: $0.lowerBound, $0.upperBound) }, state.commitObserver)
                }
                if let observer, !observer(merged) {
                    continuation.resume(
                        returning: .writeFailed("overlay map \(self.mapPath): the relocation could not record the write"))
                    return
                }
                do {
                    try OverlayMapStore.commit(database, ranges: merged, runs: runs)
                    continuation.resume(returning: nil)
                } catch let error as SQLiteError where error.primaryCode == 13 /* SQLITE_FULL */ {
                    continuation.resume(returning: .noSpace("overlay map \(self.mapPath): \(error)"))
                } catch {
                    continuation.resume(returning: .writeFailed("overlay map \(self.mapPath): \(error)"))
                }
            }
        }
        if let failure { throw failure }
    }

    /// Sorts and joins overlapping or touching ranges.
    private static func merge(_ ranges: [Range<UInt64>]) -> [Range<UInt64>] {
        var result: [Range<UInt64>] = []
        for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) where !range.isEmpty {
            if let last = result.last, range.lowerBound <= last.upperBound {
                result[result.count - 1] = last.lowerBound..<max(last.upperBound, range.upperBound)
            } else {
                result.append(range)
            }
        }
        return result
    }

    private func checkRange(offset: UInt64, length: Int) throws(BlockDeviceError) {
        let block = UInt64(blockSize)
        guard length >= 0, offset % block == 0, UInt64(length) % block == 0, offset <= size,
            UInt64(length) <= size - offset
        else {
            throw .outOfRange(
                "offset \(offset) length \(length) is not whole blocks inside \(size) bytes of \(dataPath)")
        }
        if state.withLock({ $0.closed }) { throw .notReady("overlay \(dataPath) is closed") }
    }

    // MARK: - Closing

    /// Flushes (a clean unmount keeps every write) and closes the file.
    public func close() async {
        let first = state.withLock { state -> Bool in
            defer { state.closed = true }
            return !state.closed
        }
        guard first else { return }
        do {
            try await flush()
        } catch {
            logger.warning("overlay flush at close failed", metadata: ["path": "\(dataPath)", "error": "\(error)"])
        }
        await device.close()
    }

    /// Closes without flushing and deletes the overlay file and its map: an unmount that discards the
    /// guest's writes.
    public func destroy() async {
        state.withLock { $0.closed = true }
        await device.close()
        for path in [dataPath, mapPath, mapPath + "-wal", mapPath + "-shm"] {
            try? FileManager.default.removeItem(atPath: path)
        }
    }
}
