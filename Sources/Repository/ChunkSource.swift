import NIOCore

/// The name of a chunk: the SHA-256 of its plaintext (DESIGN.md, Formats: content-addressed chunks).
///
/// Two chunks with the same bytes have the same `ChunkID`, which is what deduplicates them across backups
/// and disks, and what the SSD-tier cache keys its slots by.
public struct ChunkID: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The 32 digest bytes, big-endian as printed.
    public let high: (UInt64, UInt64)
    public let low: (UInt64, UInt64)

    /// Builds an ID from exactly 32 digest bytes; nil for any other length.
    public init?(digest bytes: some Collection<UInt8>) {
        guard bytes.count == 32 else { return nil }
        var words = [UInt64](repeating: 0, count: 4)
        for (index, byte) in bytes.enumerated() {
            words[index / 8] = words[index / 8] << 8 | UInt64(byte)
        }
        high = (words[0], words[1])
        low = (words[2], words[3])
    }

    /// Parses 64 hexadecimal digits (either case); nil for anything else.
    public init?(hex: String) {
        let utf8 = Array(hex.utf8)
        guard utf8.count == 64 else { return nil }
        var bytes = [UInt8]()
        bytes.reserveCapacity(32)
        var index = 0
        while index < 64 {
            guard let hi = Self.nibble(utf8[index]), let lo = Self.nibble(utf8[index + 1]) else { return nil }
            bytes.append(hi << 4 | lo)
            index += 2
        }
        self.init(digest: bytes)
    }

    /// The 32 digest bytes.
    public var bytes: [UInt8] {
        var result = [UInt8]()
        result.reserveCapacity(32)
        for word in [high.0, high.1, low.0, low.1] {
            for shift in stride(from: 56, through: 0, by: -8) { result.append(UInt8(truncatingIfNeeded: word >> shift)) }
        }
        return result
    }

    /// 64 lowercase hexadecimal digits: the chunk's file name in the repository.
    public var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(64)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public var description: String { hex }

    public static func == (a: ChunkID, b: ChunkID) -> Bool {
        a.high == b.high && a.low == b.low
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(high.0)
        hasher.combine(high.1)
        hasher.combine(low.0)
        hasher.combine(low.1)
    }

    public static func < (a: ChunkID, b: ChunkID) -> Bool {
        (a.high.0, a.high.1, a.low.0, a.low.1) < (b.high.0, b.high.1, b.low.0, b.low.1)
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// Where chunk plaintext comes from: the local repository directory today, an object store later
/// (DESIGN.md, Formats: "Reads go through a `ChunkSource` protocol").
///
/// Implementations verify what they return: the bytes handed back hash to `id`, or the call throws.
/// They never block the caller's thread (file reads and decompression run on a thread pool), so many
/// fetches can be in flight at once.
public protocol ChunkSource: Sendable {
    /// Reads, decompresses and verifies chunk `id`, whose plaintext is `length` bytes.
    func readChunk(_ id: ChunkID, length: Int) async throws(ChunkReadError) -> ByteBuffer
}

/// Why a chunk could not be served. Never turned into data: the LUN that needed it answers MEDIUM ERROR.
public struct ChunkReadError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The chunk file does not exist.
        case missing
        /// The chunk file exists but does not decompress, has the wrong length, or hashes to another ID.
        case corrupt
        /// The storage failed (EIO, permission).
        case ioError
    }

    public var code: Code
    public var chunk: ChunkID
    public var detail: String

    public init(_ code: Code, chunk: ChunkID, _ detail: String) {
        self.code = code
        self.chunk = chunk
        self.detail = detail
    }

    public var description: String {
        switch code {
        case .missing: "chunk \(chunk.hex) is missing: \(detail)"
        case .corrupt: "chunk \(chunk.hex) is corrupt: \(detail)"
        case .ioError: "chunk \(chunk.hex) could not be read: \(detail)"
        }
    }
}
