import ArgumentParser
import ControlPlane
import Foundation

// MARK: - livemount target ...

/// `livemount target list|show|add|remove|acl|chap`: targets of a running daemon, changed without a restart.
struct TargetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "target",
        abstract: "List, add and remove targets of a running daemon; change their ACL and CHAP.",
        discussion: """
            Changes apply to new logins and discovery at once; sessions already logged in go on
            undisturbed. The daemon keeps them in STATE_DIR/control.sqlite and serves them again
            after a restart.
            """,
        subcommands: [
            TargetListCommand.self, TargetShowCommand.self, TargetAddCommand.self, TargetRemoveCommand.self,
            TargetACLCommand.self, TargetCHAPCommand.self,
        ])
}

extension DaemonOptions {
    /// `/v1/targets/NAME[/rest...]`, each segment percent-encoded.
    static func targetPath(_ name: String, _ rest: [String] = []) -> String {
        let encode = { (segment: String) in
            segment.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(["/"])) ?? segment
        }
        return (["/v1/targets", encode(name)] + rest.map(encode)).joined(separator: "/")
    }

    /// Sends `body` (if any) as JSON and decodes the answer as `T`.
    func call<T: Decodable>(
        _ method: String, _ path: String, _ body: (some Encodable)? = nil as String?, answer: T.Type
    )
        async throws -> T
    {
        let data = try await call(method, path, body: try body.map { Array(try JSONEncoder().encode($0)) } ?? [])
        return try JSONDecoder().decode(T.self, from: Data(data))
    }

    /// GETs `path` and decodes it as `T`; with `json`, prints the daemon's JSON instead and returns nil.
    func get<T: Decodable>(_ path: String, as: T.Type, json: Bool) async throws -> T? {
        let answer = try await call("GET", path)
        guard !json else {
            print(String(decoding: answer, as: UTF8.self))
            return nil
        }
        return try JSONDecoder().decode(T.self, from: Data(answer))
    }
}

/// The daemon's socket and the target a `livemount target` command is about.
struct TargetOptions: ParsableArguments {
    @OptionGroup var daemon: DaemonOptions

    @Argument(help: ArgumentHelp("The target's iSCSI name (iqn./eui./naa., RFC 7143 §4.2.7).", valueName: "iqn"))
    var name: String

    /// `/v1/targets/NAME[/rest...]`.
    func path(_ rest: String...) -> String { DaemonOptions.targetPath(name, rest) }
}

/// `USER:SECRET` (the last ':' separates the secret, so a user name may contain ':').
func parseCredentials(_ text: String, option: String) throws -> CHAPSecret {
    guard let colon = text.lastIndex(of: ":"), colon != text.startIndex else {
        throw ValidationError("\(option): expected USER:SECRET")
    }
    return CHAPSecret(user: String(text[..<colon]), secret: String(text[text.index(after: colon)...]))
}

extension TargetInfo {
    /// `livemount target show`'s lines (and one block of `target list`).
    var lines: [String] {
        var lines = ["\(name)" + (alias.map { " (\($0))" } ?? "") + "  \(origin)  sessions \(sessions)"]
        lines.append(
            "  ACL: " + (allowedInitiators.isEmpty ? "any initiator" : allowedInitiators.joined(separator: ", ")))
        let chap = chapUser.map { "user \($0)" + (mutualChapUser.map { ", mutual as \($0)" } ?? "") } ?? "none"
        lines.append("  CHAP: \(chap)")
        if luns.isEmpty { lines.append("  no LUNs") }
        for lun in luns { lines.append("  " + lun.line) }
        return lines
    }
}

extension LUNInfo {
    /// `LUN 0  image /srv/disk.img  1.0 GiB (512-byte blocks)  rw  api` (MiB below 1 GiB).
    var line: String {
        let size =
            sizeBytes >= 1 << 30
            ? String(format: "%.1f GiB", Double(sizeBytes) / Double(1 << 30))
            : String(format: "%.1f MiB", Double(sizeBytes) / Double(1 << 20))
        return "LUN \(lun)  \(kind)\(path.map { " \($0)" } ?? "")  \(size) (\(blockSize)-byte blocks)  "
            + "\(readOnly ? "ro" : "rw")  \(origin)"
    }
}

/// `livemount target list`.
struct TargetListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List the targets: LUNs, ACL, CHAP user, sessions.")

    @OptionGroup var daemon: DaemonOptions

    @Flag(help: "Print the daemon's JSON.")
    var json = false

    func run() async throws {
        guard let targets = try await daemon.get("/v1/targets", as: [TargetInfo].self, json: json) else { return }
        if targets.isEmpty { print("no targets") }
        for target in targets { print(target.lines.joined(separator: "\n")) }
    }
}

/// `livemount target show NAME`.
struct TargetShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one target.")

    @OptionGroup var target: TargetOptions

    @Flag(help: "Print the daemon's JSON.")
    var json = false

    func run() async throws {
        guard let info = try await target.daemon.get(target.path(), as: TargetInfo.self, json: json) else { return }
        print(info.lines.joined(separator: "\n"))
    }
}

/// `livemount target add NAME [--alias TEXT] [--allow IQN]... [--chap USER:SECRET [--mutual-chap USER:SECRET]]`.
struct TargetAddCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Serve a new target (add LUNs with `livemount lun add` or `livemount mount`).")

    @OptionGroup var target: TargetOptions

    @Option(help: ArgumentHelp("The target's alias (TargetAlias).", valueName: "text"))
    var alias: String?

    @Option(help: ArgumentHelp("Only this initiator may log in; repeatable (default: any).", valueName: "iqn"))
    var allow: [String] = []

    @Option(help: ArgumentHelp("Require one-way CHAP (secret 12-255 bytes).", valueName: "user:secret"))
    var chap: String?

    @Option(
        name: .customLong("mutual-chap"),
        help: ArgumentHelp("Credentials the target proves to the initiator (needs --chap).", valueName: "user:secret"))
    var mutualChap: String?

    func run() async throws {
        let request = TargetCreateRequest(
            name: target.name, alias: alias, allowedInitiators: allow.isEmpty ? nil : allow,
            chap: try chap.map { try parseCredentials($0, option: "--chap") },
            mutualChap: try mutualChap.map { try parseCredentials($0, option: "--mutual-chap") })
        let info = try await target.daemon.call("POST", "/v1/targets", request, answer: TargetInfo.self)
        print("added target \(info.name)")
    }
}

/// `livemount target remove NAME [--force]`.
struct TargetRemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Stop serving a target added through the API (it must have no LUNs).",
        discussion: "Refused while sessions are logged in to it, unless --force, which ends them.")

    @OptionGroup var target: TargetOptions

    @Flag(help: "End the sessions logged in to it.")
    var force = false

    func run() async throws {
        let info = try await target.daemon.call(
            "DELETE", target.path() + (force ? "?force=true" : ""), answer: TargetInfo.self)
        let ended = info.sessions == 0 ? "" : " (ended \(info.sessions) session\(info.sessions == 1 ? "" : "s"))"
        print("removed target \(info.name)\(ended)")
    }
}

// MARK: - livemount target acl ...

/// `livemount target acl add|remove|set`.
struct TargetACLCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "acl", abstract: "Change which initiators may log in to a target.",
        subcommands: [TargetACLAddCommand.self, TargetACLRemoveCommand.self, TargetACLSetCommand.self])
}

/// Prints a target's ACL after a change.
private func printACL(_ target: TargetInfo) {
    let acl = target.allowedInitiators.isEmpty ? "any initiator" : target.allowedInitiators.joined(separator: ", ")
    print("\(target.name) ACL: \(acl)")
}

struct TargetACLAddCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "add", abstract: "Allow one more initiator.")

    @OptionGroup var target: TargetOptions

    @Argument(help: ArgumentHelp("The initiator's iSCSI name.", valueName: "initiator"))
    var initiator: String

    func run() async throws {
        printACL(
            try await target.daemon.call(
                "POST", target.path("acl"), ACLEntryRequest(initiator: initiator), answer: TargetInfo.self))
    }
}

struct TargetACLRemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove", abstract: "Stop allowing an initiator (not the last one: use `set --any`).")

    @OptionGroup var target: TargetOptions

    @Argument(help: ArgumentHelp("The initiator's iSCSI name.", valueName: "initiator"))
    var initiator: String

    func run() async throws {
        printACL(try await target.daemon.call("DELETE", target.path("acl", initiator), answer: TargetInfo.self))
    }
}

struct TargetACLSetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set", abstract: "Replace the ACL: only these initiators, or --any.")

    @OptionGroup var target: TargetOptions

    @Argument(help: ArgumentHelp("The initiators allowed to log in.", valueName: "initiator"))
    var initiators: [String] = []

    @Flag(help: "Let any initiator log in (an empty ACL).")
    var any = false

    func validate() throws {
        if any && !initiators.isEmpty { throw ValidationError("--any cannot be combined with initiator names") }
        if !any && initiators.isEmpty {
            throw ValidationError("name the initiators allowed to log in, or --any to allow every initiator")
        }
    }

    func run() async throws {
        printACL(
            try await target.daemon.call(
                "PUT", target.path("acl"), ACLRequest(allowedInitiators: initiators), answer: TargetInfo.self))
    }
}

// MARK: - livemount target chap ...

/// `livemount target chap set|clear`.
struct TargetCHAPCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chap", abstract: "Require CHAP (and mutual CHAP) on a target, or stop requiring it.",
        subcommands: [TargetCHAPSetCommand.self, TargetCHAPClearCommand.self])
}

struct TargetCHAPSetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set", abstract: "Require one-way CHAP, and mutual CHAP with --mutual.")

    @OptionGroup var target: TargetOptions

    @Argument(help: ArgumentHelp("What initiators must prove (secret 12-255 bytes).", valueName: "user:secret"))
    var credentials: String

    @Option(help: ArgumentHelp("What the target proves to initiators (mutual CHAP).", valueName: "user:secret"))
    var mutual: String?

    func run() async throws {
        let chap = try parseCredentials(credentials, option: "USER:SECRET")
        let mutualChap = try mutual.map { try parseCredentials($0, option: "--mutual") }
        let info = try await target.daemon.call(
            "PUT", target.path("chap"),
            CHAPRequest(
                user: chap.user, secret: chap.secret, mutualUser: mutualChap?.user, mutualSecret: mutualChap?.secret),
            answer: TargetInfo.self)
        print(
            "\(info.name) requires CHAP as \(info.chapUser ?? "?")"
                + (info.mutualChapUser.map { ", proves itself as \($0)" } ?? ""))
    }
}

struct TargetCHAPClearCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clear", abstract: "Stop requiring CHAP (and mutual CHAP).")

    @OptionGroup var target: TargetOptions

    func run() async throws {
        let info = try await target.daemon.call("DELETE", target.path("chap"), answer: TargetInfo.self)
        print("\(info.name) requires no CHAP")
    }
}

// MARK: - livemount lun add|remove

/// `livemount lun add --target IQN PATH [--lun N] [--read-only] [--block-size 512|4096] [--no-direct]`.
struct LUNAddCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Serve a raw image file or block device as a LUN of a running target.",
        discussion: """
            Running sessions see the new LUN (REPORTED LUNS DATA HAS CHANGED). The daemon keeps it
            and opens it again after a restart.
            """)

    @OptionGroup var daemon: DaemonOptions

    @Option(help: ArgumentHelp("The target to add the LUN to.", valueName: "iqn"))
    var target: String

    @Argument(help: ArgumentHelp("Absolute path of the image file or block device.", valueName: "path"))
    var path: String

    @Option(help: ArgumentHelp("LUN number (default: the lowest free one).", valueName: "n"))
    var lun: UInt64?

    @Flag(name: .customLong("read-only"), help: "Serve it write-protected (opened read-only).")
    var readOnly = false

    @Option(name: .customLong("block-size"), help: ArgumentHelp("Logical block size: 512 or 4096.", valueName: "bytes"))
    var blockSize: Int?

    @Flag(name: .customLong("no-direct"), help: "Do not open it with O_DIRECT (for tmpfs).")
    var noDirect = false

    func run() async throws {
        let request = LUNCreateRequest(
            lun: lun, path: path, readOnly: readOnly, blockSize: blockSize, direct: noDirect ? false : nil)
        let info = try await daemon.call(
            "POST", DaemonOptions.targetPath(target, ["luns"]), request, answer: LUNInfo.self)
        print("added LUN \(info.lun) to \(target): \(info.line)")
    }
}

/// `livemount lun remove --target IQN --lun N`.
struct LUNRemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Remove a LUN added with `livemount lun add` (a live mount: `livemount unmount`).")

    @OptionGroup var daemon: DaemonOptions

    @Option(help: ArgumentHelp("The target.", valueName: "iqn"))
    var target: String

    @Option(help: ArgumentHelp("The LUN.", valueName: "n"))
    var lun: UInt64

    func run() async throws {
        _ = try await daemon.call("DELETE", DaemonOptions.targetPath(target, ["luns", String(lun)]))
        print("removed LUN \(lun) of \(target)")
    }
}
