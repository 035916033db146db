import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

// MARK: - Catalog values

/// One backup: a VM's configuration file plus its disks, as the catalog lists it.
public struct BackupInfo: Sendable, Equatable {
    public var id: Int64
    public var vm: String
    /// When the backup was published (whole seconds).
    public var createdAt: Date
    /// The configuration file's name (its last path component when it was ingested).
    public var configurationName: String
    public var configurationSize: Int
    /// The disks, in the order they were given to the ingest.
    public var disks: [DiskInfo]

    public init(
        id: Int64, vm: String, createdAt: Date, configurationName: String, configurationSize: Int, disks: [DiskInfo]
    ) {
        self.id = id
        self.vm = vm
        self.createdAt = createdAt
        self.configurationName = configurationName
        self.configurationSize = configurationSize
        self.disks = disks
    }
}

/// One disk of a backup.
public struct DiskInfo: Sendable, Equatable {
    public var name: String
    /// Size in bytes.
    public var size: UInt64
    public var chunkSize: Int
    public var chunkCount: Int
    /// Chunks that were all zeros (elided: no file, NULL in the index).
    public var zeroChunks: Int
    /// Bytes of chunk files this backup added to the repository (its share of new data, compressed).
    public var storedBytes: UInt64

    public init(name: String, size: UInt64, chunkSize: Int, chunkCount: Int, zeroChunks: Int, storedBytes: UInt64) {
        self.name = name
        self.size = size
        self.chunkSize = chunkSize
        self.chunkCount = chunkCount
        self.zeroChunks = zeroChunks
        self.storedBytes = storedBytes
    }
}

/// What `collectGarbage()` removed.
public struct GarbageReport: Sendable, Equatable {
    /// Chunk files no disk references any more, deleted.
    public var chunksDeleted: Int
    /// Temporary and stray files (a crashed ingest's leftovers), deleted.
    public var strayFilesDeleted: Int
    /// Bytes of all deleted files.
    public var bytesFreed: UInt64
    /// Chunk files kept because a backup references them.
    public var chunksKept: Int
}

/// One problem found by `verify`: a chunk that a disk of a backup needs and that cannot be served.
public struct VerifyProblem: Sendable, Equatable, CustomStringConvertible {
    public var backupID: Int64
    public var vm: String
    public var disk: String
    public var chunkIndex: Int
    public var error: ChunkReadError
    public var chunk: ChunkID { error.chunk }

    public var description: String {
        "backup \(backupID) (VM \(vm)) disk \(disk) chunk \(chunkIndex): \(error)"
    }
}

/// What `verify` checked and found.
public struct VerifyReport: Sendable, Equatable {
    public var backupsChecked: Int
    /// Distinct chunks read and re-hashed (a chunk shared by many disks is read once).
    public var chunksChecked: Int
    /// Plaintext bytes re-hashed.
    public var bytesChecked: UInt64
    /// Every (backup, disk, chunk index) whose chunk is missing, corrupt or unreadable.
    public var problems: [VerifyProblem]
    public var isClean: Bool { problems.isEmpty }
}

// MARK: - Repository

/// A backup repository: a directory holding `catalog.sqlite` (WAL) and content-addressed chunk files
/// `chunks/ab/cd/<64 hex>` (DESIGN.md, Formats: Repository).
///
/// Thread-safe: the catalog is serialised by SQLiteStore; chunk files are immutable once renamed into place.
/// `repository.lock` (flock) keeps garbage collection from running while an ingest in any process is writing
/// chunk files it has not published yet.
public final class BackupRepository: Sendable {
    /// The repository directory.
    public let path: String
    let catalog: Catalog
    let store: ChunkStore
    let logger: Logger
    private let local: LocalChunkSource

    /// The catalog file name inside the repository.
    public static let catalogName = "catalog.sqlite"

    private init(path: String, catalog: Catalog, logger: Logger) {
        self.path = path
        self.catalog = catalog
        self.store = ChunkStore(directory: "\(path)/chunks")
        self.local = LocalChunkSource(store: store)
        self.logger = logger
    }

    /// Opens the repository in directory `path`; with `create`, makes the directory (and parents) and an empty
    /// catalog when there is none. Without `create`, a directory without a catalog is an error.
    public static func open(
        path: String, create: Bool = false, logger: Logger = Logger(label: "livemount.repository")
    ) throws(RepositoryError) -> BackupRepository {
        guard !path.isEmpty else { throw RepositoryError.invalid("repository path is empty") }
        let root = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        let catalogPath = "\(root)/\(catalogName)"
        var isDirectory: ObjCBool = false
        let exists = FileManager.default.fileExists(atPath: root, isDirectory: &isDirectory)
        if exists && !isDirectory.boolValue {
            throw RepositoryError(.notARepository, "\(root) is not a backup repository: it is not a directory")
        }
        if !FileManager.default.fileExists(atPath: catalogPath) {
            guard create else {
                throw RepositoryError(
                    .notARepository,
                    exists
                        ? "\(root) is not a backup repository (no \(catalogName))"
                        : "backup repository \(root) does not exist")
            }
            if exists {
                let entries = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
                guard entries.isEmpty else {
                    throw RepositoryError(
                        .notARepository,
                        "\(root) is not empty and has no \(catalogName): refusing to make it a backup repository")
                }
            } else {
                do {
                    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
                } catch {
                    throw RepositoryError(.ioError, "cannot create repository directory \(root): \(error)")
                }
            }
            logger.info("creating backup repository", metadata: ["path": "\(root)"])
        }
        let catalog = try Catalog(path: catalogPath)
        try ChunkStore.makeDirectories("\(root)/chunks", below: root)
        return BackupRepository(path: root, catalog: catalog, logger: logger)
    }

    /// The local chunk store as a `ChunkSource`: reads, decompresses and verifies chunk files off the
    /// caller's thread.
    public var chunkSource: any ChunkSource { local }

    // MARK: - Backups

    /// Every backup, newest first; only those of `vm` when given.
    public func listBackups(vm: String? = nil) throws(RepositoryError) -> [BackupInfo] {
        try catalog.listBackups(vm: vm)
    }

    /// Backup `id`; `.notFound` naming the id when there is none.
    public func backup(id: Int64) throws(RepositoryError) -> BackupInfo {
        guard let info = try catalog.backup(id: id) else { throw RepositoryError.notFound("no backup \(id)") }
        return info
    }

    /// Backup `backupID` checked to be of `vm`, or the latest backup of `vm` when `backupID` is nil.
    public func resolve(vm: String, backupID: Int64?) throws(RepositoryError) -> BackupInfo {
        if let backupID {
            let info = try backup(id: backupID)
            guard info.vm == vm else {
                throw RepositoryError.notFound("backup \(backupID) is of VM \(info.vm), not \(vm)")
            }
            return info
        }
        guard let latest = try catalog.listBackups(vm: vm).first else {
            throw RepositoryError.notFound("no backup of VM \(vm)")
        }
        return latest
    }

    /// The chunk index of disk `disk` of backup `backupID`; nil `disk` means the first (often the only) disk.
    /// An unknown disk name errors listing the backup's disks.
    public func manifest(backupID: Int64, disk: String?) throws(RepositoryError) -> DiskManifest {
        let info = try backup(id: backupID)
        guard let first = info.disks.first else {
            throw RepositoryError.notFound("backup \(backupID) of VM \(info.vm) has no disks")
        }
        let name = disk ?? first.name
        guard info.disks.contains(where: { $0.name == name }) else {
            let names = info.disks.map(\.name).joined(separator: ", ")
            throw RepositoryError.notFound("backup \(backupID) of VM \(info.vm) has no disk \(name) (disks: \(names))")
        }
        guard let manifest = try catalog.manifest(backupID: backupID, diskName: name) else {
            throw RepositoryError.notFound("backup \(backupID) has no disk \(name)")
        }
        return manifest
    }

    /// The VM configuration file stored with backup `backupID`.
    public func configurationFile(backupID: Int64) throws(RepositoryError) -> (name: String, bytes: [UInt8]) {
        guard let configuration = try catalog.configuration(backupID: backupID) else {
            throw RepositoryError.notFound("no backup \(backupID)")
        }
        return configuration
    }

    // MARK: - Holds

    /// Marks backup `backupID` as in use by `holder` (a mount), so `delete` refuses it. Idempotent.
    public func addHold(backupID: Int64, holder: String) throws(RepositoryError) {
        _ = try backup(id: backupID)
        try catalog.addHold(backupID: backupID, holder: holder)
    }

    /// Releases `holder`'s hold on backup `backupID` (no error when it held nothing).
    public func removeHold(backupID: Int64, holder: String) throws(RepositoryError) {
        try catalog.removeHold(backupID: backupID, holder: holder)
    }

    /// Who holds backup `backupID`, sorted.
    public func holds(backupID: Int64) throws(RepositoryError) -> [String] {
        try catalog.holds(backupID: backupID)
    }

    /// Deletes backup `backupID` from the catalog; its chunk files are freed by the next `collectGarbage()`.
    /// A held backup is refused (`.held`, naming the holders) unless `force`.
    public func delete(backupID: Int64, force: Bool = false) throws(RepositoryError) {
        let info = try backup(id: backupID)
        let holders = try catalog.holds(backupID: backupID)
        if !holders.isEmpty && !force {
            throw RepositoryError(
                .held,
                "backup \(backupID) of VM \(info.vm) is held by \(holders.joined(separator: ", ")); use force to delete it anyway"
            )
        }
        try catalog.deleteBackup(id: backupID)
        logger.info("deleted backup", metadata: ["backup": "\(backupID)", "vm": "\(info.vm)"])
    }

    // MARK: - Garbage collection

    /// Deletes every chunk file no disk references (chunks of deleted backups), and stray files a crashed
    /// ingest left behind (temporary files, unpublished chunks).
    ///
    /// The catalog forgets unreferenced chunks first and the files go after, so the catalog never lists a
    /// chunk whose file is gone. Holds the repository lock exclusively: `.busy` while an ingest runs.
    public func collectGarbage() throws(RepositoryError) -> GarbageReport {
        let lock = try RepositoryLock(path: "\(path)/repository.lock", exclusive: true)
        defer { lock.release() }
        _ = try catalog.forgetUnreferencedChunks()
        let keep = try catalog.allChunkIDs()
        var report = GarbageReport(chunksDeleted: 0, strayFilesDeleted: 0, bytesFreed: 0, chunksKept: 0)
        let fileManager = FileManager.default
        let chunkDirectory = store.directory
        let firstLevel = (try? fileManager.contentsOfDirectory(atPath: chunkDirectory)) ?? []
        for first in firstLevel {
            let firstPath = "\(chunkDirectory)/\(first)"
            let secondLevel = (try? fileManager.contentsOfDirectory(atPath: firstPath)) ?? []
            for second in secondLevel {
                let secondPath = "\(firstPath)/\(second)"
                let files = (try? fileManager.contentsOfDirectory(atPath: secondPath)) ?? []
                for file in files {
                    let filePath = "\(secondPath)/\(file)"
                    let id = ChunkID(hex: file)
                    if let id, keep.contains(id) {
                        report.chunksKept += 1
                        continue
                    }
                    var status = stat()
                    guard lstat(filePath, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG else { continue }
                    guard unlink(filePath) == 0 else {
                        throw RepositoryError.io("unlink", path: filePath, errno: errno)
                    }
                    report.bytesFreed += UInt64(status.st_size)
                    if id != nil { report.chunksDeleted += 1 } else { report.strayFilesDeleted += 1 }
                }
                rmdir(secondPath)
            }
            rmdir(firstPath)
        }
        logger.info(
            "garbage collected",
            metadata: [
                "chunks": "\(report.chunksDeleted)", "stray": "\(report.strayFilesDeleted)",
                "bytes": "\(report.bytesFreed)",
            ])
        return report
    }

    // MARK: - Verification

    /// Re-reads and re-hashes every chunk of backup `backupID` (all backups when nil). Each problem names the
    /// chunk, the backup, the disk and the chunk index; a chunk shared by several disks is read once.
    public func verify(backupID: Int64?) throws(RepositoryError) -> VerifyReport {
        let backups: [BackupInfo]
        if let backupID {
            backups = [try backup(id: backupID)]
        } else {
            backups = try listBackups()
        }
        var report = VerifyReport(backupsChecked: 0, chunksChecked: 0, bytesChecked: 0, problems: [])
        var checked: [ChunkID: ChunkReadError?] = [:]
        for info in backups {
            report.backupsChecked += 1
            for disk in info.disks {
                let manifest = try manifest(backupID: info.id, disk: disk.name)
                for index in 0..<manifest.chunkCount {
                    guard let id = manifest.chunk(at: index) else { continue }
                    let length = manifest.length(ofChunk: index)
                    let outcome: ChunkReadError?
                    if let known = checked[id] {
                        outcome = known
                    } else {
                        do throws(ChunkReadError) {
                            _ = try LocalChunkSource.readSync(store: store, id: id, length: length, check: .sha256)
                            outcome = nil
                        } catch {
                            outcome = error
                        }
                        checked[id] = .some(outcome)
                        report.chunksChecked += 1
                        report.bytesChecked += UInt64(length)
                    }
                    if let outcome {
                        report.problems.append(
                            VerifyProblem(
                                backupID: info.id, vm: info.vm, disk: disk.name, chunkIndex: index, error: outcome))
                    }
                }
            }
        }
        return report
    }
}

// MARK: - Repository lock

/// An advisory `flock(2)` on `repository.lock`: ingests hold it shared while they write unpublished chunk
/// files, garbage collection holds it exclusive. Never waits: a conflict is `.busy`.
final class RepositoryLock {
    private var fd: Int32

    init(path: String, exclusive: Bool) throws(RepositoryError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw RepositoryError.io("open", path: path, errno: errno) }
        guard flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0 else {
            let code = errno
            close(fd)
            if code == EWOULDBLOCK {
                throw RepositoryError(
                    .busy,
                    exclusive
                        ? "the repository is busy: an ingest is running (\(path))"
                        : "the repository is busy: garbage collection is running (\(path))")
            }
            throw RepositoryError.io("flock", path: path, errno: code)
        }
        self.fd = fd
    }

    /// Drops the lock (also done at deinit).
    func release() {
        if fd >= 0 { close(fd) }
        fd = -1
    }

    deinit {
        release()
    }
}
