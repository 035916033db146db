/// The chunk list of one backed-up disk: which chunk holds each `chunkSize` piece of the disk.
///
/// IDs are kept in one contiguous byte array (32 bytes per chunk) plus a bitmap of non-zero chunks, not as an
/// array of objects: a 1 TiB disk with 1 MiB chunks costs 32 MiB + 128 KiB, and the whole manifest is a
/// few allocations (DESIGN.md, Performance: memory per mounted disk).
public struct DiskManifest: Sendable, Equatable {
    /// The disk's name within its backup (`sda`, `disk0`, ...).
    public let name: String
    /// The disk's size in bytes.
    public let size: UInt64
    /// The size of every chunk but the last, in bytes.
    public let chunkSize: Int
    /// Number of chunks: `size / chunkSize` rounded up.
    public private(set) var chunkCount: Int
    /// 32 digest bytes per chunk, all zero for a zero chunk.
    private var digests: [UInt8]
    /// Bit `i` set: chunk `i` has data (a `ChunkID`); clear: it is all zeros (elided).
    private var present: [UInt64]

    /// A manifest of `size` bytes in which every chunk is a zero chunk; fill it with `setChunk(_:at:)`.
    public init(name: String, size: UInt64, chunkSize: Int) {
        precondition(chunkSize > 0, "chunk size must be positive")
        self.name = name
        self.size = size
        self.chunkSize = chunkSize
        let count = Int((size + UInt64(chunkSize) - 1) / UInt64(chunkSize))
        self.chunkCount = count
        self.digests = [UInt8](repeating: 0, count: count * 32)
        self.present = [UInt64](repeating: 0, count: (count + 63) / 64)
    }

    /// The chunk that holds bytes `index * chunkSize ..< index * chunkSize + length(ofChunk: index)`;
    /// nil for a zero chunk (read it as zeros).
    public func chunk(at index: Int) -> ChunkID? {
        precondition(index >= 0 && index < chunkCount, "chunk \(index) of a \(chunkCount)-chunk disk")
        guard present[index / 64] & (1 << UInt64(index % 64)) != 0 else { return nil }
        return ChunkID(digest: digests[index * 32..<index * 32 + 32])
    }

    /// Sets chunk `index` to `id` (nil: a zero chunk).
    public mutating func setChunk(_ id: ChunkID?, at index: Int) {
        precondition(index >= 0 && index < chunkCount, "chunk \(index) of a \(chunkCount)-chunk disk")
        let bit: UInt64 = 1 << UInt64(index % 64)
        if let id {
            digests.replaceSubrange(index * 32..<index * 32 + 32, with: id.bytes)
            present[index / 64] |= bit
        } else {
            for offset in index * 32..<index * 32 + 32 { digests[offset] = 0 }
            present[index / 64] &= ~bit
        }
    }

    /// The plaintext length of chunk `index`: `chunkSize`, except the last, which may be short.
    public func length(ofChunk index: Int) -> Int {
        precondition(index >= 0 && index < chunkCount, "chunk \(index) of a \(chunkCount)-chunk disk")
        let start = UInt64(index) * UInt64(chunkSize)
        return Int(min(UInt64(chunkSize), size - start))
    }

    /// The disk offset of chunk `index`'s first byte.
    public func offset(ofChunk index: Int) -> UInt64 {
        UInt64(index) * UInt64(chunkSize)
    }

    /// The index of the chunk that holds disk byte `offset`.
    public func chunkIndex(containing offset: UInt64) -> Int {
        Int(offset / UInt64(chunkSize))
    }

    /// How many chunks are zero chunks.
    public var zeroChunkCount: Int {
        chunkCount - present.reduce(0) { $0 + $1.nonzeroBitCount }
    }
}
