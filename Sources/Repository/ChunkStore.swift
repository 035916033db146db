import CCRC32C
import CZstd
import Crypto
import Dispatch
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

// MARK: - Chunk file format

/// The on-disk form of one chunk: a 32-byte header, then the payload.
///
/// ```
/// offset  size  field
///      0     4  magic "LMCK"
///      4     1  format version (2; version 1 had a 16-byte header without the CRC)
///      5     1  codec: 0 = raw (did not compress), 1 = zstd frame
///      6     2  reserved, zero
///      8     8  plaintext length, little-endian
///     16     4  CRC32C (Castagnoli) of the plaintext, little-endian
///     20     4  reserved, zero
///     24     8  the first 8 bytes of the chunk's SHA-256 (its name): binds the file to its name
///     32     n  payload
/// ```
/// The file is named by the SHA-256 of the plaintext (`ChunkID`). Serving a chunk checks its CRC32C (SSE4.2,
/// over 10 GB/s): SHA-256 without SHA-NI costs about 4 ms per MiB, which made hashing 60% of a cold read's
/// CPU and capped it near 100 MiB/s on two cores. The name prefix in the header catches a file stored under
/// another chunk's name. `verify` (and any `.sha256` read) re-hashes with SHA-256 in full.
enum ChunkFileFormat {
    static let magic: [UInt8] = Array("LMCK".utf8)
    static let version: UInt8 = 2
    static let headerSize = 32
    /// The header of version 1 files, which carry no CRC and are checked with SHA-256.
    static let version1HeaderSize = 16

    /// How a read proves a chunk's plaintext is intact.
    enum Check {
        /// The CRC32C in the header (the serving path).
        case crc32c
        /// The SHA-256 against the chunk's name (`verify`).
        case sha256
    }
    /// zstd level used by ingest: level 3 is zstd's default, a good speed/ratio trade for disk images.
    static let compressionLevel: Int32 = 3

    enum Codec: UInt8 {
        case raw = 0
        case zstd = 1
    }

    /// Encodes `plaintext` as a chunk file: zstd-compressed, or raw when compression does not shrink it.
    static func encode(_ plaintext: UnsafeRawBufferPointer, id: ChunkID) -> [UInt8] {
        let bound = ZSTD_compressBound(plaintext.count)
        var file = [UInt8](repeating: 0, count: headerSize + bound)
        let compressed = file.withUnsafeMutableBytes { out -> Int in
            let payload = UnsafeMutableRawBufferPointer(rebasing: out[headerSize...])
            let written = ZSTD_compress(
                payload.baseAddress, payload.count, plaintext.baseAddress, plaintext.count, compressionLevel)
            return ZSTD_isError(written) != 0 ? Int.max : written
        }
        let codec: Codec
        if compressed < plaintext.count {
            codec = .zstd
            file.removeLast(bound - compressed)
        } else {
            codec = .raw
            file.removeLast(file.count - headerSize)
            file.append(contentsOf: plaintext)
        }
        writeHeader(into: &file, codec: codec, length: plaintext.count, crc: crc32c(plaintext), id: id)
        return file
    }

    private static func writeHeader(into file: inout [UInt8], codec: Codec, length: Int, crc: UInt32, id: ChunkID) {
        file.replaceSubrange(0..<4, with: magic)
        file[4] = version
        file[5] = codec.rawValue
        file[6] = 0
        file[7] = 0
        var value = UInt64(length)
        for index in 8..<16 {
            file[index] = UInt8(truncatingIfNeeded: value)
            value >>= 8
        }
        for index in 16..<20 { file[index] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(index - 16))) }
        for index in 20..<24 { file[index] = 0 }
        file.replaceSubrange(24..<32, with: id.bytes[0..<8])
    }

    /// CRC32C of `bytes` (hardware instruction where the CPU has it).
    static func crc32c(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        ~livemount_crc32c_update(0xFFFF_FFFF, bytes.baseAddress, bytes.count)
    }

    /// Decodes and verifies a chunk file: the header, the plaintext length (`length`), and the CRC32C or the
    /// SHA-256 (`id`) as `check` asks (version 1 files are always checked with SHA-256). Any mismatch is
    /// `.corrupt`, naming what did not match. The file is held in `buffer`; a raw payload is returned as a
    /// slice of it (no copy).
    static func decode(_ buffer: ByteBuffer, id: ChunkID, length: Int, check: Check = .crc32c)
        throws(ChunkReadError) -> ByteBuffer
    {
        let file = buffer.readableBytesView
        guard file.count >= version1HeaderSize, file.prefix(4).elementsEqual(magic) else {
            throw ChunkReadError(.corrupt, chunk: id, "bad header (\(file.count) bytes, no LMCK magic)")
        }
        let base = file.startIndex
        let headerSize: Int
        var expectedCRC: UInt32?
        switch file[base + 4] {
        case 1:
            headerSize = version1HeaderSize
        case version where file.count >= Self.headerSize:
            headerSize = Self.headerSize
            expectedCRC = file[(base + 16)..<(base + 20)].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            guard file[(base + 24)..<(base + 32)].elementsEqual(id.bytes[0..<8]) else {
                throw ChunkReadError(.corrupt, chunk: id, "the file holds another chunk (name prefix differs)")
            }
        default:
            throw ChunkReadError(.corrupt, chunk: id, "unknown format version \(file[base + 4]) or short header")
        }
        guard let codec = Codec(rawValue: file[base + 5]) else {
            throw ChunkReadError(.corrupt, chunk: id, "unknown codec \(file[base + 5])")
        }
        let stored = file[(base + 8)..<(base + 16)].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard stored == UInt64(length) else {
            throw ChunkReadError(.corrupt, chunk: id, "plaintext length \(stored), expected \(length)")
        }
        let plaintext: ByteBuffer
        switch codec {
        case .raw:
            guard file.count - headerSize == length,
                let slice = buffer.getSlice(at: buffer.readerIndex + headerSize, length: length)
            else {
                throw ChunkReadError(
                    .corrupt, chunk: id, "raw payload of \(file.count - headerSize) bytes, expected \(length)")
            }
            plaintext = slice
        case .zstd:
            var out = ByteBufferAllocator().buffer(capacity: length)
            let produced = buffer.withUnsafeReadableBytes { raw -> Int in
                let payload = UnsafeRawBufferPointer(rebasing: raw[headerSize...])
                return out.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { target in
                    let result = ZSTD_decompress(target.baseAddress, length, payload.baseAddress, payload.count)
                    return ZSTD_isError(result) != 0 ? 0 : result
                }
            }
            guard produced == length else {
                throw ChunkReadError(.corrupt, chunk: id, "zstd payload does not decompress to \(length) bytes")
            }
            plaintext = out
        }
        if check == .crc32c, let expectedCRC {
            let crc = plaintext.withUnsafeReadableBytes { crc32c($0) }
            guard crc == expectedCRC else {
                throw ChunkReadError(
                    .corrupt, chunk: id,
                    "plaintext CRC32C \(String(crc, radix: 16)), header says \(String(expectedCRC, radix: 16))")
            }
            return plaintext
        }
        let digest = plaintext.withUnsafeReadableBytes { chunkDigest($0) }
        guard digest == id else {
            throw ChunkReadError(.corrupt, chunk: id, "plaintext hashes to \(digest.hex)")
        }
        return plaintext
    }
}

/// The `ChunkID` of `plaintext`: its SHA-256.
func chunkDigest(_ plaintext: UnsafeRawBufferPointer) -> ChunkID {
    var hasher = SHA256()
    hasher.update(bufferPointer: plaintext)
    let digest = hasher.finalize()
    guard let id = ChunkID(digest: Array(digest)) else { preconditionFailure("SHA-256 digest is not 32 bytes") }
    return id
}

// MARK: - Chunk directory

/// The chunk files of a repository: `chunks/ab/cd/<64 hex>` under the repository root.
///
/// Writes go to a temporary name in the final directory and are renamed into place, so a reader never sees
/// a half-written chunk. They are not fsynced one by one: `syncFileSystem()` makes a whole ingest's files
/// durable with one `syncfs` before the catalog transaction that publishes them.
struct ChunkStore: Sendable {
    /// `<repository>/chunks`.
    let directory: String

    /// The file that holds chunk `id`.
    func path(of id: ChunkID) -> String {
        let hex = id.hex
        let utf8 = Array(hex.utf8)
        let first = String(decoding: utf8[0..<2], as: UTF8.self)
        let second = String(decoding: utf8[2..<4], as: UTF8.self)
        return "\(directory)/\(first)/\(second)/\(hex)"
    }

    /// Suffix of a chunk file being written; gc removes any left behind by a crash.
    static let temporaryMarker = ".tmp-"

    /// Compresses and writes chunk `id` (tmp + rename); returns the stored file size.
    func write(_ id: ChunkID, plaintext: UnsafeRawBufferPointer) throws(RepositoryError) -> Int {
        let file = ChunkFileFormat.encode(plaintext, id: id)
        let final = path(of: id)
        let parent = String(final[..<(final.lastIndex(of: "/") ?? final.endIndex)])
        try Self.makeDirectories(parent, below: directory)
        let temporary = "\(final)\(Self.temporaryMarker)\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw RepositoryError.io("create", path: temporary, errno: errno) }
        var done = 0
        while done < file.count {
            let count = file.withUnsafeBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return Glibc.write(fd, base + done, raw.count - done)
            }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                let code = count < 0 ? errno : ENOSPC
                close(fd)
                unlink(temporary)
                throw RepositoryError.io("write", path: temporary, errno: code)
            }
            done += count
        }
        if !Self.canSyncFileSystem {
            guard fsync(fd) == 0 else {
                let code = errno
                close(fd)
                unlink(temporary)
                throw RepositoryError.io("fsync", path: temporary, errno: code)
            }
        }
        guard close(fd) == 0 else {
            let code = errno
            unlink(temporary)
            throw RepositoryError.io("close", path: temporary, errno: code)
        }
        guard rename(temporary, final) == 0 else {
            let code = errno
            unlink(temporary)
            throw RepositoryError.io("rename", path: final, errno: code)
        }
        return file.count
    }

    /// Reads the whole file of chunk `id` (synchronously; callers run this off the cooperative pool).
    func readFile(_ id: ChunkID, maximumSize: Int) throws(ChunkReadError) -> ByteBuffer {
        let file = path(of: id)
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT { throw ChunkReadError(.missing, chunk: id, "no file \(file)") }
            throw ChunkReadError(.ioError, chunk: id, "open \(file): \(String(cString: strerror(code)))")
        }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            throw ChunkReadError(.ioError, chunk: id, "fstat \(file): \(String(cString: strerror(errno)))")
        }
        let size = Int(status.st_size)
        guard size <= maximumSize else {
            throw ChunkReadError(.corrupt, chunk: id, "file \(file) is \(size) bytes, more than a chunk can take")
        }
        // Filled by pread straight away: no zeroing first, and no second copy (a file that shrank meanwhile
        // gives the bytes it had; the decoder then finds the length wrong). A raw chunk is served as a slice
        // of this buffer.
        var failure: Int32 = 0
        var bytes = ByteBufferAllocator().buffer(capacity: size)
        bytes.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { buffer in
            var done = 0
            while done < size, let base = buffer.baseAddress {
                let count = pread(fd, base + done, size - done, off_t(done))
                if count < 0 && errno == EINTR { continue }
                guard count >= 0 else {
                    failure = errno
                    break
                }
                if count == 0 { break }
                done += count
            }
            return done
        }
        guard failure == 0 else {
            throw ChunkReadError(.ioError, chunk: id, "read \(file): \(String(cString: strerror(failure)))")
        }
        return bytes
    }

    /// Makes every chunk file written so far durable: one `syncfs(2)` of the repository's file system.
    /// When `syncfs` is not available each file was fsynced as it was written instead.
    func syncFileSystem() throws(RepositoryError) {
        guard let syncfs = Self.syncfsFunction else { return }
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw RepositoryError.io("open", path: directory, errno: errno) }
        defer { close(fd) }
        guard syncfs(fd) == 0 else { throw RepositoryError.io("syncfs", path: directory, errno: errno) }
    }

    /// glibc's `syncfs` is declared only under `_GNU_SOURCE`, which Swift's Glibc module does not set:
    /// look it up at run time instead.
    private static let syncfsFunction: (@convention(c) (Int32) -> Int32)? = {
        guard let symbol = dlsym(nil, "syncfs") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int32) -> Int32).self)
    }()

    private static var canSyncFileSystem: Bool { syncfsFunction != nil }

    /// Creates `path` and its parents up to (not including) `root`; EEXIST is fine.
    static func makeDirectories(_ path: String, below root: String) throws(RepositoryError) {
        if mkdir(path, 0o755) == 0 || errno == EEXIST { return }
        guard errno == ENOENT, path.count > root.count, let slash = path.lastIndex(of: "/") else {
            throw RepositoryError.io("mkdir", path: path, errno: errno)
        }
        try makeDirectories(String(path[..<slash]), below: root)
        guard mkdir(path, 0o755) == 0 || errno == EEXIST else {
            throw RepositoryError.io("mkdir", path: path, errno: errno)
        }
    }
}

// MARK: - Local chunk source

/// The repository directory as a `ChunkSource`: reads the chunk file, decompresses it and checks its length
/// and CRC32C (see `ChunkFileFormat`).
///
/// File reads and decompression run on a concurrent Dispatch queue, never on the caller's thread, so many
/// fetches proceed in parallel (the cache and prefetcher issue dozens at once).
public final class LocalChunkSource: ChunkSource {
    let store: ChunkStore
    private let queue = DispatchQueue(label: "livemount.repository.chunk-reads", attributes: .concurrent)

    init(store: ChunkStore) {
        self.store = store
    }

    public func readChunk(_ id: ChunkID, length: Int) async throws(ChunkReadError) -> ByteBuffer {
        let store = self.store
        let result: Result<ByteBuffer, ChunkReadError> = await withCheckedContinuation { continuation in
            queue.async {
                continuation.resume(
                    returning: Result { () throws(ChunkReadError) -> ByteBuffer in
                        try Self.readSync(store: store, id: id, length: length)
                    })
            }
        }
        return try result.get()
    }

    /// Reads and verifies one chunk on the current thread (CRC32C when serving, SHA-256 for `verify`).
    static func readSync(
        store: ChunkStore, id: ChunkID, length: Int, check: ChunkFileFormat.Check = .crc32c
    ) throws(ChunkReadError) -> ByteBuffer {
        guard length >= 0 else { throw ChunkReadError(.corrupt, chunk: id, "negative length \(length)") }
        let maximum = ChunkFileFormat.headerSize + max(ZSTD_compressBound(length), length)
        let file = try store.readFile(id, maximumSize: maximum)
        return try ChunkFileFormat.decode(file, id: id, length: length, check: check)
    }
}
