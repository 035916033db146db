import ArgumentParser
import ControlPlane
import Foundation
import Relocation

// MARK: - Talking to the daemon

/// How to reach the daemon: its control socket (`--socket`, else $LIVEMOUNT_SOCKET, else the default state
/// directory of conf/livemount.toml), or its loopback TCP listener (`--control HOST:PORT` or $LIVEMOUNT_CONTROL,
/// with the bearer token read from `--token-file` or $LIVEMOUNT_TOKEN_FILE).
struct DaemonOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "livemountd's control socket (default: $LIVEMOUNT_SOCKET, else /var/tmp/livemount/state/control.sock).",
            valueName: "path"))
    var socket: String?

    @Option(
        help: ArgumentHelp(
            "livemountd's TCP control listener instead of the socket (default: $LIVEMOUNT_CONTROL); needs --token-file.",
            valueName: "host:port"))
    var control: String?

    @Option(
        name: .customLong("token-file"),
        help: ArgumentHelp(
            "The file holding the TCP listener's bearer token (default: $LIVEMOUNT_TOKEN_FILE).", valueName: "path"))
    var tokenFile: String?

    var socketPath: String {
        socket ?? ProcessInfo.processInfo.environment["LIVEMOUNT_SOCKET"] ?? "/var/tmp/livemount/state/control.sock"
    }

    private var environment: [String: String] { ProcessInfo.processInfo.environment }

    /// The client for the chosen transport; a bad --control or token file is a clear error.
    func client() throws -> ControlClient {
        guard let address = control ?? (socket == nil ? environment["LIVEMOUNT_CONTROL"] : nil), !address.isEmpty else {
            return ControlClient(socketPath: socketPath)
        }
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
            (1...65535).contains(port)
        else {
            throw CLIError("--control \(address): expected HOST:PORT (e.g. 127.0.0.1:9090)")
        }
        let host = String(address[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        guard let path = tokenFile ?? environment["LIVEMOUNT_TOKEN_FILE"], !path.isEmpty else {
            throw CLIError("--control \(address) needs --token-file (or $LIVEMOUNT_TOKEN_FILE): the listener's bearer token")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CLIError("--token-file \(path): cannot be read")
        }
        let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty else { throw CLIError("--token-file \(path): the file is empty") }
        return ControlClient(host: host, port: port, token: token)
    }

    /// Sends one call; prints the daemon's error message and exits 1 when it fails.
    func call(_ method: String, _ path: String, body: [UInt8] = []) async throws -> [UInt8] {
        let response: ControlResponse
        do {
            response = try await client().send(method, path, body: body)
        } catch let error as ControlError {
            throw CLIError(error.message)
        }
        guard (200..<300).contains(response.status) else {
            let message = (try? JSONDecoder().decode(ErrorBody.self, from: Data(response.body)))?.error
            throw CLIError(message ?? "livemountd answered HTTP \(response.status)")
        }
        return response.body
    }
}

extension DaemonOptions {
    /// `/v1/mounts/TARGET/LUN`, the target percent-encoded.
    static func mountPath(target: String, lun: UInt64) -> String {
        "/v1/mounts/\(target.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? target)/\(lun)"
    }
}

/// A failure the tool reports as `livemount: MESSAGE` with exit status 1.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension MountInfo {
    /// One line of `livemount mounts`.
    var line: String {
        let place = state == "mounted" ? "\(target) LUN \(lun)" : "(unmounted, overlay kept)"
        return "\(place)  \(vm)@\(backupID)/\(disk)  \(readOnly ? "ro" : "rw")  \(origin)  mount \(id)"
    }
}

// MARK: - Commands

/// `livemount mount BACKUP ...` (the default) and `livemount mount status`.
struct MountCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Live-mount a backup disk as a LUN of a running target, or show a mount's status.",
        subcommands: [MountBackupCommand.self, MountStatusCommand.self],
        defaultSubcommand: MountBackupCommand.self)
}

/// `livemount mount [add] BACKUP --target IQN [--lun N] [--disk NAME] [--read-only] [--profile P] [--no-prefetch]
/// [--record-boot SECONDS] [--relocate-to URL]`.
struct MountBackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Live-mount a backup disk as a LUN of a running target (the default of `livemount mount`).",
        discussion: """
            BACKUP is VM (its latest backup) or VM@ID. Guest writes go to a persistent overlay; the backup is
            never changed. The daemon remembers the mount across restarts. An overlay kept by an earlier
            unmount of the same backup disk is resumed.
            """)

    @OptionGroup var daemon: DaemonOptions

    @Argument(help: ArgumentHelp("VM or VM@ID.", valueName: "backup"))
    var backup: String

    @Option(help: ArgumentHelp("The disk of the backup (default: its first disk).", valueName: "name"))
    var disk: String?

    @Option(help: ArgumentHelp("The target to add the LUN to.", valueName: "iqn"))
    var target: String

    @Option(help: ArgumentHelp("LUN number (default: the lowest free one).", valueName: "n"))
    var lun: UInt64?

    @Flag(name: .customLong("read-only"), help: "Serve it read-only (no overlay).")
    var readOnly = false

    @Option(help: ArgumentHelp("Profile for its traces and prefetch plan (default: the VM's name).", valueName: "name"))
    var profile: String?

    @Flag(name: .customLong("no-prefetch"), help: "Do not follow the profile's prefetch plan.")
    var noPrefetch = false

    @Option(
        name: .customLong("record-boot"),
        help: ArgumentHelp("Record the first SECONDS of every boot as a trace of the profile.", valueName: "seconds"))
    var recordBoot: Int?

    @Option(
        name: .customLong("relocate-to"),
        help: ArgumentHelp(
            "Once mounted, relocate it to this primary LUN (see `livemount relocate`): /path, file:///path or "
                + "iscsi://host[:port]/IQN/LUN.",
            valueName: "url"))
    var relocateTo: String?

    func validate() throws {
        if relocateTo?.isEmpty == true { throw ValidationError("--relocate-to: a destination URL must not be empty") }
        if let recordBoot, !(1...3600).contains(recordBoot) {
            throw ValidationError("--record-boot \(recordBoot): expected seconds, 1-3600")
        }
        if profile?.isEmpty == true { throw ValidationError("--profile: a profile name must not be empty") }
    }

    func run() async throws {
        let data = try JSONEncoder().encode(
            MountRequest(
                backup: backup, disk: disk, target: target, lun: lun, readOnly: readOnly, profile: profile,
                prefetch: noPrefetch ? false : nil, recordBootSeconds: recordBoot, relocateTo: relocateTo))
        let answer = try await daemon.call("POST", "/v1/mounts", body: Array(data))
        let mount = try JSONDecoder().decode(MountInfo.self, from: Data(answer))
        print("mounted \(mount.vm)@\(mount.backupID)/\(mount.disk) as LUN \(mount.lun) of \(mount.target)")
        if let relocateTo {
            print("relocating it to \(relocateTo) (`livemount relocate status \(mount.target)/\(mount.lun) --watch`)")
        }
    }
}

/// `livemount mount status --target IQN --lun N`: recording and prefetch figures.
struct MountStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show one live mount: its profile, recording, and prefetch figures.")

    @OptionGroup var daemon: DaemonOptions

    @Option(help: ArgumentHelp("The target.", valueName: "iqn"))
    var target: String

    @Option(help: ArgumentHelp("The LUN.", valueName: "n"))
    var lun: UInt64

    @Flag(help: "Print the daemon's JSON.")
    var json = false

    func run() async throws {
        let answer = try await daemon.call("GET", DaemonOptions.mountPath(target: target, lun: lun))
        if json {
            print(String(decoding: answer, as: UTF8.self))
            return
        }
        let status = try JSONDecoder().decode(MountStatusInfo.self, from: Data(answer))
        print(status.mount.line)
        print("profile: \(status.profile)  prefetch: \(status.prefetchEnabled ? "on" : "off")  "
            + "record boots: \(status.recordBootSeconds > 0 ? "first \(status.recordBootSeconds) s" : "off")")
        if let recording = status.recording {
            print("recording: \(recording.reads) reads into profile \(recording.profile)"
                + (recording.trace.map { " (trace \($0))" } ?? "")
                + (recording.limitSeconds.map { ", stops after \($0) s" } ?? ""))
        }
        guard let p = status.prefetch else {
            print("prefetch: no plan followed")
            return
        }
        let mib = { (bytes: UInt64) in String(format: "%.1f MiB", Double(bytes) / 1_048_576) }
        print("plan: \(p.planEntries) extents, \(mib(p.planBytes)); \(p.phase), at extent \(p.position)")
        print("pre-staged: \(mib(p.prestagedBytes)) in \(String(format: "%.2f", p.prestageSeconds)) s"
            + (p.filesStaged > 0 ? ", \(p.filesStaged) chunks of guest files" : ""))
        for problem in p.fileProblems { print("  guest file: \(problem)") }
        print("staged \(mib(p.stagedBytes)), used \(mib(p.usedBytes)); guest hits \(mib(p.hitBytes)), "
            + "misses \(mib(p.missBytes)), warm \(mib(p.warmBytes))")
        print(String(format: "precision %.3f  recall %.3f  lead time median %.2f s (p10 %.2f s)",
            p.precision, p.recall, p.leadTimeMedian, p.leadTimeP10))
    }
}

/// `livemount unmount --target IQN --lun N [--discard-overlay]`.
struct UnmountCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unmount",
        abstract: "Remove a live-mounted LUN; its overlay is kept unless --discard-overlay.")

    @OptionGroup var daemon: DaemonOptions

    @Option(help: ArgumentHelp("The target.", valueName: "iqn"))
    var target: String

    @Option(help: ArgumentHelp("The LUN.", valueName: "n"))
    var lun: UInt64

    @Flag(name: .customLong("discard-overlay"), help: "Delete the guest's writes instead of keeping them.")
    var discardOverlay = false

    func run() async throws {
        let path = DaemonOptions.mountPath(target: target, lun: lun) + "?overlay=\(discardOverlay ? "discard" : "keep")"
        _ = try await daemon.call("DELETE", path)
        print("unmounted LUN \(lun) of \(target) (overlay \(discardOverlay ? "discarded" : "kept"))")
    }
}

/// `livemount mounts`.
struct MountsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mounts", abstract: "List live mounts and kept overlays.")

    @OptionGroup var daemon: DaemonOptions

    @Flag(help: "Print the daemon's JSON.")
    var json = false

    func run() async throws {
        let answer = try await daemon.call("GET", "/v1/mounts")
        if json {
            print(String(decoding: answer, as: UTF8.self))
            return
        }
        let mounts = try JSONDecoder().decode([MountInfo].self, from: Data(answer))
        if mounts.isEmpty { print("no live mounts") }
        for mount in mounts { print(mount.line) }
    }
}

/// `livemount status`.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show the daemon's targets, mounts and cache.")

    @OptionGroup var daemon: DaemonOptions

    @Flag(help: "Print the daemon's JSON.")
    var json = false

    func run() async throws {
        let answer = try await daemon.call("GET", "/v1/status")
        if json {
            print(String(decoding: answer, as: UTF8.self))
            return
        }
        let status = try JSONDecoder().decode(StatusInfo.self, from: Data(answer))
        print("sessions: \(status.sessions)")
        for target in status.targets {
            print("target \(target.name): LUNs \(target.luns.map(String.init).joined(separator: ", "))")
            for usage in target.usage ?? [] {
                let last = usage.lastAccess.map { at in
                    "last access \(at)" + (usage.idleSeconds.map { String(format: " (idle %.0f s)", $0) } ?? "")
                }
                print("  LUN \(usage.lun): \(usage.reads) reads, \(usage.writes) writes, \(last ?? "not accessed yet")")
            }
        }
        for mount in status.mounts { print("  " + mount.line) }
        for placeholder in status.placeholders ?? [] { print("  archived: " + placeholder.line) }
        for relocation in status.relocations ?? [] {
            print("  relocation \(relocation.target)/\(relocation.lun): " + RelocationProgressFormat.line(relocation))
        }
        for mount in status.prefetch ?? [] {
            let p = mount.statistics
            print(
                String(
                    format: "  prefetch %@/%llu: %@, %@ staged, precision %.3f, recall %.3f", mount.target, mount.lun,
                    p.phase, RelocationProgressFormat.bytes(p.stagedBytes), p.precision, p.recall))
        }
        if let cache = status.cache {
            let total = cache.hits + cache.misses
            let rate = total == 0 ? 0 : Double(cache.hits) * 100 / Double(total)
            print(
                String(
                    format: "cache: %d/%d slots, hit rate %.1f%% (%llu hits, %llu misses), %llu fetches, %.1f MiB fetched, %llu evictions",
                    cache.slotsUsed, cache.slotCount, rate, cache.hits, cache.misses, cache.fetches,
                    Double(cache.bytesFetched) / 1_048_576, cache.evictions))
        }
    }
}
