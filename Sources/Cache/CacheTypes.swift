// The SSD-tier read cache and the persistent write overlay (DESIGN.md, Formats: Cache tier).
import CCRC32C
import NIOCore
import Repository

// MARK: - Configuration

/// Where and how large the SSD-tier read cache is.
///
/// The cache is one preallocated file of `capacity / slotSize` slots (each holds one chunk's plaintext, so
/// `slotSize` must be at least the repository's chunk size) and an SQLite index beside it.
public struct CacheConfiguration: Sendable {
    /// The preallocated cache file (created if missing).
    public var dataPath: String
    /// The SQLite index (WAL), created if missing.
    public var indexPath: String
    /// Bytes of cache file; rounded down to whole slots.
    public var capacity: UInt64
    /// Bytes per slot: a multiple of 4096 (the O_DIRECT alignment), at least one chunk.
    public var slotSize: Int
    /// Open the cache file with O_DIRECT (falls back to buffered I/O where the file system refuses it).
    public var direct: Bool
    /// Most chunk reads from the `ChunkSource` running at once, foreground and background together.
    public var maxConcurrentFetches: Int
    /// Serve hits that the kernel's page cache holds with a non-blocking buffered read (`preadv2` with
    /// RWF_NOWAIT, inline), as tgt and buffered raw LUNs do; everything else stays O_DIRECT through libaio.
    public var pageCacheHits: Bool

    public init(
        dataPath: String, indexPath: String, capacity: UInt64, slotSize: Int = 1 << 20, direct: Bool = true,
        maxConcurrentFetches: Int = 16, pageCacheHits: Bool = true
    ) {
        self.pageCacheHits = pageCacheHits
        self.dataPath = dataPath
        self.indexPath = indexPath
        self.capacity = capacity
        self.slotSize = slotSize
        self.direct = direct
        self.maxConcurrentFetches = maxConcurrentFetches
    }

    /// Whole slots in `capacity`.
    var slotCount: Int { Int(capacity / UInt64(max(1, slotSize))) }
}

/// Who is waiting for a fetch: a guest read (foreground) goes before prefetch, readahead and the
/// relocation pump (background) whenever fetches queue up (DESIGN.md, invariant 4).
public enum FetchPriority: Sendable, Equatable {
    case foreground
    case background
}

// MARK: - Statistics

/// A snapshot of the cache's counters (also exported through swift-metrics as `livemount_cache_*`).
public struct CacheStatistics: Sendable, Equatable {
    /// Reads served without a source fetch (from a slot, or from a fetch that had already finished).
    public var hits: UInt64 = 0
    /// Reads that had to wait for a fetch (their own or a shared one).
    public var misses: UInt64 = 0
    /// Chunk reads issued to the `ChunkSource`.
    public var fetches: UInt64 = 0
    /// Plaintext bytes those fetches returned.
    public var bytesFetched: UInt64 = 0
    /// Slots reused for another chunk.
    public var evictions: UInt64 = 0
    /// Slots that hold a chunk.
    public var slotsUsed: Int = 0
    /// Slots in the cache file.
    public var slotCount: Int = 0
    /// Slots held by `stage(pin: true)`.
    public var pinnedSlots: Int = 0

    public init() {}
}

// MARK: - Errors

/// Why the cache could not be opened (STYLE.md: one error type per module area, built by static factories).
public struct CacheError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// A configuration value is out of range.
        case invalidConfiguration
        /// The cache file could not be preallocated: not enough space.
        case noSpace
        /// The cache file could not be created or opened.
        case ioError
        /// The SQLite index could not be opened or migrated.
        case indexError
    }

    public var code: Code
    /// The file concerned.
    public var path: String
    public var detail: String

    public init(_ code: Code, path: String, _ detail: String) {
        self.code = code
        self.path = path
        self.detail = detail
    }

    public var description: String { "cache \(path): \(detail)" }

    static func invalidConfiguration(_ path: String, _ detail: String) -> Self {
        .init(.invalidConfiguration, path: path, detail)
    }
    static func noSpace(_ path: String, _ detail: String) -> Self { .init(.noSpace, path: path, detail) }
    static func ioError(_ path: String, _ detail: String) -> Self { .init(.ioError, path: path, detail) }
    static func indexError(_ path: String, _ detail: String) -> Self { .init(.indexError, path: path, detail) }
}

/// Why a write overlay could not be opened.
public struct OverlayError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// Size or block size is invalid, or differs from the overlay on disk.
        case invalidConfiguration
        /// No space to create the overlay file.
        case noSpace
        /// The overlay file could not be created or opened.
        case ioError
        /// The SQLite map could not be opened, migrated or read.
        case mapError
    }

    public var code: Code
    /// The file concerned.
    public var path: String
    public var detail: String

    public init(_ code: Code, path: String, _ detail: String) {
        self.code = code
        self.path = path
        self.detail = detail
    }

    public var description: String { "overlay \(path): \(detail)" }
}

// MARK: - Checksums

/// CRC32C (Castagnoli) of a slot's plaintext, as the iSCSI digest computes it (Sources/ISCSIProtocol/CRC32C.swift).
enum SlotChecksum {
    static func crc32c(_ buffer: ByteBuffer) -> UInt32 {
        buffer.withUnsafeReadableBytes { ~livemount_crc32c_update(0xFFFF_FFFF, $0.baseAddress, $0.count) }
    }
}
