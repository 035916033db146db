import ArgumentParser
import ControlPlane
import Foundation

// `livemount archive ...`: archive LUNs on primary storage to placeholders, list them, recall them, and see
// what the idle policy would archive (issue 6, Archive and recall).

/// `livemount archive lun|list|recall|candidates`.
struct ArchiveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "archive",
        abstract: "Archive idle LUNs to placeholders that recall themselves when accessed.",
        discussion: """
            An archived LUN is backed up into the repository and its file (or block device) released; initiators \
            still see the same LUN. Its first read or write recalls it: it is served at once as a live mount of \
            the backup and relocated back to its path in the background.
            """,
        subcommands: [
            ArchiveLUNCommand.self, ArchiveListCommand.self, ArchiveRecallCommand.self,
            ArchiveCandidatesCommand.self,
        ])
}

extension DaemonOptions {
    static func encoded(_ target: String) -> String {
        target.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/")))
            ?? target
    }
}

extension PlaceholderInfo {
    /// One line of `livemount archive list`.
    var line: String {
        var text =
            "\(target) LUN \(lun)  \(state)  \(formatBytes(sizeBytes))  \(path)  backup \(vm)@\(backupID)/\(disk)  archived \(archivedAt)"
        if let phase = relocationPhase, let progress = relocationProgress {
            text += String(format: "  relocation %@ %.1f%%", phase, progress * 100)
        }
        return text
    }
}

/// `livemount archive lun TARGET LUN`.
struct ArchiveLUNCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lun", abstract: "Archive one LUN now (it should be idle: a write during the backup abandons it).")

    @OptionGroup var daemon: DaemonOptions

    @Argument(help: ArgumentHelp("The target.", valueName: "iqn"))
    var target: String

    @Argument(help: ArgumentHelp("The LUN.", valueName: "n"))
    var lun: UInt64

    @Flag(help: "Print the daemon's JSON.")
    var json = false

    func run() async throws {
        let answer = try await daemon.call("POST", "/v1/targets/\(DaemonOptions.encoded(target))/luns/\(lun)/archive")
        if json {
            print(String(decoding: answer, as: UTF8.self))
            return
        }
        let info = try JSONDecoder().decode(PlaceholderInfo.self, from: Data(answer))
        print("archived LUN \(lun) of \(target) (\(formatBytes(info.sizeBytes))) to backup \(info.vm)@\(info.backupID); released \(info.path)")
    }
}

/// `livemount archive list`.
struct ArchiveListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List archived LUNs and recalls.")

    @OptionGroup var daemon: DaemonOptions

    @Flag(help: "Print the daemon's JSON.")
    var json = false

    func run() async throws {
        let answer = try await daemon.call("GET", "/v1/placeholders")
        if json {
            print(String(decoding: answer, as: UTF8.self))
            return
        }
        let list = try JSONDecoder().decode([PlaceholderInfo].self, from: Data(answer))
        if list.isEmpty { print("no archived LUNs") }
        for info in list { print(info.line) }
    }
}

/// `livemount archive recall TARGET LUN`.
struct ArchiveRecallCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recall", abstract: "Recall an archived LUN now, as its first access would.")

    @OptionGroup var daemon: DaemonOptions

    @Argument(help: ArgumentHelp("The target.", valueName: "iqn"))
    var target: String

    @Argument(help: ArgumentHelp("The LUN.", valueName: "n"))
    var lun: UInt64

    func run() async throws {
        let answer = try await daemon.call(
            "POST", "/v1/placeholders/\(DaemonOptions.encoded(target))/\(lun)/recall")
        let info = try JSONDecoder().decode(PlaceholderInfo.self, from: Data(answer))
        print("recalling LUN \(lun) of \(target): served from backup \(info.vm)@\(info.backupID), relocating back to \(info.path)")
    }
}

/// `livemount archive candidates [--idle SECONDS]`: the policy's dry run.
struct ArchiveCandidatesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "candidates",
        abstract: "List what the archive policy would archive now (a dry run: nothing is archived).")

    @OptionGroup var daemon: DaemonOptions

    @Option(help: ArgumentHelp("Idle time to choose by (default: [archive] idle_seconds).", valueName: "seconds"))
    var idle: Int?

    @Flag(help: "Print the daemon's JSON.")
    var json = false

    func validate() throws {
        if let idle, idle < 0 { throw ValidationError("--idle: \(idle) must not be negative") }
    }

    func run() async throws {
        let answer = try await daemon.call("GET", "/v1/archive/candidates" + (idle.map { "?idle=\($0)" } ?? ""))
        if json {
            print(String(decoding: answer, as: UTF8.self))
            return
        }
        let result = try JSONDecoder().decode(ArchiveCandidates.self, from: Data(answer))
        print(
            "LUNs idle at least \(result.idleSeconds) s"
                + (result.policyEnabled ? " (the policy archives them by itself)" : " (policy off: dry run only)"))
        if result.candidates.isEmpty { print("none") }
        for c in result.candidates {
            print(
                String(
                    format: "%@ LUN %llu  idle %.0f s  %@  %@  %llu reads, %llu writes", c.target, c.lun, c.idleSeconds,
                    formatBytes(c.sizeBytes), c.path, c.reads, c.writes))
        }
    }
}
