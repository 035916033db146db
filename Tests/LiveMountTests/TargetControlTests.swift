import BlockDevice
import ControlPlane
import Foundation
import Testing

/// Targets, raw LUNs, ACLs and CHAP changed through the control API and `livemount target|lun` against a running
/// livemountd (raw image LUNs, no repository), and what a restart brings back.
@Suite("livemountd targets, LUNs, ACLs and CHAP through the control API", .serialized)
struct TargetControlTests {
    static let targetA = "iqn.2026-11.org.livemount:control-a"
    static let targetB = "iqn.2026-11.org.livemount:control-b"
    static let targetC = "iqn.2026-11.org.livemount:control-c"
    static let targetD = "iqn.2026-11.org.livemount:control-d"
    static let reader = "iqn.2026-11.org.livemount:reader-1"
    static let second = "iqn.2026-11.org.livemount:reader-2"
    static let stranger = "iqn.2026-11.org.livemount:stranger"

    /// A scratch directory with image files of known content and the daemon's state directory.
    struct Setup {
        let scratch: Scratch
        var images: [String: [UInt8]] = [:]

        var stateDirectory: String { scratch.path + "/state" }
        var socket: String { stateDirectory + "/control.sock" }

        init() throws {
            scratch = try Scratch()
            for (name, blocks, seed) in [("a", 8192, 1), ("b", 4096, 2), ("c", 2048, 3), ("d", 2048, 4)] {
                let bytes = pattern(blocks * 512, seed: UInt64(seed))
                _ = FileManager.default.createFile(atPath: path(name), contents: Data(bytes))
                images[name] = bytes
            }
        }

        func path(_ image: String) -> String { scratch.path + "/\(image).img" }

        /// Serves target A with image a as LUN 0 (O_DIRECT off: the scratch directory may be tmpfs).
        var arguments: [String] {
            [
                "--target", TargetControlTests.targetA, "--lun", "0=\(path("a")),direct=off", "--state-dir",
                stateDirectory,
            ]
        }
    }

    /// Runs `livemount ARGS --socket SOCKET`.
    static func cli(_ setup: Setup, _ arguments: [String]) throws -> (status: Int32, output: String) {
        try DaemonTests().runCLI(arguments + ["--socket", setup.socket])
    }

    /// Runs a command that must succeed; returns its output.
    @discardableResult
    static func ok(_ setup: Setup, _ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) throws
        -> String
    {
        let run = try cli(setup, arguments)
        #expect(
            run.status == 0, "livemount \(arguments.joined(separator: " ")): \(run.output)",
            sourceLocation: sourceLocation)
        return run.output
    }

    /// Runs a command that must fail with a message containing `message`.
    static func fails(
        _ setup: Setup, _ arguments: [String], _ message: String, sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let run = try cli(setup, arguments)
        #expect(
            run.status != 0, "livemount \(arguments.joined(separator: " ")) succeeded", sourceLocation: sourceLocation)
        #expect(
            run.output.contains(message), "livemount \(arguments.joined(separator: " ")): \(run.output)",
            sourceLocation: sourceLocation)
    }

    /// `livemount target show NAME --json`.
    static func show(_ setup: Setup, _ name: String) throws -> TargetInfo {
        let output = try ok(setup, ["target", "show", name, "--json"])
        return try JSONDecoder().decode(TargetInfo.self, from: Data(output.utf8))
    }

    static func url(_ daemon: DaemonTests.Daemon, _ target: String, lun: UInt64 = 0) -> String {
        "iscsi://127.0.0.1:\(daemon.port)/\(target)/\(lun)"
    }

    /// Logs in as `initiator` (with CHAP, and mutual CHAP, when given) and reads the whole LUN; the error when the
    /// login or a read fails.
    static func read(
        _ url: String, initiator: String, chap: (user: String, secret: String)? = nil,
        mutual: (user: String, secret: String)? = nil
    ) async throws -> Result<[UInt8], ISCSIClientError> {
        try await onThread {
            let client = ISCSIClient(timeoutSeconds: 30)
            do {
                try client.connect(url: url, initiatorName: initiator, chap: chap, mutualChap: mutual)
                defer { try? client.logout() }
                return .success(try Self.readAll(client))
            } catch let error as ISCSIClientError {
                return .failure(error)
            }
        }
    }

    /// Every block of the client's LUN, 256 at a time.
    static func readAll(_ client: ISCSIClient) throws(ISCSIClientError) -> [UInt8] {
        let capacity = try client.readCapacity16()
        var bytes: [UInt8] = []
        var lba: UInt64 = 0
        while lba < capacity.blockCount {
            let count = Int(min(256, capacity.blockCount - lba))
            bytes += try client.read(lba: lba, blocks: count)
            lba += UInt64(count)
        }
        return bytes
    }

    // MARK: - Tests

    @Test("every target and lun command, its errors, and a restart that serves the same targets, LUNs, ACLs and CHAP")
    func commandsAndRestart() async throws {
        let setup = try Setup()
        var daemon = try DaemonTests.Daemon(arguments: setup.arguments)
        defer { daemon.stop() }
        let (a, b) = (Self.targetA, Self.targetB)

        let listed = try Self.ok(setup, ["target", "list"])
        #expect(listed.contains("\(a)  configuration  sessions 0"), "\(listed)")
        #expect(listed.contains("LUN 0  image \(setup.path("a"))  4.0 MiB (512-byte blocks)  rw  configuration"))

        // Targets: added, refused with the reason.
        try Self.ok(
            setup, ["target", "add", b, "--alias", "bee", "--allow", Self.reader, "--chap", "alice:correct-horse-42"])
        try Self.fails(setup, ["target", "add", b], "target \(b) exists")
        try Self.fails(
            setup, ["target", "add", "iqn.2026-11.org.livemount:CAPS"],
            "name: \"iqn.2026-11.org.livemount:CAPS\" is not a valid")
        try Self.fails(setup, ["target", "add", "target-b"], "it must start with iqn., eui. or naa.")
        try Self.fails(
            setup, ["target", "add", Self.targetC, "--chap", "alice:short"],
            "chap.secret: 5 bytes is shorter than the 12 bytes")
        try Self.fails(setup, ["target", "add", Self.targetC, "--chap", "alice"], "--chap: expected USER:SECRET")
        try Self.fails(
            setup, ["target", "add", Self.targetC, "--mutual-chap", "tgt:mutual-secret-22"],
            "mutual CHAP requires one-way CHAP")
        try Self.fails(
            setup, ["target", "add", Self.targetC, "--allow", "nobody"],
            "allowedInitiators[0]: \"nobody\" is not a valid")
        try Self.ok(setup, ["target", "add", Self.targetC])
        #expect(try Self.ok(setup, ["target", "remove", Self.targetC]).contains("removed target \(Self.targetC)"))
        try Self.fails(setup, ["target", "remove", Self.targetC], "unknown target \(Self.targetC)")
        try Self.fails(setup, ["target", "remove", a], "comes from the configuration file")

        // Raw LUNs.
        let added = try Self.ok(setup, ["lun", "add", "--target", b, setup.path("b"), "--no-direct"])
        #expect(added.contains("added LUN 0 to \(b): LUN 0  image \(setup.path("b"))  2.0 MiB"), "\(added)")
        try Self.fails(
            setup, ["lun", "add", "--target", b, "--lun", "0", setup.path("c"), "--no-direct"],
            "LUN 0 of target \(b) is in use")
        try Self.fails(
            setup, ["lun", "add", "--target", "iqn.2026-11.org.livemount:nope", setup.path("c")],
            "unknown target iqn.2026-11.org.livemount:nope")
        try Self.fails(
            setup, ["lun", "add", "--target", b, setup.scratch.path + "/missing.img"],
            "path: file \(setup.scratch.path)/missing.img does not exist")
        try Self.fails(
            setup, ["lun", "add", "--target", b, "relative.img"], "path: \"relative.img\" must be an absolute path")
        try Self.fails(
            setup, ["lun", "add", "--target", b, setup.path("c"), "--block-size", "1024"],
            "blockSize: 1024 is not a supported block size")
        try Self.fails(
            setup, ["lun", "add", "--target", b, "--lun", "16384", setup.path("c")], "lun: 16384 out of range")
        try Self.fails(
            setup, ["lun", "add", "--target", b, setup.path("a"), "--no-direct"], "is served by LUN 0 of \(a)")
        try Self.fails(setup, ["lun", "remove", "--target", a, "--lun", "0"], "comes from the configuration file")
        try Self.fails(setup, ["lun", "remove", "--target", b, "--lun", "7"], "no LUN 7 on target \(b)")
        try Self.fails(setup, ["target", "remove", b], "target \(b) has LUN 0: remove or unmount it first")

        // ACL and CHAP.
        try Self.ok(setup, ["target", "acl", "add", b, Self.second])
        try Self.fails(setup, ["target", "acl", "add", b, Self.second], "\(Self.second) is already allowed")
        try Self.fails(
            setup, ["target", "acl", "remove", b, Self.stranger], "\(Self.stranger) is not in the ACL of \(b)")
        try Self.fails(
            setup, ["target", "acl", "set", b, "bad-name"], "allowedInitiators[0]: \"bad-name\" is not a valid")
        try Self.fails(setup, ["target", "acl", "set", b], "or --any")
        try Self.fails(
            setup, ["target", "acl", "add", "iqn.2026-11.org.livemount:nope", Self.second], "unknown target")
        try Self.ok(setup, ["target", "chap", "set", a, "bob:another-secret-1", "--mutual", "tgt:mutual-secret-22"])
        try Self.fails(
            setup, ["target", "chap", "set", a, "bob:same-secret-123", "--mutual", "tgt:same-secret-123"],
            "mutualSecret: must differ from the one-way CHAP secret")
        try Self.fails(setup, ["target", "chap", "set", b, "bob:"], "secret: must not be empty")

        // Four targets; D's LUN file goes away before the restart.
        try Self.ok(setup, ["target", "add", Self.targetD])
        // The last entry of an ACL cannot be removed: an empty ACL would let any initiator in.
        try Self.ok(setup, ["target", "acl", "set", Self.targetD, Self.reader, Self.second])
        #expect(
            try Self.ok(setup, ["target", "acl", "remove", Self.targetD, Self.second]).contains(": \(Self.reader)"))
        try Self.fails(
            setup, ["target", "acl", "remove", Self.targetD, Self.reader],
            "\(Self.reader) is the only initiator allowed to log in to \(Self.targetD)")
        try Self.ok(setup, ["target", "acl", "set", Self.targetD, "--any"])
        #expect(try Self.show(setup, Self.targetD).allowedInitiators.isEmpty)
        try Self.ok(
            setup,
            ["lun", "add", "--target", Self.targetD, "--lun", "3", setup.path("d"), "--no-direct", "--read-only"])
        let shown = try Self.ok(setup, ["target", "show", b, "--json"])
        #expect(!shown.contains("correct-horse-42"), "a CHAP secret in an answer: \(shown)")
        let before = try Self.show(setup, b)
        #expect(before.alias == "bee" && before.origin == "api" && before.chapUser == "alice")
        #expect(before.allowedInitiators == [Self.reader, Self.second])
        #expect(
            before.luns == [
                LUNInfo(
                    lun: 0, kind: "image", origin: "api", path: setup.path("b"), sizeBytes: 2 << 20, blockSize: 512,
                    readOnly: false)
            ])
        try Self.fails(setup, ["target", "show", "iqn.2026-11.org.livemount:nope"], "unknown target")
        #expect(
            try await Self.read(Self.url(daemon, b), initiator: Self.reader, chap: ("alice", "correct-horse-42"))
                == .success(setup.images["b"] ?? []))

        // A restart serves the same.
        daemon.stop()
        try FileManager.default.removeItem(atPath: setup.path("d"))
        daemon = try DaemonTests.Daemon(arguments: setup.arguments)
        var mode = stat()
        #expect(stat(setup.stateDirectory + "/control.sqlite", &mode) == 0 && mode.st_mode & 0o777 == 0o600)
        #expect(try Self.show(setup, b) == before)
        let afterA = try Self.show(setup, a)
        #expect(afterA.origin == "configuration" && afterA.chapUser == "bob" && afterA.mutualChapUser == "tgt")
        #expect(try Self.show(setup, Self.targetD).luns.isEmpty, "a LUN whose file is gone is skipped")
        let urlB = Self.url(daemon, b)
        #expect(
            try await Self.read(urlB, initiator: Self.second, chap: ("alice", "correct-horse-42"))
                == .success(setup.images["b"] ?? []))
        #expect(try await Self.read(urlB, initiator: Self.stranger, chap: ("alice", "correct-horse-42")).loginFailed)
        #expect(try await Self.read(urlB, initiator: Self.second).loginFailed, "CHAP still required")
        #expect(
            try await Self.read(Self.url(daemon, a), initiator: Self.reader).loginFailed, "CHAP on A still required")
        #expect(
            try await Self.read(
                Self.url(daemon, a), initiator: Self.reader, chap: ("bob", "another-secret-1"),
                mutual: ("tgt", "mutual-secret-22")) == .success(setup.images["a"] ?? []))

        // Removals are kept too.
        try Self.ok(setup, ["lun", "remove", "--target", b, "--lun", "0"])
        #expect(try Self.ok(setup, ["target", "remove", b]).contains("removed target \(b)"))
        try Self.ok(setup, ["lun", "remove", "--target", Self.targetD, "--lun", "3"])
        try Self.ok(setup, ["target", "chap", "clear", a])
        daemon.stop()
        _ = FileManager.default.createFile(atPath: setup.path("d"), contents: Data(setup.images["d"] ?? []))
        daemon = try DaemonTests.Daemon(arguments: setup.arguments)
        let names = try JSONDecoder().decode(
            [TargetInfo].self, from: Data(try Self.ok(setup, ["target", "list", "--json"]).utf8))
        #expect(names.map(\.name) == [a, Self.targetD])
        #expect(names.first?.chapUser == nil)
        #expect(names.last?.luns.isEmpty == true, "a forgotten LUN stays forgotten when its file comes back")
        #expect(try await Self.read(Self.url(daemon, a), initiator: Self.reader) == .success(setup.images["a"] ?? []))
    }

    @Test("a session on A reads on while B is added and removed and A's ACL and CHAP change; new logins follow")
    func sessionsUndisturbed() async throws {
        let setup = try Setup()
        let daemon = try DaemonTests.Daemon(arguments: setup.arguments)
        defer { daemon.stop() }
        let (a, b) = (Self.targetA, Self.targetB)
        let expected = setup.images["a"] ?? []
        let session = ISCSIClient(timeoutSeconds: 30)
        let urlA = Self.url(daemon, a)
        try await onThread { try session.connect(url: urlA, initiatorName: Self.reader) }
        let readA = { @Sendable () async throws -> [UInt8] in try await onThread { try Self.readAll(session) } }
        #expect(try await readA() == expected)

        // B comes and goes; a session on it holds the removal back until forced.
        try Self.ok(setup, ["target", "add", b])
        try Self.ok(setup, ["lun", "add", "--target", b, setup.path("b"), "--no-direct"])
        #expect(try await readA() == expected)
        let sessionB = ISCSIClient(timeoutSeconds: 30)
        let urlB = Self.url(daemon, b)
        try await onThread { try sessionB.connect(url: urlB, initiatorName: Self.second) }
        #expect(try await onThread { try Self.readAll(sessionB) } == setup.images["b"])
        try Self.ok(setup, ["lun", "remove", "--target", b, "--lun", "0"])
        #expect(try await readA() == expected)
        try Self.fails(setup, ["target", "remove", b], "target \(b) has 1 session logged in (force ends them)")
        #expect(try Self.ok(setup, ["target", "remove", b, "--force"]).contains("(ended 1 session)"))
        #expect(try await readA() == expected)
        #expect(try Self.show(setup, a).sessions == 1)

        // A's ACL no longer has this initiator: new logins from it are refused, its session reads on.
        try Self.ok(setup, ["target", "acl", "set", a, Self.second])
        #expect(try await Self.read(urlA, initiator: Self.reader).loginFailed)
        #expect(try await Self.read(urlA, initiator: Self.second) == .success(expected))
        #expect(try await readA() == expected)

        // CHAP from now on; the old session still reads.
        try Self.ok(setup, ["target", "chap", "set", a, "alice:correct-horse-42"])
        #expect(try await Self.read(urlA, initiator: Self.second).loginFailed)
        #expect(
            try await Self.read(urlA, initiator: Self.second, chap: ("alice", "correct-horse-42")) == .success(expected)
        )
        #expect(try await readA() == expected)

        // Back to open: any initiator, no CHAP.
        try Self.ok(setup, ["target", "acl", "set", a, "--any"])
        try Self.ok(setup, ["target", "chap", "clear", a])
        #expect(try await Self.read(urlA, initiator: Self.stranger) == .success(expected))
        try await onThread { try session.logout() }
    }

    @Test("a live mount on an API target: shown as a backup LUN, removed only by unmount, back after a restart")
    func mountOnAPITarget() async throws {
        let (fixture, arguments) = try await DaemonTests().prepare()
        let socket = fixture.scratch.path + "/daemon-state/control.sock"
        let b = Self.targetB
        func livemount(_ command: [String]) throws -> (status: Int32, output: String) {
            try DaemonTests().runCLI(command + ["--socket", socket])
        }
        var daemon = try DaemonTests.Daemon(arguments: arguments)
        defer { daemon.stop() }
        #expect(try livemount(["target", "add", b]).status == 0)
        let mounted = try livemount(["mount", "web01", "--target", b])
        #expect(mounted.output.contains("as LUN 0 of \(b)"), "\(mounted.output)")
        let removal = try livemount(["lun", "remove", "--target", b, "--lun", "0"])
        #expect(removal.status != 0)
        #expect(removal.output.contains("LUN 0 of \(b) is a live mount: use unmount"), "\(removal.output)")
        let refused = try livemount(["target", "remove", b])
        #expect(refused.output.contains("has LUN 0"), "\(refused.output)")
        let shown = try JSONDecoder().decode(
            TargetInfo.self, from: Data(try livemount(["target", "show", b, "--json"]).output.utf8))
        #expect(shown.luns.map(\.kind) == ["backup"] && shown.luns.map(\.origin) == ["api"])
        #expect(shown.luns.first?.sizeBytes == UInt64(fixture.disk.count) && shown.luns.first?.path == nil)

        daemon.stop()
        daemon = try DaemonTests.Daemon(arguments: arguments)
        #expect(
            try await readWholeLUN(url: Self.url(daemon, b)) == fixture.disk,
            "the mount on the API target came back with its target")
    }

    @Test("without a state directory the changing calls answer 409 and say why; reading works")
    func noStateDirectory() async throws {
        let setup = try Setup()
        let socket = setup.scratch.path + "/control.sock"
        let daemon = try DaemonTests.Daemon(
            arguments: [
                "--target", Self.targetA, "--lun", "0=\(setup.path("a")),direct=off", "--control-socket", socket,
            ])
        defer { daemon.stop() }
        let client = ControlClient(socketPath: socket)
        let list = try await client.send("GET", "/v1/targets")
        #expect(list.status == 200)
        #expect(try JSONDecoder().decode([TargetInfo].self, from: Data(list.body)).map(\.name) == [Self.targetA])
        let add = try await client.send("POST", "/v1/targets", body: Array(#"{"name":"\#(Self.targetB)"}"#.utf8))
        #expect(add.status == 409)
        #expect(String(decoding: add.body, as: UTF8.self).contains("needs a state directory"))
        let acl = try await client.send(
            "PUT", "/v1/targets/\(Self.targetA)/acl", body: Array(#"{"allowedInitiators":[]}"#.utf8))
        #expect(acl.status == 409)
        let unknown = try await client.send("PATCH", "/v1/targets/\(Self.targetA)")
        #expect(unknown.status == 404)
        let missing = try await client.send("GET", "/v1/targets/iqn.2026-11.org.livemount:nope")
        #expect(missing.status == 404)
    }
}

extension Result where Failure == ISCSIClientError {
    /// The login was refused (ACL, CHAP, unknown target).
    var loginFailed: Bool {
        if case .failure(let error) = self { return error.code == .loginFailed }
        return false
    }
}
