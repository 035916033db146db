import ArgumentParser
import Foundation
import Logging
import Repository
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

// MARK: - Shared options

/// `--repo DIR`: the repository directory; default $LIVEMOUNT_REPO, else /var/lib/livemount/repository.
struct RepositoryOptions: ParsableArguments {
    static let defaultPath = "/var/lib/livemount/repository"

    @Option(
        name: .customLong("repo"),
        help: ArgumentHelp(
            "The backup repository directory (default: $LIVEMOUNT_REPO, else \(defaultPath)).", valueName: "dir"))
    var repository: String?

    var path: String {
        if let repository { return repository }
        if let environment = ProcessInfo.processInfo.environment["LIVEMOUNT_REPO"], !environment.isEmpty {
            return environment
        }
        return Self.defaultPath
    }

    func open(create: Bool = false) throws(RepositoryError) -> BackupRepository {
        var logger = Logger(label: "livemount.repository")
        logger.logLevel = .warning
        return try BackupRepository.open(path: path, create: create, logger: logger)
    }

    func validate() throws {
        if let repository, repository.isEmpty { throw ValidationError("--repo must not be empty") }
    }
}

/// Runs `body`, printing a repository failure as `error: ...` on stderr and exiting 1 (a bad argument the
/// repository found, such as a missing configuration file, exits 64 like ArgumentParser's own).
func reportingFailures(_ body: () throws(RepositoryError) -> Void) throws {
    do {
        try body()
    } catch {
        FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
        throw ExitCode(error.code == .invalidArgument ? 64 : 1)
    }
}

// MARK: - livemount backup

/// `livemount backup ...`: create, list, show, verify, delete backups and collect garbage.
struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Manage the backup repository.",
        subcommands: [
            BackupCreateCommand.self, BackupListCommand.self, BackupShowCommand.self, BackupVerifyCommand.self,
            BackupDeleteCommand.self, BackupGCCommand.self,
        ]
    )
}

/// `livemount backup create --vm NAME --config FILE --disk [NAME=]SOURCE ... [--chunk-size BYTES]`.
struct BackupCreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Back up a VM: its configuration file and its disks.",
        discussion: """
            A disk SOURCE is a raw image or block device path, iscsi://host[:port]/target-iqn/lun, or an
            http(s):// URL whose server honours Range requests. Disks without NAME= are named disk0, disk1, ...
            The repository is created if missing.
            """
    )

    @OptionGroup var repository: RepositoryOptions

    @Option(help: "The VM's name.")
    var vm: String

    @Option(name: .customLong("config"), help: ArgumentHelp("The VM's configuration file.", valueName: "file"))
    var configuration: String

    @Option(
        name: .customLong("disk"),
        help: ArgumentHelp("A disk to back up; repeat for each disk.", valueName: "[name=]source"))
    var disks: [String] = []

    @Option(
        name: .customLong("chunk-size"),
        help: ArgumentHelp("Chunk size: bytes, or with K/M suffix (power of two, 4K to 64M).", valueName: "bytes"))
    var chunkSize: String = "1M"

    func validate() throws {
        guard !vm.isEmpty else { throw ValidationError("--vm must not be empty") }
        guard !configuration.isEmpty else { throw ValidationError("--config must not be empty") }
        guard !disks.isEmpty else { throw ValidationError("give at least one --disk [NAME=]SOURCE") }
        _ = try parsedDisks()
        _ = try parsedChunkSize()
    }

    /// `NAME=SOURCE` pairs; a name has no `/` or `:` so a path or URL with `=` in it is a source.
    func parsedDisks() throws -> [IngestDisk] {
        var result: [IngestDisk] = []
        for (index, argument) in disks.enumerated() {
            var name = "disk\(index)"
            var source = argument
            if let equals = argument.firstIndex(of: "=") {
                let candidate = argument[..<equals]
                if !candidate.isEmpty && !candidate.contains("/") && !candidate.contains(":") {
                    name = String(candidate)
                    source = String(argument[argument.index(after: equals)...])
                }
            }
            guard !source.isEmpty else { throw ValidationError("--disk \(argument): the source is empty") }
            guard !result.contains(where: { $0.name == name }) else {
                throw ValidationError("--disk \(argument): disk name \(name) is given twice")
            }
            result.append(IngestDisk(name: name, source: source))
        }
        return result
    }

    func parsedChunkSize() throws -> Int {
        guard let bytes = parseSize(chunkSize), IngestRequest.chunkSizes.contains(bytes), bytes.nonzeroBitCount == 1
        else {
            throw ValidationError("--chunk-size \(chunkSize): expected a power of two from 4K to 64M (e.g. 1M, 65536)")
        }
        return bytes
    }

    func run() throws {
        let request = IngestRequest(
            vm: vm, configurationPath: configuration, disks: try parsedDisks(), chunkSize: try parsedChunkSize())
        let options = repository
        try reportingFailures { () throws(RepositoryError) in
            let repository = try options.open(create: true)
            let bar = ProgressBar()
            let result = try repository.ingest(request) { bar.update($0) }
            bar.finish()
            let dedup =
                result.chunksTotal - result.zeroChunks == 0
                ? "n/a"
                : String(
                    format: "%.1f%%",
                    100 * Double(result.deduplicatedChunks) / Double(result.chunksTotal - result.zeroChunks))
            print(
                "backup \(result.backup.id) of VM \(vm): read \(formatBytes(result.bytesRead)), "
                    + "stored \(formatBytes(result.newStoredBytes)) in \(result.newChunks) new chunks; "
                    + "\(result.deduplicatedChunks) chunks deduplicated (\(dedup)), \(result.zeroChunks) zero chunks")
        }
    }
}

/// `livemount backup list [--vm NAME]`.
struct BackupListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List backups, newest first.")

    @OptionGroup var repository: RepositoryOptions

    @Option(help: "Only backups of this VM.")
    var vm: String?

    func run() throws {
        let options = repository
        let vm = self.vm
        try reportingFailures { () throws(RepositoryError) in
            let backups = try options.open().listBackups(vm: vm)
            guard !backups.isEmpty else {
                print(vm.map { "no backups of VM \($0)" } ?? "no backups")
                return
            }
            print(pad("ID", 6) + pad("VM", 20) + pad("CREATED", 22) + pad("DISKS", 7) + pad("SIZE", 12) + "STORED")
            for backup in backups {
                let size = backup.disks.reduce(UInt64(0)) { $0 + $1.size }
                let stored = backup.disks.reduce(UInt64(0)) { $0 + $1.storedBytes }
                print(
                    pad("\(backup.id)", 6) + pad(backup.vm, 20) + pad(formatDate(backup.createdAt), 22)
                        + pad("\(backup.disks.count)", 7) + pad(formatBytes(size), 12) + formatBytes(stored))
            }
        }
    }
}

/// `livemount backup show ID`: disks, sizes, chunk counts, dedup ratio, holds.
struct BackupShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one backup in detail.")

    @OptionGroup var repository: RepositoryOptions

    @Argument(help: "The backup id.")
    var id: Int64

    func run() throws {
        let options = repository
        let id = self.id
        try reportingFailures { () throws(RepositoryError) in
            let repository = try options.open()
            let backup = try repository.backup(id: id)
            let holds = try repository.holds(backupID: id)
            print("backup \(backup.id)")
            print("  vm:            \(backup.vm)")
            print("  created:       \(formatDate(backup.createdAt))")
            print("  configuration: \(backup.configurationName) (\(formatBytes(UInt64(backup.configurationSize))))")
            print("  holds:         \(holds.isEmpty ? "none" : holds.joined(separator: ", "))")
            for disk in backup.disks {
                let data = disk.chunkCount - disk.zeroChunks
                let ratio =
                    disk.storedBytes == 0
                    ? "all shared with earlier backups"
                    : String(format: "%.2fx", Double(disk.size) / Double(disk.storedBytes))
                print("  disk \(disk.name):")
                print("    size:        \(formatBytes(disk.size)) (\(disk.size) bytes)")
                print(
                    "    chunks:      \(disk.chunkCount) of \(formatBytes(UInt64(disk.chunkSize))), \(disk.zeroChunks) zero, \(data) with data"
                )
                print("    stored:      \(formatBytes(disk.storedBytes)) new; reduction \(ratio)")
            }
        }
    }
}

/// `livemount backup verify [ID]`: exit 1 with every problem printed if any.
struct BackupVerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify", abstract: "Re-read and re-hash every chunk of a backup (or of all backups).")

    @OptionGroup var repository: RepositoryOptions

    @Argument(help: "The backup id (default: every backup).")
    var id: Int64?

    func run() throws {
        let options = repository
        let id = self.id
        var clean = true
        try reportingFailures { () throws(RepositoryError) in
            let report = try options.open().verify(backupID: id)
            for problem in report.problems {
                FileHandle.standardError.write(Data("\(problem)\n".utf8))
            }
            clean = report.isClean
            print(
                "verified \(report.backupsChecked) backup(s): \(report.chunksChecked) chunks, "
                    + "\(formatBytes(report.bytesChecked)); \(report.problems.count) problem(s)")
        }
        if !clean { throw ExitCode.failure }
    }
}

/// `livemount backup delete ID [--force]`.
struct BackupDeleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Delete a backup (its chunks are freed by `backup gc`).")

    @OptionGroup var repository: RepositoryOptions

    @Argument(help: "The backup id.")
    var id: Int64

    @Flag(help: "Delete even if a mount holds the backup.")
    var force = false

    func run() throws {
        let options = repository
        let id = self.id
        let force = self.force
        try reportingFailures { () throws(RepositoryError) in
            try options.open().delete(backupID: id, force: force)
            print("deleted backup \(id); run `livemount backup gc` to free its chunks")
        }
    }
}

/// `livemount backup gc`.
struct BackupGCCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc", abstract: "Delete chunk files no backup references.")

    @OptionGroup var repository: RepositoryOptions

    func run() throws {
        let options = repository
        try reportingFailures { () throws(RepositoryError) in
            let report = try options.open().collectGarbage()
            print(
                "deleted \(report.chunksDeleted) chunk(s) and \(report.strayFilesDeleted) stray file(s), "
                    + "freed \(formatBytes(report.bytesFreed)); \(report.chunksKept) chunk(s) in use")
        }
    }
}

// MARK: - Progress

/// A progress bar on stderr: redrawn in place a few times a second on a terminal, one line every few
/// seconds otherwise (logs, CI).
final class ProgressBar: Sendable {
    private struct State {
        var start = ContinuousClock.now
        var lastDraw: ContinuousClock.Instant?
        var drewInPlace = false
    }

    private let interactive = isatty(STDERR_FILENO) != 0
    private let state = Mutex(State())

    func update(_ progress: IngestProgress) {
        let now = ContinuousClock.now
        let line: String? = state.withLock { state in
            let interval: Duration = interactive ? .milliseconds(200) : .seconds(5)
            let finished = progress.bytesRead == progress.bytesTotal
            if let last = state.lastDraw, now - last < interval, !finished { return nil }
            state.lastDraw = now
            state.drewInPlace = interactive
            let elapsed = max((now - state.start) / .seconds(1), 0.001)
            let rate = Double(progress.bytesRead) / elapsed
            let fraction = progress.bytesTotal == 0 ? 1 : Double(progress.bytesRead) / Double(progress.bytesTotal)
            let remaining = rate > 0 ? Double(progress.bytesTotal - progress.bytesRead) / rate : 0
            let width = 30
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
            let text =
                "[\(bar)] \(String(format: "%5.1f", fraction * 100))%  "
                + "\(formatBytes(progress.bytesRead))/\(formatBytes(progress.bytesTotal))  "
                + "\(formatBytes(UInt64(rate)))/s  ETA \(formatDuration(remaining))  "
                + "disk \(progress.disk) (\(progress.diskIndex + 1)/\(progress.diskCount))"
            return interactive ? "\r\(text)\u{1B}[K" : "\(text)\n"
        }
        if let line { FileHandle.standardError.write(Data(line.utf8)) }
    }

    /// Ends the in-place line.
    func finish() {
        if state.withLock({ $0.drewInPlace }) { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}

// MARK: - Formatting

/// Parses `4096`, `64K`, `1M`, `1MiB` (binary units) into bytes.
func parseSize(_ text: String) -> Int? {
    var digits = text.uppercased()
    for suffix in ["IB", "B"] where digits.hasSuffix(suffix) && digits.count > suffix.count {
        digits.removeLast(suffix.count)
        break
    }
    var multiplier = 1
    if let last = digits.last, let shift = ["K": 10, "M": 20, "G": 30][String(last)] {
        multiplier = 1 << shift
        digits.removeLast()
    }
    guard let value = Int(digits), value > 0 else { return nil }
    let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
    return overflow ? nil : product
}

/// `1.5 GiB`, `812 KiB`, `17 B`.
func formatBytes(_ bytes: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}

/// `1:02:03` or `2:03`.
func formatDuration(_ seconds: Double) -> String {
    guard seconds.isFinite else { return "--:--" }
    let total = Int(seconds.rounded())
    let (hours, minutes, secs) = (total / 3600, total / 60 % 60, total % 60)
    return hours > 0
        ? String(format: "%d:%02d:%02d", hours, minutes, secs) : String(format: "%d:%02d", minutes, secs)
}

/// UTC, to the second: `2024-05-01 12:00:00Z`.
func formatDate(_ date: Date) -> String {
    let formatter = DateFormatter()
    formatter.locale = Locale(identifier: "en_US_POSIX")
    formatter.timeZone = TimeZone(identifier: "UTC")
    formatter.dateFormat = "yyyy-MM-dd HH:mm:ss'Z'"
    return formatter.string(from: date)
}

/// `text` left-aligned in `width` columns (at least one space after).
func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
}
