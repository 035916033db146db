import ArgumentParser
import Foundation
import Prefetch

// MARK: - Shared options

/// `--traces-db PATH`: the trace store; default $LIVEMOUNT_TRACES, else the daemon's state directory.
struct TraceStoreOptions: ParsableArguments {
    static let defaultPath = "/var/tmp/livemount/state/traces.sqlite"

    @Option(
        name: .customLong("traces-db"),
        help: ArgumentHelp(
            "The trace store (default: $LIVEMOUNT_TRACES, else \(defaultPath)).", valueName: "path"))
    var database: String?

    var path: String {
        if let database { return database }
        if let environment = ProcessInfo.processInfo.environment["LIVEMOUNT_TRACES"], !environment.isEmpty {
            return environment
        }
        return Self.defaultPath
    }

    func open() throws(TraceStoreError) -> TraceStore {
        try TraceStore.open(path: path)
    }

    func validate() throws {
        if let database, database.isEmpty { throw ValidationError("--traces-db must not be empty") }
    }
}

/// A trace command's own failure (unknown profile, nothing to train): one line, exit code 1.
struct TraceCommandError: Error, CustomStringConvertible {
    var description: String

    init(_ description: String) {
        self.description = description
    }
}

/// Runs `body`, printing a trace store, CSV or command failure as `error: ...` on stderr and exiting 1.
func reportingTraceFailures(_ body: () throws -> Void) throws {
    func fail(_ message: String) throws -> Never {
        FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        throw ExitCode.failure
    }
    do {
        try body()
    } catch let error as TraceStoreError {
        try fail(error.description)
    } catch let error as TraceCSVError {
        try fail(error.description)
    } catch let error as TraceCommandError {
        try fail(error.description)
    }
}

/// The error for a profile the store does not know, listing those it does.
func unknownProfile(_ profile: String, _ store: TraceStore) -> TraceCommandError {
    let known = (try? store.profiles()) ?? []
    return TraceCommandError(
        "unknown profile \(profile)"
            + (known.isEmpty ? " (the store has none)" : " (known: \(known.joined(separator: ", ")))"))
}

// MARK: - livemount trace

/// `livemount trace ...`: list, show, export, import, delete traces; train and show plans; guest files.
/// Recording and replay add themselves to `subcommands` below.
struct TraceCommand: ParsableCommand {
    /// The `trace` subcommands, in help order.
    static let subcommands: [any ParsableCommand.Type] = [
        TraceListCommand.self, TraceShowCommand.self, TraceExportCommand.self, TraceImportCommand.self,
        TraceDeleteCommand.self, TraceTrainCommand.self, TracePlanCommand.self, TraceFilesCommand.self,
        TraceRecordCommand.self, TraceReplayCommand.self,
    ]

    static let configuration = CommandConfiguration(
        commandName: "trace",
        abstract: "Boot traces and the prefetch plans trained from them.",
        subcommands: subcommands
    )
}

/// `livemount trace list [--profile P]`.
struct TraceListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List recorded traces.")

    @OptionGroup var store: TraceStoreOptions

    @Option(help: "Only traces of this profile.")
    var profile: String?

    func run() throws {
        try reportingTraceFailures {
            let summaries = try store.open().summaries(profile: profile)
            guard !summaries.isEmpty else {
                print(profile.map { "no traces of profile \($0)" } ?? "no traces")
                return
            }
            print(
                pad("ID", 6) + pad("PROFILE", 16) + pad("RECORDED", 22) + pad("READS", 9) + pad("BYTES", 12)
                    + pad("UNIQUE", 12) + pad("SPAN", 10) + "NOTE")
            for summary in summaries {
                let recorded = formatDate(Date(timeIntervalSince1970: TimeInterval(summary.info.recordedAt)))
                print(
                    pad("\(summary.info.id)", 6) + pad(summary.info.profile, 16) + pad(recorded, 22)
                        + pad("\(summary.reads)", 9) + pad(formatBytes(summary.bytes), 12)
                        + pad(formatBytes(summary.uniqueBytes), 12) + pad(formatMicroseconds(summary.span), 10)
                        + summary.info.note)
            }
        }
    }
}

/// `livemount trace show ID [--plot] [--png FILE]`.
struct TraceShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Summarise a trace: reads, bytes, span, source mix, throughput; plot it.")

    @OptionGroup var store: TraceStoreOptions

    @Argument(help: "The trace id.")
    var id: Int64

    @Flag(help: "Print a text plot of LBA over time.")
    var plot = false

    @Option(help: ArgumentHelp("Write a PNG plot of LBA over time to this file.", valueName: "file"))
    var png: String?

    func run() throws {
        try reportingTraceFailures {
            guard let trace = try store.open().trace(id: id) else { throw TraceCommandError("no trace with id \(id)") }
            let summary = TraceSummary(trace)
            let info = trace.info
            print("trace \(info.id) (profile \(info.profile))")
            print("  vm:          \(info.vm)")
            if info.backupID != nil || info.disk != nil {
                print("  backup:      \(info.backupID ?? "?"), disk \(info.disk ?? "?")")
            }
            print("  recorded:    \(formatDate(Date(timeIntervalSince1970: TimeInterval(info.recordedAt))))")
            print("  block size:  \(info.blockSize) B; chunk size \(formatBytes(UInt64(info.chunkSize)))")
            if !info.note.isEmpty { print("  note:        \(info.note)") }
            print("  reads:       \(summary.reads)")
            print("  bytes:       \(formatBytes(summary.bytes)) read, \(formatBytes(summary.uniqueBytes)) unique")
            print("  span:        \(formatMicroseconds(summary.span)) (first issue to last completion)")
            if summary.span > 0 {
                let rate = Double(summary.bytes) / (Double(summary.span) / 1_000_000)
                print("  throughput:  \(formatBytes(UInt64(rate)))/s over the span")
            }
            let mix = ReadSource.allCases.reversed().map { source -> String in
                let share = summary.share(source)
                return "\(source.rawValue) \(share.reads) (\(percent(share.bytes, of: summary.bytes)))"
            }
            print("  sources:     " + mix.joined(separator: ", ") + "  [reads (share of bytes)]")
            print(
                "  prefetched:  \(summary.prefetched.reads) reads, \(percent(summary.prefetched.bytes, of: summary.bytes)) of bytes"
            )
            if plot {
                print("")
                print(TracePlot.text(trace), terminator: "")
            }
            if let png {
                do {
                    try Data(TracePlot.png(trace)).write(to: URL(fileURLWithPath: png))
                } catch {
                    throw TraceCommandError("cannot write \(png): \(error.localizedDescription)")
                }
                print("wrote \(png)")
            }
        }
    }
}

/// `livemount trace export ID [-o FILE]`.
struct TraceExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "Write a trace as CSV (to standard output by default).")

    @OptionGroup var store: TraceStoreOptions

    @Argument(help: "The trace id.")
    var id: Int64

    @Option(name: .shortAndLong, help: ArgumentHelp("Write to this file instead.", valueName: "file"))
    var output: String?

    func run() throws {
        try reportingTraceFailures {
            guard let trace = try store.open().trace(id: id) else { throw TraceCommandError("no trace with id \(id)") }
            let text = TraceCSV.export(trace)
            guard let output else {
                FileHandle.standardOutput.write(Data(text.utf8))
                return
            }
            do {
                try Data(text.utf8).write(to: URL(fileURLWithPath: output))
            } catch {
                throw TraceCommandError("cannot write \(output): \(error.localizedDescription)")
            }
            FileHandle.standardError.write(Data("wrote trace \(id) (\(trace.reads.count) reads) to \(output)\n".utf8))
        }
    }
}

/// `livemount trace import FILE [--profile P] [--block-size N] [--chunk-size N]`.
struct TraceImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import", abstract: "Store a trace read from CSV.",
        discussion: """
            A file exported by `livemount trace export` carries its profile, block size and chunk size. A foreign
            CSV (a header with issued_us, lba, blocks and optionally completed_us, source, prefetched) needs
            --profile and --block-size. --profile and --chunk-size override what the file says.
            """)

    @OptionGroup var store: TraceStoreOptions

    @Argument(help: "The CSV file.")
    var file: String

    @Option(help: "The profile to store the trace under.")
    var profile: String?

    @Option(name: .customLong("block-size"), help: "The LUN's block size in bytes, for a file that does not say.")
    var blockSize: Int?

    @Option(
        name: .customLong("chunk-size"),
        help: ArgumentHelp("The backup's chunk size: bytes, or with K/M suffix.", valueName: "bytes"))
    var chunkSize: String?

    func validate() throws {
        if let profile, profile.isEmpty { throw ValidationError("--profile must not be empty") }
        if let blockSize, blockSize <= 0 || blockSize.nonzeroBitCount != 1 {
            throw ValidationError("--block-size \(blockSize): expected a power of two such as 512 or 4096")
        }
        if let chunkSize, parseSize(chunkSize) == nil {
            throw ValidationError("--chunk-size \(chunkSize): expected bytes, or a number with K/M suffix")
        }
    }

    func run() throws {
        try reportingTraceFailures {
            let text: String
            do {
                text = try String(contentsOfFile: file, encoding: .utf8)
            } catch {
                throw TraceCommandError("cannot read \(file): \(error.localizedDescription)")
            }
            let chunkBytes = chunkSize.flatMap(parseSize)
            let defaults = TraceInfo(
                profile: profile ?? "", vm: profile ?? "", blockSize: blockSize ?? 0,
                chunkSize: chunkBytes ?? (1 << 20),
                recordedAt: Int64(Date().timeIntervalSince1970),
                note: "imported from \((file as NSString).lastPathComponent)")
            var trace = try TraceCSV.parse(text, source: file, defaults: defaults)
            if let blockSize, trace.info.blockSize != blockSize {
                throw TraceCommandError(
                    "\(file) says block_size=\(trace.info.blockSize), not --block-size \(blockSize); "
                        + "its LBAs would be misread")
            }
            if let profile { trace.info.profile = profile }
            if let chunkBytes { trace.info.chunkSize = chunkBytes }
            let id = try store.open().insert(trace)
            print("imported trace \(id): profile \(trace.info.profile), \(trace.reads.count) reads")
        }
    }
}

/// `livemount trace delete ID`.
struct TraceDeleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a trace.")

    @OptionGroup var store: TraceStoreOptions

    @Argument(help: "The trace id.")
    var id: Int64

    func run() throws {
        try reportingTraceFailures {
            guard try store.open().delete(id: id) else { throw TraceCommandError("no trace with id \(id)") }
            print("deleted trace \(id)")
        }
    }
}

// MARK: - Plans

/// `livemount trace train PROFILE [--traces ID,ID...] [--min-support X] [--granularity BYTES]`.
struct TraceTrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train", abstract: "Train the profile's prefetch plan from its traces.",
        discussion: """
            Every read is cut into granules (default: the traces' chunk size). A granule's support is the share of \
            traces that read it and its expected time the median of its first access over those traces; granules \
            below --min-support are dropped, adjacent ones read at about the same time are coalesced. The plan \
            replaces the profile's current one.
            """)

    @OptionGroup var store: TraceStoreOptions

    @Argument(help: "The profile.")
    var profile: String

    @Option(
        name: .customLong("traces"),
        help: ArgumentHelp("Train from these traces only (default: all of the profile's).", valueName: "id,id..."))
    var traceList: String?

    @Option(name: .customLong("min-support"), help: "Drop extents read by a smaller share of the traces (0...1).")
    var minSupport: Double = 0.25

    @Option(help: ArgumentHelp("Plan granularity: bytes, or with K/M suffix.", valueName: "bytes"))
    var granularity: String?

    func validate() throws {
        guard (0...1).contains(minSupport) else { throw ValidationError("--min-support \(minSupport): expected 0...1") }
        if let granularity, parseSize(granularity) == nil {
            throw ValidationError("--granularity \(granularity): expected bytes, or a number with K/M suffix")
        }
        _ = try traceIDs()
    }

    /// The ids `--traces` names, nil when it is absent.
    func traceIDs() throws -> [Int64]? {
        guard let traceList else { return nil }
        let parts = traceList.split(separator: ",", omittingEmptySubsequences: false)
        var ids: [Int64] = []
        for part in parts {
            let text = part.trimmingCharacters(in: .whitespaces)
            guard let id = Int64(text), id > 0 else {
                throw ValidationError("--traces \(traceList): '\(text)' is not a trace id")
            }
            if !ids.contains(id) { ids.append(id) }
        }
        return ids
    }

    func run() throws {
        try reportingTraceFailures {
            let store = try self.store.open()
            var traces: [Trace] = []
            if let ids = try traceIDs() {
                for id in ids {
                    guard let trace = try store.trace(id: id) else { throw TraceCommandError("no trace with id \(id)") }
                    guard trace.info.profile == profile else {
                        throw TraceCommandError(
                            "trace \(id) belongs to profile \(trace.info.profile), not \(profile)")
                    }
                    traces.append(trace)
                }
            } else {
                guard try store.profiles().contains(profile) else { throw unknownProfile(profile, store) }
                for summary in try store.summaries(profile: profile) {
                    if let trace = try store.trace(id: summary.info.id) { traces.append(trace) }
                }
            }
            guard !traces.isEmpty else { throw TraceCommandError("profile \(profile) has no traces to train from") }
            let bytes: Int
            if let granularity, let parsed = parseSize(granularity) {
                bytes = parsed
            } else {
                let sizes = Set(traces.map(\.info.chunkSize))
                guard sizes.count == 1, let size = sizes.first else {
                    let list = sizes.sorted().map(String.init).joined(separator: ", ")
                    throw TraceCommandError(
                        "the traces of profile \(profile) have different chunk sizes (\(list)); give --granularity")
                }
                bytes = size
            }
            let plan = PlanTrainer.train(
                traces, profile: profile, granularity: bytes, minSupport: minSupport,
                now: Int64(Date().timeIntervalSince1970))
            try store.save(plan)
            let ids = traces.map { String($0.info.id) }.joined(separator: ",")
            print(
                "trained plan for profile \(profile) from \(traces.count) trace(s) (\(ids)): \(plan.entries.count) "
                    + "entries, \(formatBytes(plan.totalBytes)) at \(formatBytes(UInt64(bytes))) granularity, "
                    + "min support \(minSupport)")
            if let last = plan.entries.last {
                print("  expected first accesses from 0 to \(formatMicroseconds(last.expectedTime))")
            }
        }
    }
}

/// `livemount trace plan PROFILE [--limit N]`.
struct TracePlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan", abstract: "Show the profile's prefetch plan, in expected access order.")

    @OptionGroup var store: TraceStoreOptions

    @Argument(help: "The profile.")
    var profile: String

    @Option(help: "Show at most this many entries (0: all).")
    var limit: Int = 50

    func validate() throws {
        guard limit >= 0 else { throw ValidationError("--limit \(limit): expected 0 or more") }
    }

    func run() throws {
        try reportingTraceFailures {
            let store = try self.store.open()
            guard let plan = try store.plan(profile: profile) else {
                guard try store.profiles().contains(profile) else { throw unknownProfile(profile, store) }
                throw TraceCommandError("profile \(profile) has no plan; run `livemount trace train \(profile)`")
            }
            let created = formatDate(Date(timeIntervalSince1970: TimeInterval(plan.createdAt)))
            print("plan of profile \(plan.profile)")
            print("  trained:     \(created) from trace(s) \(plan.traceIDs.map(String.init).joined(separator: ","))")
            print("  granularity: \(formatBytes(UInt64(plan.granularity)))")
            print("  entries:     \(plan.entries.count), \(formatBytes(plan.totalBytes))")
            let files = try store.files(profile: profile)
            if !files.isEmpty { print("  files:       \(files.joined(separator: ", "))") }
            guard !plan.entries.isEmpty else { return }
            print("")
            print(pad("#", 7) + pad("OFFSET", 16) + pad("LENGTH", 12) + pad("SUPPORT", 9) + "EXPECTED")
            let shown = limit == 0 ? plan.entries.count : min(limit, plan.entries.count)
            for (index, entry) in plan.entries.prefix(shown).enumerated() {
                print(
                    pad("\(index + 1)", 7) + pad("\(entry.offset)", 16) + pad(formatBytes(entry.length), 12)
                        + pad(String(format: "%.2f", entry.support), 9) + formatMicroseconds(entry.expectedTime))
            }
            if shown < plan.entries.count {
                print("... \(plan.entries.count - shown) more (--limit 0 shows all)")
            }
        }
    }
}

/// `livemount trace files PROFILE [--set PATH ...] [--clear]`.
struct TraceFilesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "files", abstract: "Show or set the guest files a profile pre-stages.",
        discussion: """
            Paths inside the guest (such as /boot/vmlinuz or /usr/lib/systemd/systemd): a mount of the profile
            finds their blocks in the disk's file system and adds them to what it stages before the LUN reports
            ready. --set replaces the list.
            """)

    @OptionGroup var store: TraceStoreOptions

    @Argument(help: "The profile.")
    var profile: String

    @Option(
        name: .customLong("set"), parsing: .upToNextOption, help: ArgumentHelp("The guest paths.", valueName: "path"))
    var paths: [String] = []

    @Flag(help: "Remove every path.")
    var clear = false

    func validate() throws {
        guard !profile.isEmpty else { throw ValidationError("the profile must not be empty") }
        guard !(clear && !paths.isEmpty) else { throw ValidationError("give --set or --clear, not both") }
        for path in paths where !path.hasPrefix("/") {
            throw ValidationError("--set \(path): expected an absolute path inside the guest")
        }
    }

    func run() throws {
        try reportingTraceFailures {
            let store = try self.store.open()
            if clear || !paths.isEmpty {
                try store.setFiles(paths, profile: profile)
                print(
                    paths.isEmpty
                        ? "profile \(profile) names no files" : "profile \(profile) names \(paths.count) file(s)")
                return
            }
            guard try store.profiles().contains(profile) else { throw unknownProfile(profile, store) }
            let files = try store.files(profile: profile)
            if files.isEmpty {
                print("profile \(profile) names no files")
            } else {
                for file in files { print(file) }
            }
        }
    }
}

// MARK: - Formatting

/// `812 µs`, `12.3 ms`, `31.2 s`.
func formatMicroseconds(_ microseconds: UInt64) -> String {
    if microseconds < 1_000 { return "\(microseconds) µs" }
    if microseconds < 1_000_000 { return String(format: "%.1f ms", Double(microseconds) / 1_000) }
    return String(format: "%.1f s", Double(microseconds) / 1_000_000)
}

/// `part` as a percentage of `whole`: `42.0%` (`-` when the whole is 0).
func percent(_ part: UInt64, of whole: UInt64) -> String {
    whole == 0 ? "-" : String(format: "%.1f%%", 100 * Double(part) / Double(whole))
}
