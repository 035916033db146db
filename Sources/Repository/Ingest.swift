import Dispatch
import Foundation
import Synchronization

// MARK: - Requests and results

/// One disk to back up: its name within the backup and its source specification (see `openDiskSource`).
public struct IngestDisk: Sendable, Equatable {
    public var name: String
    public var source: String

    public init(name: String, source: String) {
        self.name = name
        self.source = source
    }
}

/// What to back up: a VM's configuration file and its disks.
public struct IngestRequest: Sendable, Equatable {
    public var vm: String
    public var configurationPath: String
    public var disks: [IngestDisk]
    /// Chunk size in bytes: a power of two from 4 KiB to 64 MiB (default 1 MiB).
    public var chunkSize: Int

    public init(vm: String, configurationPath: String, disks: [IngestDisk], chunkSize: Int = 1 << 20) {
        self.vm = vm
        self.configurationPath = configurationPath
        self.disks = disks
        self.chunkSize = chunkSize
    }

    /// Smallest and largest chunk sizes accepted.
    public static let chunkSizes = 4096...(64 << 20)
}

/// Where an ingest is, reported after every chunk read.
public struct IngestProgress: Sendable, Equatable {
    /// The disk being read, its position (0-based) and the number of disks.
    public var disk: String
    public var diskIndex: Int
    public var diskCount: Int
    /// Bytes read from the current disk, and its size.
    public var diskBytesRead: UInt64
    public var diskSize: UInt64
    /// Bytes read from all disks so far, and their total size.
    public var bytesRead: UInt64
    public var bytesTotal: UInt64
    /// Bytes of new chunk files written so far.
    public var newStoredBytes: UInt64
}

/// What an ingest did.
public struct IngestResult: Sendable, Equatable {
    /// The published backup.
    public var backup: BackupInfo
    /// Bytes read from the sources (the disks' total size).
    public var bytesRead: UInt64
    /// Chunks of all disks.
    public var chunksTotal: Int
    /// All-zero chunks (elided).
    public var zeroChunks: Int
    /// Chunks written as new files.
    public var newChunks: Int
    /// Non-zero chunks that the repository (or this ingest) already had.
    public var deduplicatedChunks: Int
    /// Bytes of new chunk files.
    public var newStoredBytes: UInt64

    /// Logical bytes per stored byte: how much the backup took less than its disks (∞ shown as 0 stored).
    public var reduction: Double {
        newStoredBytes == 0 ? .infinity : Double(bytesRead) / Double(newStoredBytes)
    }
}

// MARK: - Ingest

extension BackupRepository {
    /// Backs up `request`: opens every source and reads the configuration file first (a bad one fails before
    /// anything is read), then ingests the disks (see `ingest(vm:configurationName:configuration:disks:...)`).
    public func ingest(
        _ request: IngestRequest, progress: @Sendable (IngestProgress) -> Void = { _ in }
    ) throws(RepositoryError) -> IngestResult {
        let configuration = try Self.readConfiguration(request.configurationPath)
        var sources: [(name: String, source: any DiskSource)] = []
        defer { for opened in sources { opened.source.close() } }
        for disk in request.disks {
            do throws(RepositoryError) {
                sources.append((disk.name, try openDiskSource(disk.source)))
            } catch {
                throw RepositoryError(error.code, "disk \(disk.name): \(error.message)")
            }
        }
        let name = URL(fileURLWithPath: request.configurationPath).lastPathComponent
        return try ingest(
            vm: request.vm, configurationName: name, configuration: configuration, disks: sources,
            chunkSize: request.chunkSize, progress: progress)
    }

    /// Most configuration bytes accepted: VM configuration files are small text files.
    static let configurationLimit = 16 << 20

    private static func readConfiguration(_ path: String) throws(RepositoryError) -> [UInt8] {
        guard !path.isEmpty else { throw RepositoryError.invalid("no configuration file given") }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else {
            throw RepositoryError.invalid("configuration file \(path) does not exist or is a directory")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RepositoryError.invalid("configuration file \(path) cannot be read")
        }
        guard data.count <= configurationLimit else {
            throw RepositoryError.invalid(
                "configuration file \(path) is \(data.count) bytes, more than \(configurationLimit)")
        }
        return [UInt8](data)
    }

    /// Ingests already opened `disks` as a new backup of `vm`.
    ///
    /// Each disk is read one chunk at a time by this thread; hashing, compression and writing run on a
    /// concurrent queue with at most `pipelineDepth` chunks in flight, so memory stays flat whatever the disk
    /// size (a few chunks plus 32 bytes per chunk for the index). All-zero chunks are elided; a chunk the
    /// catalog (or this ingest) already has is not written again. New chunk files are made durable with one
    /// `syncfs`, then one catalog transaction publishes the backup. On any failure nothing is published; the
    /// chunk files written so far are left for `collectGarbage()`.
    public func ingest(
        vm: String, configurationName: String, configuration: [UInt8], disks: [(name: String, source: any DiskSource)],
        chunkSize: Int = 1 << 20, pipelineDepth: Int = ProcessInfo.processInfo.activeProcessorCount + 2,
        progress: @Sendable (IngestProgress) -> Void = { _ in }
    ) throws(RepositoryError) -> IngestResult {
        guard !vm.isEmpty else { throw RepositoryError.invalid("VM name is empty") }
        guard IngestRequest.chunkSizes.contains(chunkSize), chunkSize.nonzeroBitCount == 1 else {
            throw RepositoryError.invalid(
                "chunk size \(chunkSize) is not a power of two from \(IngestRequest.chunkSizes.lowerBound) to \(IngestRequest.chunkSizes.upperBound)"
            )
        }
        guard !disks.isEmpty else { throw RepositoryError.invalid("backup of VM \(vm) has no disks") }
        var names = Set<String>()
        for disk in disks {
            guard !disk.name.isEmpty else { throw RepositoryError.invalid("a disk of VM \(vm) has an empty name") }
            guard names.insert(disk.name).inserted else {
                throw RepositoryError.invalid("disk name \(disk.name) is given twice")
            }
        }
        let lock = try RepositoryLock(path: "\(path)/repository.lock", exclusive: false)
        defer { lock.release() }

        let run = IngestRun(
            catalog: catalog, store: store, bytesTotal: disks.reduce(0) { $0 + $1.source.size },
            depth: max(1, pipelineDepth))
        var published: [Catalog.NewDisk] = []
        for (position, disk) in disks.enumerated() {
            let manifest = try run.ingestDisk(
                name: disk.name, source: disk.source, position: position, count: disks.count, chunkSize: chunkSize,
                progress: progress)
            published.append(manifest)
        }
        try store.syncFileSystem()
        let totals = run.totals
        let backupID = try catalog.insertBackup(
            vm: vm, createdAt: Int64(Date().timeIntervalSince1970), configurationName: configurationName,
            configuration: configuration, disks: published, newChunks: totals.newChunkRecords)
        let info = try backup(id: backupID)
        logger.info(
            "backup published",
            metadata: [
                "backup": "\(backupID)", "vm": "\(vm)", "bytes": "\(totals.bytesRead)",
                "new-chunks": "\(totals.newChunks)", "stored": "\(totals.newStoredBytes)",
            ])
        return IngestResult(
            backup: info, bytesRead: totals.bytesRead, chunksTotal: totals.chunks, zeroChunks: totals.zeroChunks,
            newChunks: totals.newChunks, deduplicatedChunks: totals.chunks - totals.zeroChunks - totals.newChunks,
            newStoredBytes: totals.newStoredBytes)
    }
}

/// The state of one ingest shared by its reader and its workers.
private final class IngestRun: Sendable {
    struct Totals {
        var bytesRead: UInt64 = 0
        var chunks = 0
        var zeroChunks = 0
        var newChunks = 0
        var newStoredBytes: UInt64 = 0
        var newChunkRecords: [Catalog.NewChunk] = []
        /// Chunks this ingest has seen (written, being written, or found in the catalog).
        var claimed = Set<ChunkID>()
    }

    struct DiskState {
        var manifest: DiskManifest
        var storedBytes: UInt64 = 0
        var error: RepositoryError?
    }

    /// One disk's state, shared by reference with the workers.
    final class Disk: Sendable {
        let state: Mutex<DiskState>
        init(_ manifest: DiskManifest) { state = Mutex(DiskState(manifest: manifest)) }
        func withLock<T, E: Error>(_ body: (inout DiskState) throws(E) -> T) throws(E) -> T {
            try state.withLock { (value: inout DiskState) throws(E) -> T in try body(&value) }
        }
    }

    let catalog: Catalog
    let store: ChunkStore
    let bytesTotal: UInt64
    let depth: Int
    private let state = Mutex(Totals())
    private let queue = DispatchQueue(label: "livemount.repository.ingest", attributes: .concurrent)

    init(catalog: Catalog, store: ChunkStore, bytesTotal: UInt64, depth: Int) {
        self.catalog = catalog
        self.store = store
        self.bytesTotal = bytesTotal
        self.depth = depth
    }

    var totals: Totals { state.withLock { $0 } }

    /// Reads disk `name` chunk by chunk and returns its manifest once every chunk is stored.
    func ingestDisk(
        name: String, source: any DiskSource, position: Int, count: Int, chunkSize: Int,
        progress: (IngestProgress) -> Void
    ) throws(RepositoryError) -> Catalog.NewDisk {
        let disk = Disk(DiskManifest(name: name, size: source.size, chunkSize: chunkSize))
        let chunkCount = disk.withLock { $0.manifest.chunkCount }
        let slots = DispatchSemaphore(value: depth)
        let group = DispatchGroup()
        var diskBytesRead: UInt64 = 0
        for index in 0..<chunkCount {
            slots.wait()
            if disk.withLock({ $0.error != nil }) {
                slots.signal()
                break
            }
            let offset = UInt64(index) * UInt64(chunkSize)
            let length = Int(min(UInt64(chunkSize), source.size - offset))
            let bytes: [UInt8]
            do {
                bytes = try source.read(offset: offset, length: length)
                guard bytes.count == length else {
                    throw RepositoryError.source("returned \(bytes.count) of \(length) bytes")
                }
            } catch {
                slots.signal()
                let message = (error as? RepositoryError)?.message ?? "\(error)"
                disk.withLock {
                    $0.error =
                        $0.error
                        ?? RepositoryError.source(
                            "reading disk \(name) from \(source.description) at offset \(offset) failed: \(message)")
                }
                break
            }
            diskBytesRead += UInt64(length)
            let stored = state.withLock { totals -> UInt64 in
                totals.bytesRead += UInt64(length)
                return totals.newStoredBytes
            }
            let bytesRead = state.withLock { $0.bytesRead }
            progress(
                IngestProgress(
                    disk: name, diskIndex: position, diskCount: count, diskBytesRead: diskBytesRead,
                    diskSize: source.size, bytesRead: bytesRead, bytesTotal: bytesTotal, newStoredBytes: stored))
            group.enter()
            queue.async {
                defer {
                    slots.signal()
                    group.leave()
                }
                do throws(RepositoryError) {
                    try self.storeChunk(bytes, index: index, disk: disk)
                } catch {
                    disk.withLock { $0.error = $0.error ?? error }
                }
            }
        }
        group.wait()
        return try disk.withLock { state throws(RepositoryError) -> Catalog.NewDisk in
            if let error = state.error { throw error }
            return Catalog.NewDisk(manifest: state.manifest, storedBytes: state.storedBytes)
        }
    }

    /// Hashes one chunk and, unless it is all zeros or already known, compresses and writes it.
    private func storeChunk(_ bytes: [UInt8], index: Int, disk: Disk) throws(RepositoryError) {
        let isZero = bytes.withUnsafeBytes(Self.isAllZero)
        if isZero {
            state.withLock {
                $0.chunks += 1
                $0.zeroChunks += 1
            }
            return
        }
        let id = bytes.withUnsafeBytes { chunkDigest($0) }
        let firstSeen = state.withLock { totals -> Bool in
            totals.chunks += 1
            return totals.claimed.insert(id).inserted
        }
        if firstSeen, try !catalog.hasChunk(id) {
            let written = bytes.withUnsafeBytes { raw in
                Result { () throws(RepositoryError) -> Int in try store.write(id, plaintext: raw) }
            }
            let storedSize = try written.get()
            state.withLock {
                $0.newChunks += 1
                $0.newStoredBytes += UInt64(storedSize)
                $0.newChunkRecords.append(Catalog.NewChunk(id: id, storedSize: storedSize, plainSize: bytes.count))
            }
            disk.withLock { $0.storedBytes += UInt64(storedSize) }
        }
        disk.withLock { $0.manifest.setChunk(id, at: index) }
    }

    /// Whether every byte is zero (eight bytes at a time).
    private static func isAllZero(_ raw: UnsafeRawBufferPointer) -> Bool {
        let words = raw.count / 8
        var index = 0
        while index < words {
            if raw.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self) != 0 { return false }
            index += 1
        }
        for offset in words * 8..<raw.count where raw[offset] != 0 { return false }
        return true
    }
}
