import ArgumentParser
import ControlPlane
import Foundation
import Relocation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

// `livemount relocate ...`: start, watch, pause, resume and cancel the relocation of a live mount to its primary
// LUN through livemountd's control API (`/v1/mounts/TARGET/LUN/relocation`, `/v1/relocations`; issue 5).

// MARK: - Arguments shared by the subcommands

/// Parses a `TARGET/LUN` argument (split at the last '/'); the message says what was expected.
func parseMount(_ text: String) throws -> MountAddress {
    guard let address = MountAddress(text) else {
        throw ValidationError("expected TARGET/LUN, e.g. iqn.2026-11.org.livemount:web/0")
    }
    return address
}

/// How to name the mount in help texts.
private let mountHelp = ArgumentHelp(
    "The live mount as TARGET/LUN (e.g. iqn.2026-11.org.livemount:web/0).", valueName: "mount")

extension DaemonOptions {
    /// `/v1/mounts/TARGET/LUN/relocation`, the target percent-encoded as the other commands do.
    static func relocationPath(_ mount: MountAddress) -> String {
        mountPath(target: mount.target, lun: mount.lun) + "/relocation"
    }

    /// One relocation's status (404, "no relocation", becomes the daemon's error text).
    func relocationStatus(_ mount: MountAddress) async throws -> RelocationStatus {
        try JSONDecoder().decode(RelocationStatus.self, from: Data(try await call("GET", Self.relocationPath(mount))))
    }
}

// MARK: - Commands

/// `livemount relocate MOUNT --to URL` (the default, `start`), `status`, `pause`, `resume`, `cancel`.
struct RelocateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relocate",
        abstract: "Copy a live mount to its primary LUN while the guest runs, then switch the LUN over to it.",
        discussion: """
            MOUNT is TARGET/LUN, e.g. iqn.2026-11.org.livemount:web/0. The destination URL is /path or \
            file:///path (a file, created sparse if missing, or a block device), or \
            iscsi://[user[%secret]@]host[:port]/IQN/LUN. Pacing comes from [relocation] in livemountd's \
            configuration; --max-rate overrides its max_rate_mib for one relocation.
            """,
        subcommands: [
            RelocateStartCommand.self, RelocateStatusCommand.self, RelocatePauseCommand.self,
            RelocateResumeCommand.self, RelocateCancelCommand.self,
        ],
        defaultSubcommand: RelocateStartCommand.self)
}

/// `livemount relocate [start] MOUNT --to URL [--max-rate MIB] [--wait [--interval SECONDS]]`.
struct RelocateStartCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "start",
        abstract: "Start relocating a live mount (the default of `livemount relocate`).",
        discussion: """
            With --wait, shows the progress as `relocate status MOUNT --watch` does until the relocation \
            completes (exit status 0), is cancelled or fails (exit status 1).
            """)

    @OptionGroup var daemon: DaemonOptions

    @Argument(help: mountHelp, transform: parseMount)
    var mount: MountAddress

    @Option(help: ArgumentHelp("The primary LUN to copy the mount to.", valueName: "url"))
    var to: String

    @Option(
        name: .customLong("max-rate"),
        help: ArgumentHelp(
            "A ceiling in MiB/s for this relocation, at least 1; it can only lower [relocation] max_rate_mib "
                + "(default: that setting).", valueName: "mib"))
    var maxRate: Int?

    @Flag(help: "Show the progress until the relocation ends; exit status 0 only when it completed.")
    var wait = false

    @OptionGroup var watch: WatchOptions

    func validate() throws {
        if to.isEmpty { throw ValidationError("--to: a destination URL must not be empty") }
        if let maxRate, maxRate < 1 { throw ValidationError("--max-rate \(maxRate): must be at least 1 MiB/s") }
    }

    func run() async throws {
        let body = try JSONEncoder().encode(RelocationRequest(to: to, maxRateMiB: maxRate))
        let answer = try await daemon.call("POST", DaemonOptions.relocationPath(mount), body: Array(body))
        let status = try JSONDecoder().decode(RelocationStatus.self, from: Data(answer))
        if watch.json {
            Terminal.write(try status.jsonLine())
        } else {
            Terminal.write(
                "relocating \(mount) to \(status.destination) "
                    + "(\(RelocationProgressFormat.bytes(status.bytesTotal)), \(status.phase.rawValue))\n")
        }
        guard wait else { return }
        let last = try await RelocationWatcher(daemon: daemon, options: watch).watch(mount)
        try last.requireCompleted()
    }
}

/// `--interval` and `--json` of the commands that watch.
struct WatchOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Seconds between refreshes while watching (default 1).", valueName: "seconds"))
    var interval: Double = 1

    @Flag(help: "Print the daemon's JSON (while watching: one object per line).")
    var json = false

    func validate() throws {
        guard interval.isFinite, (0.1...3600).contains(interval) else {
            throw ValidationError("--interval \(interval): expected seconds, 0.1-3600")
        }
    }
}

/// `livemount relocate status [MOUNT] [--watch] [--json] [--interval SECONDS]`.
struct RelocateStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show one relocation, or all relocations as a table.",
        discussion: """
            With --watch, the progress is redrawn in place on a terminal (one line per relocation), or \
            printed as a line every interval otherwise: phase, percent, bar, bytes copied/total, rate, \
            ETA (h:mm:ss), dirty regions waiting to be copied again, and back-offs (the pump slowing down \
            for the guest). Watching stops when the relocation completes, is cancelled or fails; watching \
            one mount then exits with status 0 only if it completed.
            """)

    @OptionGroup var daemon: DaemonOptions

    @Argument(
        help: ArgumentHelp("The live mount as TARGET/LUN (default: all relocations).", valueName: "mount"),
        transform: parseMount)
    var mount: MountAddress?

    @Flag(help: "Keep showing the progress until the relocation ends.")
    var watch = false

    @OptionGroup var options: WatchOptions

    func run() async throws {
        let watcher = RelocationWatcher(daemon: daemon, options: options)
        switch (mount, watch) {
        case (let mount?, true):
            try await watcher.watch(mount).requireCompleted()
        case (nil, true):
            try await watcher.watchAll()
        case (let mount?, false):
            let answer = try await daemon.call("GET", DaemonOptions.relocationPath(mount))
            if options.json {
                Terminal.write(String(decoding: answer, as: UTF8.self) + "\n")
                return
            }
            let status = try JSONDecoder().decode(RelocationStatus.self, from: Data(answer))
            Terminal.write(status.details.joined(separator: "\n") + "\n")
        case (nil, false):
            let answer = try await daemon.call("GET", "/v1/relocations")
            if options.json {
                Terminal.write(String(decoding: answer, as: UTF8.self) + "\n")
                return
            }
            let statuses = try JSONDecoder().decode([RelocationStatus].self, from: Data(answer))
            if statuses.isEmpty {
                Terminal.write("no relocations\n")
                return
            }
            Terminal.write(RelocationProgressFormat.table(statuses).joined(separator: "\n") + "\n")
        }
    }
}

/// `livemount relocate pause MOUNT`.
struct RelocatePauseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pause", abstract: "Pause a relocation (after the regions in flight); resume continues it.")

    @OptionGroup var daemon: DaemonOptions

    @Argument(help: mountHelp, transform: parseMount)
    var mount: MountAddress

    func run() async throws {
        let status = try await relocationAction(daemon, "POST", DaemonOptions.relocationPath(mount) + "/pause")
        Terminal.write("paused relocation of \(mount) at \(status.percentText) (\(status.phase.rawValue))\n")
    }
}

/// `livemount relocate resume MOUNT`.
struct RelocateResumeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resume", abstract: "Resume a paused or failed relocation where it was.")

    @OptionGroup var daemon: DaemonOptions

    @Argument(help: mountHelp, transform: parseMount)
    var mount: MountAddress

    func run() async throws {
        let status = try await relocationAction(daemon, "POST", DaemonOptions.relocationPath(mount) + "/resume")
        Terminal.write("resumed relocation of \(mount) at \(status.percentText) (\(status.phase.rawValue))\n")
    }
}

/// `livemount relocate cancel MOUNT`.
struct RelocateCancelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel", abstract: "Cancel a relocation; the LUN stays a live mount.")

    @OptionGroup var daemon: DaemonOptions

    @Argument(help: mountHelp, transform: parseMount)
    var mount: MountAddress

    func run() async throws {
        let status = try await relocationAction(daemon, "DELETE", DaemonOptions.relocationPath(mount))
        Terminal.write(
            "cancelled relocation of \(mount) at \(status.percentText) (\(status.phase.rawValue)); "
                + "the LUN stays a live mount\n")
    }
}

/// Sends a pause, resume or cancel and decodes the status it answers with.
private func relocationAction(_ daemon: DaemonOptions, _ method: String, _ path: String) async throws
    -> RelocationStatus
{
    try JSONDecoder().decode(RelocationStatus.self, from: Data(try await daemon.call(method, path)))
}

// MARK: - Showing statuses

extension RelocationStatus {
    /// `42.3%`.
    var percentText: String { RelocationProgressFormat.percent(RelocationProgressFormat.fraction(self)) }

    /// The lines of `livemount relocate status MOUNT`.
    var details: [String] {
        let format = RelocationProgressFormat.self
        var lines = [
            "\(MountAddress(target: target, lun: lun)) → \(destination)",
            format.line(self, barWidth: 30),
            "written \(format.bytes(bytesWritten)), zeros skipped \(format.bytes(bytesZero)), "
                + "left \(format.bytes(bytesLeft)), verify mismatches \(verifyMismatches), resumes \(resumes)",
            "started \(Self.time(startedAt))" + (completedAt.map { ", completed \(Self.time($0))" } ?? ""),
        ]
        if let error, !error.isEmpty { lines.append("error: \(error)") }
        return lines
    }

    /// Seconds since 1970 as local time, `2026-11-03 14:05:09`.
    private static func time(_ seconds: Int64) -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss"
        return formatter.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
    }

    /// The status as one line of JSON, keys sorted (`--json` while watching).
    func jsonLine() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(self), as: UTF8.self) + "\n"
    }

    /// Succeeds for a completed relocation; a cancelled or failed one is an error (exit status 1).
    func requireCompleted() throws {
        let mount = MountAddress(target: target, lun: lun)
        switch phase {
        case .completed: return
        case .cancelled: throw CLIError("relocation of \(mount) was cancelled; the LUN stays a live mount")
        default:
            throw CLIError(
                "relocation of \(mount) \(phase == .failed ? "failed" : "stopped (\(phase.rawValue))")"
                    + (error.map { ": \($0)" } ?? "")
                    + (phase == .failed ? " (`livemount relocate resume \(mount)`)" : ""))
        }
    }
}

/// Polls the daemon and shows progress: in place on a terminal, a line per interval otherwise, or JSON lines.
struct RelocationWatcher {
    let daemon: DaemonOptions
    let options: WatchOptions
    /// Whether standard output is a terminal (then lines are redrawn in place).
    let interactive = isatty(STDOUT_FILENO) != 0

    /// Shows one relocation until its phase ends the watch; returns the last status.
    func watch(_ mount: MountAddress) async throws -> RelocationStatus {
        var drewInPlace = false
        defer { if drewInPlace { Terminal.write("\n") } }
        while true {
            let status = try await daemon.relocationStatus(mount)
            if options.json {
                Terminal.write(try status.jsonLine())
            } else if interactive {
                Terminal.write("\r" + RelocationProgressFormat.line(status, fitting: Terminal.columns()) + "\u{1B}[K")
                drewInPlace = true
            } else {
                Terminal.write(RelocationProgressFormat.line(status) + "\n")
            }
            if status.phase.endsWatch { return status }
            try await Task.sleep(for: .seconds(options.interval))
        }
    }

    /// Shows every relocation, one line each, until all of them have ended (those that ended before the watch
    /// started included, so the picture is whole).
    func watchAll() async throws {
        var linesDrawn = 0
        while true {
            let answer = try await daemon.call("GET", "/v1/relocations")
            let statuses = try JSONDecoder().decode([RelocationStatus].self, from: Data(answer))
            if options.json {
                for status in statuses {
                    Terminal.write(try status.jsonLine())
                }
            } else if statuses.isEmpty {
                Terminal.write("no relocations\n")
                return
            } else {
                let labels = statuses.map { MountAddress(target: $0.target, lun: $0.lun).description }
                let labelWidth = labels.map(\.count).max() ?? 0
                let lines = zip(labels, statuses).map { label, status in
                    let padded = label + String(repeating: " ", count: labelWidth - label.count) + "  "
                    return interactive
                        ? padded + RelocationProgressFormat.line(status, fitting: Terminal.columns() - padded.count)
                        : padded + RelocationProgressFormat.line(status)
                }
                if interactive {
                    // Back to the first line drawn last time (ESC [ n F), redraw, clear what is left below (ESC [ J).
                    let up = linesDrawn > 0 ? "\u{1B}[\(linesDrawn)F" : ""
                    Terminal.write(up + lines.map { $0 + "\u{1B}[K\n" }.joined() + "\u{1B}[J")
                    linesDrawn = lines.count
                } else {
                    Terminal.write(lines.joined(separator: "\n") + "\n")
                }
            }
            if statuses.allSatisfy({ $0.phase.endsWatch }) { return }
            try await Task.sleep(for: .seconds(options.interval))
        }
    }
}

/// Standard output written straight to the descriptor, so `\r` redraws show at once and never interleave with
/// buffered `print` output.
enum Terminal {
    static func write(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }

    /// The terminal's width (TIOCGWINSZ), else $COLUMNS, else 80.
    static func columns() -> Int {
        var size = winsize()
        if ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 { return Int(size.ws_col) }
        if let text = ProcessInfo.processInfo.environment["COLUMNS"], let value = Int(text), value > 0 { return value }
        return 80
    }
}
