import Foundation
import NIOCore
import Repository

#if canImport(Glibc)
    import Glibc
#endif

/// A fresh directory under the temporary directory, removed by `remove()`.
struct TemporaryDirectory {
    let path: String

    init() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("livemount-repo-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
        path = base.path
    }

    func file(_ name: String) -> String { "\(path)/\(name)" }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// Deterministic pseudo-random bytes (xorshift) so failures reproduce.
func pattern(seed: UInt64, count: Int) -> [UInt8] {
    var state = (seed &* 0x9E37_79B9_7F4A_7C15) | 1
    var bytes = [UInt8](repeating: 0, count: count)
    for index in 0..<count {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        bytes[index] = UInt8(truncatingIfNeeded: state)
    }
    return bytes
}

/// Compressible bytes: a short text repeated.
func text(count: Int, seed: Int) -> [UInt8] {
    let line = Array("chunk \(seed): the quick brown fox jumps over the lazy dog\n".utf8)
    return (0..<count).map { line[$0 % line.count] }
}

extension ByteBuffer {
    var bytes: [UInt8] { Array(readableBytesView) }
}

/// Writes `bytes` to `path`.
func write(_ bytes: [UInt8], to path: String) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// Reads chunk `index` of `manifest` through `source`; zeros for a zero chunk.
func readChunk(_ manifest: DiskManifest, _ index: Int, from source: any ChunkSource) async throws -> [UInt8] {
    guard let id = manifest.chunk(at: index) else {
        return [UInt8](repeating: 0, count: manifest.length(ofChunk: index))
    }
    return try await source.readChunk(id, length: manifest.length(ofChunk: index)).bytes
}

/// Every byte of the disk described by `manifest`, read back chunk by chunk.
func readDisk(_ manifest: DiskManifest, from source: any ChunkSource) async throws -> [UInt8] {
    var bytes: [UInt8] = []
    for index in 0..<manifest.chunkCount {
        bytes += try await readChunk(manifest, index, from: source)
    }
    return bytes
}

/// The ChunkReadError `body` threw, or nil.
func chunkReadError(_ body: () async throws -> Void) async -> ChunkReadError? {
    do {
        try await body()
        return nil
    } catch let error as ChunkReadError {
        return error
    } catch {
        return nil
    }
}

/// The RepositoryError `body` threw, or nil.
func repositoryError(_ body: () throws -> Void) -> RepositoryError? {
    do {
        try body()
        return nil
    } catch let error as RepositoryError {
        return error
    } catch {
        return nil
    }
}

/// A disk image made of distinct regions, the way a VM disk looks: random (incompressible) chunks, compressible
/// text, a run of zeros, repeats of one chunk, and a short tail.
struct TestImage {
    static let chunkSize = 4096
    let bytes: [UInt8]
    /// Chunks that are all zeros.
    let zeroChunks: Range<Int>
    /// Chunks that repeat chunk `repeatedSource`.
    let repeats: Range<Int>
    let repeatedSource: Int

    init(seed: UInt64 = 1) {
        let size = Self.chunkSize
        var bytes: [UInt8] = []
        for index in 0..<400 {
            switch index {
            case 100..<150: bytes += [UInt8](repeating: 0, count: size)
            case 150..<200: bytes += pattern(seed: seed &* 1000 &+ 7, count: size)
            case 300..<400: bytes += text(count: size, seed: index + Int(seed) * 1000)
            default: bytes += pattern(seed: seed &* 1000 &+ UInt64(index), count: size)
            }
        }
        bytes += pattern(seed: seed &* 1000 &+ 999, count: 1000)
        self.bytes = bytes
        zeroChunks = 100..<150
        repeats = 150..<200
        repeatedSource = 7
    }

    /// Chunks of the image: 400 full ones and a 1000-byte tail.
    var chunkCount: Int { 401 }
    /// Distinct non-zero chunks: 400 - 50 zero - 50 repeats + the tail.
    var distinctChunks: Int { 301 }
}

/// A repository in a fresh temporary directory.
struct RepositoryFixture {
    let directory: TemporaryDirectory
    let repository: BackupRepository
    let configuration: String

    init() throws {
        directory = try TemporaryDirectory()
        repository = try BackupRepository.open(path: directory.file("repo"), create: true)
        configuration = directory.file("web01.vmx")
        try write(Array("memsize = \"2048\"\n".utf8), to: configuration)
    }

    /// Writes `bytes` as image `name` and backs it up as disk `disk` of `vm`.
    func ingest(_ bytes: [UInt8], name: String = "disk.img", vm: String = "web01", disk: String = "sda")
        throws -> IngestResult
    {
        let image = directory.file(name)
        try write(bytes, to: image)
        return try repository.ingest(
            IngestRequest(
                vm: vm, configurationPath: configuration, disks: [IngestDisk(name: disk, source: image)],
                chunkSize: TestImage.chunkSize))
    }
}
