import BlockDevice
import ControlPlane
import Foundation
import Prefetch
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 6, acceptance 1: every `livemount` command against a running livemountd, with its error cases. (The
/// archive commands are toured in ArchiveDaemonTests, the TCP listener in DaemonTests.controlOverTCP.)
@Suite("every livemount command against a running daemon", .serialized)
struct CLITourTests {
    static let target = DaemonTests.target

    /// A repository with web01 (the sample disk), a running daemon serving it as LUN 0, and the paths around.
    struct Tour {
        let fixture: Fixture
        let daemon: DaemonTests.Daemon
        let arguments: [String]
        var repository: String { fixture.repositoryPath }
        var socket: String { fixture.scratch.path + "/daemon-state/control.sock" }
        var traces: String { fixture.scratch.path + "/daemon-state/traces.sqlite" }

        static func start(extra: [String] = []) async throws -> Tour {
            let fixture = try await Fixture.make()
            await fixture.cache.close()
            let arguments =
                [
                    "--target", CLITourTests.target, "--repo", fixture.repositoryPath,
                    "--cache", fixture.scratch.path + "/daemon-cache.img,64M",
                    "--state-dir", fixture.scratch.path + "/daemon-state", "--lun", "0=backup:web01",
                ] + extra
            return Tour(fixture: fixture, daemon: try DaemonTests.Daemon(arguments: arguments), arguments: arguments)
        }

        /// `livemount ARGS`; with `daemon`, `--socket SOCKET` is added.
        func run(_ arguments: [String], daemon: Bool = false) throws -> (status: Int32, output: String) {
            try runLivemountTool(arguments + (daemon ? ["--socket", socket] : []))
        }

        /// Runs and expects exit status 0 and every `contains` in the output.
        @discardableResult
        func ok(
            _ arguments: [String], daemon: Bool = false, contains: [String] = [],
            sourceLocation: SourceLocation = #_sourceLocation
        ) throws -> String {
            let result = try run(arguments, daemon: daemon)
            #expect(result.status == 0, "livemount \(arguments.joined(separator: " ")): \(result.output)", sourceLocation: sourceLocation)
            for text in contains {
                #expect(result.output.contains(text), "livemount \(arguments.joined(separator: " ")): \(result.output) lacks \(text)", sourceLocation: sourceLocation)
            }
            return result.output
        }

        /// Runs and expects a failure whose message contains `message`.
        func fails(
            _ arguments: [String], daemon: Bool = false, _ message: String, sourceLocation: SourceLocation = #_sourceLocation
        ) throws {
            let result = try run(arguments, daemon: daemon)
            #expect(result.status != 0, "livemount \(arguments.joined(separator: " ")) should fail: \(result.output)", sourceLocation: sourceLocation)
            #expect(result.output.contains(message), "livemount \(arguments.joined(separator: " ")): \(result.output) lacks \(message)", sourceLocation: sourceLocation)
        }

        func stop() { daemon.stop() }
    }

    @Test("backup create, list, show, verify, delete and gc, with a live mount holding a backup")
    func backups() async throws {
        let tour = try await Tour.start()
        defer { tour.stop() }
        let repo = ["--repo", tour.repository]
        let scratch = tour.fixture.scratch.path
        let image = scratch + "/disk0.img"
        let config = scratch + "/web01.vmx"

        let created = try tour.ok(
            ["backup", "create", "--vm", "web02", "--config", config, "--disk", "disk0=" + image] + repo,
            contains: ["web02"])
        #expect(created.contains("2"), "the second backup: \(created)")
        try tour.fails(["backup", "create", "--vm", "web03", "--config", scratch + "/none.vmx", "--disk", image] + repo, "none.vmx")
        try tour.fails(["backup", "create", "--vm", "web03", "--config", config, "--disk", scratch + "/none.img"] + repo, "none.img")
        try tour.fails(
            ["backup", "create", "--vm", "web03", "--config", config, "--disk", image, "--chunk-size", "1000"] + repo,
            "chunk")

        try tour.ok(["backup", "list"] + repo, contains: ["web01", "web02"])
        let only = try tour.ok(["backup", "list", "--vm", "web02"] + repo, contains: ["web02"])
        #expect(!only.contains("web01"), "\(only)")
        try tour.ok(["backup", "show", "2"] + repo, contains: ["web02", "disk0"])
        try tour.fails(["backup", "show", "99"] + repo, "99")
        try tour.fails(["backup", "list", "--repo", scratch + "/no-such-repo"], "no-such-repo")

        try tour.ok(["backup", "verify"] + repo)
        try tour.ok(["backup", "verify", "1"] + repo)
        try tour.fails(["backup", "verify", "99"] + repo, "99")

        // web01 is live-mounted by the daemon: held.
        try tour.fails(["backup", "delete", "1"] + repo, "held")
        try tour.ok(["backup", "delete", "2"] + repo)
        try tour.fails(["backup", "show", "2"] + repo, "2")
        try tour.ok(["backup", "gc"] + repo)
        // What the daemon serves is untouched by all this.
        #expect(try await readWholeLUN(url: tour.daemon.url(0)) == tour.fixture.disk)
    }

    @Test("mount add/status, mounts, unmount, status, lun read: successes and errors")
    func mounts() async throws {
        let tour = try await Tour.start()
        defer { tour.stop() }
        let t = Self.target
        try tour.ok(["mount", "add", "web01", "--target", t, "--lun", "3", "--read-only"], daemon: true, contains: ["LUN 3"])
        try tour.fails(["mount", "add", "web01", "--target", t, "--lun", "3"], daemon: true, "in use")
        try tour.fails(["mount", "add", "nosuchvm", "--target", t], daemon: true, "nosuchvm")
        try tour.fails(["mount", "add", "web01", "--target", "iqn.2026-11.org.nope:x"], daemon: true, "unknown target")
        try tour.fails(["mount", "add", "web01", "--target", t, "--relocate-to", "ftp://x"], daemon: true, "relocateTo")
        try tour.fails(["mount", "add", "web01", "--target", t, "--record-boot", "-4"], daemon: true, "record")

        try tour.ok(["mount", "status", "--target", t, "--lun", "3"], daemon: true, contains: ["web01"])
        try tour.fails(["mount", "status", "--target", t, "--lun", "9"], daemon: true, "no live mount on LUN 9")
        try tour.ok(["mounts"], daemon: true, contains: ["\(t) LUN 0", "\(t) LUN 3"])
        try tour.ok(["status"], daemon: true, contains: ["sessions:", "target \(t)", "cache:"])
        let json = try tour.ok(["status", "--json"], daemon: true)
        #expect((try? JSONDecoder().decode(StatusInfo.self, from: Data(json.utf8)))?.mounts.count == 2)

        let read = try tour.ok(["lun", "read", tour.daemon.url(3)])
        let digest = sha256Hex(tour.fixture.disk)
        #expect(read.contains(digest), "lun read prints the LUN's SHA-256: \(read)")
        try tour.fails(["lun", "read", "iscsi://127.0.0.1:\(tour.daemon.port)/\(t)/9"], "LOGICAL_UNIT_NOT_SUPPORTED")
        try tour.fails(["lun", "read", "http://x"], "iscsi://")

        try tour.ok(["unmount", "--target", t, "--lun", "3", "--discard-overlay"], daemon: true, contains: ["unmounted LUN 3"])
        try tour.fails(["unmount", "--target", t, "--lun", "3"], daemon: true, "no live mount on LUN 3")
        try tour.fails(["mounts", "--socket", tour.fixture.scratch.path + "/nothing.sock"], "cannot reach livemountd")
    }

    @Test("relocate start/status/pause/resume/cancel, and their errors")
    func relocations() async throws {
        let tour = try await Tour.start()
        defer { tour.stop() }
        let lun = "\(Self.target)/0"
        let destination = tour.fixture.scratch.path + "/primary.img"
        try tour.fails(["relocate", "status", lun], daemon: true, "no relocation")
        try tour.fails(["relocate", "pause", lun], daemon: true, "no relocation")
        try tour.fails(["relocate", "start", "\(Self.target)/7", "--to", destination], daemon: true, "no live mount on LUN 7")
        try tour.fails(["relocate", "start", lun, "--to", "ftp://x"], daemon: true, "ftp://x")
        try tour.fails(["relocate", "start", "not-a-mount", "--to", destination], daemon: true, "TARGET/LUN")
        try tour.fails(["relocate", "start", lun, "--to", destination, "--max-rate", "0"], daemon: true, "at least 1")

        // 1 MiB/s: the 16 MiB relocation lasts long enough to pause, resume and cancel it.
        try tour.ok(["relocate", "start", lun, "--to", destination, "--max-rate", "1"], daemon: true, contains: ["copying"])
        try tour.fails(["relocate", "start", lun, "--to", destination], daemon: true, "already")
        try tour.ok(["relocate", "pause", lun], daemon: true, contains: ["paused"])
        try tour.ok(["relocate", "status", lun], daemon: true, contains: ["paused"])
        try tour.ok(["relocate", "resume", lun], daemon: true)
        try tour.ok(["relocate", "status"], daemon: true, contains: [lun])
        try tour.ok(["relocate", "cancel", lun], daemon: true, contains: ["cancelled"])
        try tour.fails(["relocate", "resume", lun], daemon: true, "cancelled")
        #expect(try await readWholeLUN(url: tour.daemon.url(0)) == tour.fixture.disk, "still a live mount")

        // A new relocation runs to the end and switches over.
        try tour.ok(["relocate", "start", lun, "--to", destination, "--wait", "--interval", "0.2"], daemon: true, contains: ["completed"])
        let file = try Data(contentsOf: URL(fileURLWithPath: destination))
        #expect([UInt8](file) == tour.fixture.disk)
        try tour.ok(["status"], daemon: true, contains: ["relocation \(lun): completed"])

        // A relocated LUN no longer needs its backup: delete it, collect its chunks, restart, read.
        try tour.ok(["backup", "delete", "1", "--repo", tour.repository])
        try tour.ok(["backup", "gc", "--repo", tour.repository])
        tour.stop()
        let restarted = try DaemonTests.Daemon(arguments: tour.arguments)
        defer { restarted.stop() }
        #expect(try await readWholeLUN(url: restarted.url(0)) == tour.fixture.disk, "served from the primary alone")
    }

    @Test("trace record, list, show, export, import, delete, train, plan, files and replay, and their errors")
    func traces() async throws {
        let tour = try await Tour.start()
        defer { tour.stop() }
        let t = Self.target
        let db = ["--traces-db", tour.traces]
        let scratch = tour.fixture.scratch.path

        try tour.fails(["trace", "record", "stop", "--target", t, "--lun", "0"], daemon: true, "not recording")
        try tour.fails(["trace", "record", "start", "--target", t, "--lun", "5"], daemon: true, "no live mount on LUN 5")
        try tour.ok(["trace", "record", "start", "--target", t, "--lun", "0", "--profile", "tour"], daemon: true, contains: ["recording"])
        try tour.fails(["trace", "record", "start", "--target", t, "--lun", "0"], daemon: true, "already recording")
        _ = try await readWholeLUN(url: tour.daemon.url(0), blocksPerRead: 128)
        try tour.ok(["trace", "record", "stop", "--target", t, "--lun", "0"], daemon: true, contains: ["trace 1 (profile tour)"])

        try tour.ok(["trace", "list"] + db, contains: ["tour"])
        try tour.ok(["trace", "list", "--profile", "tour"] + db, contains: ["tour"])
        try tour.ok(["trace", "show", "1"] + db, contains: ["reads"])
        try tour.fails(["trace", "show", "99"] + db, "99")
        let csv = scratch + "/trace1.csv"
        try tour.ok(["trace", "export", "1", "--output", csv] + db)
        #expect(((try? String(contentsOfFile: csv, encoding: .utf8)) ?? "").split(separator: "\n").count > 10)
        try tour.fails(["trace", "export", "99"] + db, "99")
        try tour.ok(["trace", "import", csv, "--profile", "tour"] + db, contains: ["2"])
        try tour.fails(["trace", "import", scratch + "/none.csv"] + db, "none.csv")
        let garbage = scratch + "/garbage.csv"
        try "not,a,trace\n1,2\n".write(toFile: garbage, atomically: true, encoding: .utf8)
        try tour.fails(["trace", "import", garbage] + db, "garbage.csv")

        try tour.ok(["trace", "train", "tour"] + db, contains: ["tour"])
        try tour.fails(["trace", "train", "nobody"] + db, "unknown profile nobody")
        try tour.ok(["trace", "plan", "tour"] + db, contains: ["tour"])
        try tour.fails(["trace", "plan", "nobody"] + db, "nobody")
        try tour.ok(["trace", "files", "tour", "--set", "/etc/hostname"] + db)
        try tour.ok(["trace", "files", "tour"] + db, contains: ["/etc/hostname"])
        try tour.ok(["trace", "files", "tour", "--clear"] + db)
        try tour.fails(["trace", "files", "tour", "--set", "relative/path"] + db, "relative/path")

        let replay = try tour.ok(["trace", "replay", "1", "--url", tour.daemon.url(0), "--json"] + db)
        #expect(replay.contains("stall"), "\(replay)")
        let perRead = scratch + "/per-read.csv"
        let polled = try tour.ok(
            ["trace", "replay", "1", "--url", tour.daemon.url(0), "--poll-us", "100", "--busy-think", "--per-read",
             perRead] + db)
        #expect(polled.contains("replay's own lateness"), "\(polled)")
        let rows = ((try? String(contentsOfFile: perRead, encoding: .utf8)) ?? "").split(separator: "\n")
        #expect(rows.first == "index,lba,blocks,ready_us,issued_us,completed_us,error")
        #expect(rows.count > 10, "one row per read")
        try tour.fails(["trace", "replay", "1", "--url", "http://x"] + db, "iscsi://")
        try tour.fails(["trace", "replay", "1", "--url", tour.daemon.url(0), "--poll-us", "-1"] + db, "--poll-us")
        try tour.fails(
            ["trace", "replay", "1", "--url", tour.daemon.url(0), "--per-read", scratch + "/no/such/dir/x.csv"] + db,
            "cannot write")
        try tour.ok(["trace", "delete", "2"] + db)
        try tour.fails(["trace", "delete", "2"] + db, "2")
    }

    @Test("the control API's backup, trace, plan and cache calls, and their errors")
    func repositoryAPI() async throws {
        let tour = try await Tour.start()
        defer { tour.stop() }
        let client = ControlClient(socketPath: tour.socket)
        func call(_ method: String, _ path: String, _ body: String = "") async throws -> (Int, String) {
            let response = try await client.send(method, path, body: Array(body.utf8))
            return (response.status, String(decoding: response.body, as: UTF8.self))
        }
        let (listed, backups) = try await call("GET", "/v1/backups")
        #expect(listed == 200)
        let views = try JSONDecoder().decode([BackupView].self, from: Data(backups.utf8))
        #expect(views.map(\.vm) == ["web01"] && views.first?.holds.isEmpty == false, "held by the mount: \(backups)")
        #expect(try await call("GET", "/v1/backups/1").0 == 200)
        #expect(try await call("GET", "/v1/backups/99").0 == 404)
        #expect(try await call("GET", "/v1/backups/x").0 == 400)
        let held = try await call("DELETE", "/v1/backups/1")
        #expect(held.0 == 409 && held.1.contains("held"), "\(held)")
        #expect(try await call("GET", "/v1/cache").0 == 200)

        let mount = "/v1/mounts/\(Self.target)/0/trace"
        #expect(try await call("POST", mount, #"{"action":"start","profile":"api"}"#).0 == 200)
        _ = try await readWholeLUN(url: tour.daemon.url(0), blocksPerRead: 128)
        #expect(try await call("POST", mount, #"{"action":"stop"}"#).0 == 200)
        let traces = try await call("GET", "/v1/traces?profile=api")
        #expect(traces.0 == 200 && traces.1.contains("\"profile\" : \"api\""), "\(traces)")
        let csv = try await call("GET", "/v1/traces/1/csv")
        #expect(csv.0 == 200 && csv.1.split(separator: "\n").count > 10)
        #expect(try await call("GET", "/v1/profiles/api/plan").0 == 404, "not trained yet")
        let trained = try await call("POST", "/v1/profiles/api/train", #"{"minSupport":0.5}"#)
        #expect(trained.0 == 201, "\(trained)")
        let plan = try JSONDecoder().decode(PrefetchPlan.self, from: Data(try await call("GET", "/v1/profiles/api/plan").1.utf8))
        #expect(plan.profile == "api" && !plan.entries.isEmpty)
        #expect(try await call("POST", "/v1/profiles/api/train", #"{"minSupport":3}"#).0 == 400)
        #expect(try await call("POST", "/v1/profiles/nobody/train").0 == 404)
        #expect(try await call("POST", "/v1/profiles/api/train", #"{"traces":[42]}"#).0 == 404)
        #expect(try await call("DELETE", "/v1/traces/1").0 == 200)
        #expect(try await call("DELETE", "/v1/traces/1").0 == 404)
        #expect(try await call("GET", "/v1/traces/1").0 == 404)
    }
}

/// The SHA-256 of `bytes` in lowercase hex, through sha256sum (the tests link no crypto library).
func sha256Hex(_ bytes: [UInt8]) -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("sha-\(UUID().uuidString)").path
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
    defer { unlink(path) }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
    process.arguments = [path]
    let pipe = Pipe()
    process.standardOutput = pipe
    try? process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: data, as: UTF8.self).split(separator: " ").first.map(String.init) ?? ""
}
