import BlockDevice
import Cache
import Foundation
import LiveMount
import Logging
import NIOCore
import Prefetch
import Repository
import SCSI
import TargetServer

/// A scratch directory removed when the test ends.
final class Scratch: @unchecked Sendable {
    let path: String

    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("livemount-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Deterministic bytes (xorshift), so failures are reproducible.
func pattern(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed | 1
    var bytes = [UInt8](repeating: 0, count: count)
    for index in 0..<count {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        bytes[index] = UInt8(truncatingIfNeeded: state)
    }
    return bytes
}

let quietLogger: Logger = {
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    return logger
}()

/// The disk every live-mount test backs up: 16 chunks of 1 MiB with data, zero chunks and a repeated chunk.
///   chunk 0: random A   1: zeros   2: random B   3: A again (deduplicated)   4-5: random
///   6-11: zeros   12: random with a zero tail   13-15: zeros
func sampleDisk() -> [UInt8] {
    let chunk = 1 << 20
    var disk = [UInt8](repeating: 0, count: 16 * chunk)
    let a = pattern(chunk, seed: 11)
    disk.replaceSubrange(0..<chunk, with: a)
    disk.replaceSubrange((2 * chunk)..<(3 * chunk), with: pattern(chunk, seed: 22))
    disk.replaceSubrange((3 * chunk)..<(4 * chunk), with: a)
    disk.replaceSubrange((4 * chunk)..<(6 * chunk), with: pattern(2 * chunk, seed: 33))
    disk.replaceSubrange((12 * chunk)..<(12 * chunk + chunk / 2), with: pattern(chunk / 2, seed: 44))
    return disk
}

/// Distinct non-zero chunks of `sampleDisk()`: 0 (=3), 2, 4, 5, 12.
let sampleDistinctChunks = 5

/// A repository holding one backup of `disk` (VM "web01", disk "disk0"), a cache and a mount manager.
struct Fixture {
    let scratch: Scratch
    let repository: BackupRepository
    let cache: ChunkCache
    let manager: MountManager
    let disk: [UInt8]

    var repositoryPath: String { scratch.path + "/repo" }

    static func make(
        disk: [UInt8] = sampleDisk(), cacheSize: UInt64 = 64 << 20, source wrap: ((any ChunkSource) -> any ChunkSource)? = nil
    ) async throws -> Fixture {
        let scratch = try Scratch()
        let imagePath = scratch.path + "/disk0.img"
        _ = FileManager.default.createFile(atPath: imagePath, contents: Data(disk))
        let configPath = scratch.path + "/web01.vmx"
        _ = FileManager.default.createFile(atPath: configPath, contents: Data("memsize = 1024\n".utf8))
        let repository = try BackupRepository.open(path: scratch.path + "/repo", create: true, logger: quietLogger)
        _ = try repository.ingest(
            IngestRequest(
                vm: "web01", configurationPath: configPath, disks: [IngestDisk(name: "disk0", source: imagePath)]))
        return try await reopen(scratch: scratch, repository: repository, disk: disk, cacheSize: cacheSize, source: wrap)
    }

    /// Opens the cache and the mount manager again over the same files (a daemon restart).
    static func reopen(
        scratch: Scratch, repository: BackupRepository, disk: [UInt8], cacheSize: UInt64 = 64 << 20,
        source wrap: ((any ChunkSource) -> any ChunkSource)? = nil, traces: TraceStore? = nil
    ) async throws -> Fixture {
        let cache = try await ChunkCache.open(
            CacheConfiguration(
                dataPath: scratch.path + "/cache.img", indexPath: scratch.path + "/cache.img.index", capacity: cacheSize),
            logger: quietLogger)
        let source = wrap?(repository.chunkSource) ?? repository.chunkSource
        let manager = try MountManager(
            repository: repository, source: source, cache: cache, directory: scratch.path + "/state",
            traces: traces, logger: quietLogger)
        return Fixture(scratch: scratch, repository: repository, cache: cache, manager: manager, disk: disk)
    }

    /// Every chunk file's bytes by path, to prove a mount never changed the backup.
    func chunkFiles() throws -> [String: Data] {
        var files: [String: Data] = [:]
        let root = repositoryPath + "/chunks"
        guard let walker = FileManager.default.enumerator(atPath: root) else { return files }
        for case let relative as String in walker {
            var isDirectory: ObjCBool = false
            let path = root + "/" + relative
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue {
                files[relative] = try Data(contentsOf: URL(fileURLWithPath: path))
            }
        }
        return files
    }
}

/// A target server on 127.0.0.1 with a free port serving the given devices.
struct ServedTarget {
    static let name = "iqn.2026-11.org.livemount:livemount-test"
    let server: ISCSITargetServer
    let port: Int

    static func start(_ devices: [UInt64: any BlockDevice], readOnly: Set<UInt64> = []) async throws -> ServedTarget {
        let units = devices.sorted { $0.key < $1.key }.map { lun, device in
            LogicalUnitConfiguration(
                lun: lun, device: device, readOnly: readOnly.contains(lun), serialNumber: "LM\(lun)",
                naaIdentifier: 0x5024_C4D0_0000_1000 | lun)
        }
        let configuration = ServerConfiguration(
            portals: [PortalConfiguration(host: "127.0.0.1", port: 0)],
            targets: [TargetConfiguration(name: name, logicalUnits: units)], nopInInterval: 0)
        let server = try ISCSITargetServer(configuration: configuration, logger: quietLogger)
        let bound = try await server.start()
        guard let port = bound.first?.port else { throw TargetServerError("no port") }
        return ServedTarget(server: server, port: port)
    }

    func url(lun: UInt64 = 0) -> String { "iscsi://127.0.0.1:\(port)/\(Self.name)/\(lun)" }
}

/// Runs blocking libiscsi calls on their own thread, never on the pool the target runs on.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread {
            do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
}

/// Reads a whole LUN through libiscsi, `blocksPerRead` at a time.
func readWholeLUN(url: String, blocksPerRead: Int = 256, initiator: String = "iqn.2026-11.org.livemount:reader")
    async throws -> [UInt8]
{
    try await onThread {
        let client = ISCSIClient()
        try client.connect(url: url, initiatorName: initiator)
        defer { try? client.logout() }
        let capacity = try client.readCapacity16()
        var result: [UInt8] = []
        result.reserveCapacity(Int(capacity.blockCount) * capacity.blockSize)
        var lba: UInt64 = 0
        while lba < capacity.blockCount {
            let count = Int(min(UInt64(blocksPerRead), capacity.blockCount - lba))
            result += try client.read(lba: lba, blocks: count)
            lba += UInt64(count)
        }
        return result
    }
}

/// Runs the `livemount` tool; returns its exit status and standard output + error.
func runLivemountTool(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: builtProduct("livemount"))
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// The path of a product built beside the test bundle (`livemountd`, `livemount`).
func builtProduct(_ name: String) -> String {
    URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name).path
}
