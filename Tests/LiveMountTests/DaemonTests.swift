import BlockDevice
import ControlPlane
import Foundation
import Repository
import Testing

/// livemountd as a process: what survives `kill -9`, and mounts made through the control API.
@Suite("livemountd with live mounts", .serialized)
struct DaemonTests {
    /// A running livemountd serving backup LUNs, started on a free port.
    final class Daemon: @unchecked Sendable {
        let process = Process()
        let port: Int
        let output: Pipe

        init(arguments: [String]) throws {
            process.executableURL = URL(fileURLWithPath: builtProduct("livemountd"))
            process.arguments = ["--listen", "127.0.0.1:0", "--log-level", "error"] + arguments
            output = Pipe()
            process.standardOutput = output
            process.standardError = FileHandle.nullDevice
            try process.run()
            // The one line on standard output: "livemountd: listening on 127.0.0.1:PORT (...)".
            var line = Data()
            while !line.contains(UInt8(ascii: "\n")) {
                let byte = output.fileHandleForReading.readData(ofLength: 1)
                if byte.isEmpty { throw CLIFailure("livemountd exited before listening") }
                line += byte
            }
            let text = String(decoding: line, as: UTF8.self)
            guard let range = text.range(of: "127.0.0.1:"),
                let port = Int(text[range.upperBound...].prefix { $0.isNumber })
            else { throw CLIFailure("unexpected first line: \(text)") }
            self.port = port
        }

        func url(_ lun: UInt64) -> String { "iscsi://127.0.0.1:\(port)/\(DaemonTests.target)/\(lun)" }

        /// `kill -9`: no flush, no clean shutdown.
        func kill9() {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }

        func stop() {
            process.terminate()
            process.waitUntilExit()
        }
    }

    struct CLIFailure: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    static let target = "iqn.2026-11.org.livemount:daemon-test"

    /// A repository with the sample disk, and the daemon arguments that serve it as LUN 0.
    func prepare() async throws -> (Fixture, [String]) {
        let fixture = try await Fixture.make()
        await fixture.cache.close()
        let arguments = [
            "--target", Self.target, "--repo", fixture.repositoryPath, "--cache", fixture.scratch.path + "/daemon-cache.img,64M",
            "--state-dir", fixture.scratch.path + "/daemon-state", "--lun", "0=backup:web01",
        ]
        return (fixture, arguments)
    }

    @Test("a write acknowledged after SYNCHRONIZE CACHE survives kill -9 of livemountd and a restart")
    func syncedWriteSurvivesKill() async throws {
        let (fixture, arguments) = try await prepare()
        let daemon = try Daemon(arguments: arguments)
        let url = daemon.url(0)
        let synced = pattern(64 * 1024, seed: 77)
        let fua = pattern(4096, seed: 78)
        try await onThread {
            let client = ISCSIClient()
            try client.connect(url: url, initiatorName: "iqn.2026-11.org.livemount:writer")
            defer { try? client.logout() }
            try client.write(lba: 3000, data: synced)
            try client.synchronizeCache()
            try client.write(lba: 9000, data: fua, fua: true)
        }
        daemon.kill9()

        let restarted = try Daemon(arguments: arguments)
        defer { restarted.stop() }
        let image = try await readWholeLUN(url: restarted.url(0))
        var expected = fixture.disk
        expected.replaceSubrange((3000 * 512)..<(3000 * 512 + synced.count), with: synced)
        expected.replaceSubrange((9000 * 512)..<(9000 * 512 + fua.count), with: fua)
        #expect(image == expected)
    }

    @Test("livemount mount/unmount through the control API; the daemon remembers mounts across restarts")
    func controlAPIMounts() async throws {
        let (fixture, arguments) = try await prepare()
        let socket = fixture.scratch.path + "/daemon-state/control.sock"
        let daemon = try Daemon(arguments: arguments)
        let client = ControlClient(socketPath: socket)

        // Errors name what was wrong.
        let unknown = try await client.send(
            "POST", "/v1/mounts", body: Array(#"{"backup":"nosuchvm","target":"\#(Self.target)"}"#.utf8))
        #expect(unknown.status == 404)
        #expect(String(decoding: unknown.body, as: UTF8.self).contains("nosuchvm"))
        let taken = try await client.send(
            "POST", "/v1/mounts", body: Array(#"{"backup":"web01","target":"\#(Self.target)","lun":0}"#.utf8))
        #expect(taken.status == 409)
        let badTarget = try await client.send(
            "POST", "/v1/mounts", body: Array(#"{"backup":"web01","target":"iqn.2026-11.org.nope:x"}"#.utf8))
        #expect(badTarget.status == 404)
        let missingField = try await client.send("POST", "/v1/mounts", body: Array(#"{"target":"x"}"#.utf8))
        #expect(missingField.status == 400)
        #expect(String(decoding: missingField.body, as: UTF8.self).contains("backup"))

        // The CLI mounts the backup read-only on the lowest free LUN (1).
        let cli = try runCLI(["mount", "web01", "--target", Self.target, "--read-only", "--socket", socket])
        #expect(cli.status == 0)
        #expect(cli.output.contains("LUN 1"))
        #expect(try await readWholeLUN(url: daemon.url(1)) == fixture.disk)
        daemon.stop()

        let restarted = try Daemon(arguments: arguments)
        #expect(try await readWholeLUN(url: restarted.url(1)) == fixture.disk, "LUN 1 came back after the restart")
        let list = try runCLI(["mounts", "--socket", socket])
        #expect(list.output.contains("\(Self.target) LUN 1"))
        let unmount = try runCLI(["unmount", "--target", Self.target, "--lun", "1", "--discard-overlay", "--socket", socket])
        #expect(unmount.status == 0)
        let again = try runCLI(["unmount", "--target", Self.target, "--lun", "1", "--socket", socket])
        #expect(again.status != 0)
        #expect(again.output.contains("no live mount on LUN 1"))
        restarted.stop()
    }

    @Test("GET /metrics on the control socket is Prometheus text: sessions, per-LUN commands and latency, cache")
    func prometheusMetrics() async throws {
        let (fixture, arguments) = try await prepare()
        let socket = fixture.scratch.path + "/daemon-state/control.sock"
        let daemon = try Daemon(arguments: arguments)
        defer { daemon.stop() }
        let client = ControlClient(socketPath: socket)

        /// The value of the sample `name{labels}` (labels in the registry's order), or nil.
        func sample(_ text: String, _ series: String) -> Double? {
            for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
                return Double(line.dropFirst(series.count + 1))
            }
            return nil
        }

        let url = daemon.url(0)
        let image = try await readWholeLUN(url: url)
        #expect(image == fixture.disk)
        let data = pattern(8192, seed: 3)
        // Scraped while this session is logged in.
        let iscsi = try await onThread { () -> ISCSIClient in
            let iscsi = ISCSIClient()
            try iscsi.connect(url: url, initiatorName: "iqn.2026-11.org.livemount:metrics")
            try iscsi.write(lba: 100, data: data)
            return iscsi
        }
        let scraped = String(decoding: try await client.send("GET", "/metrics").body, as: UTF8.self)
        try await onThread { try iscsi.logout() }
        let lun = #"{target="\#(Self.target)",lun="0"}"#
        #expect(sample(scraped, "livemount_iscsi_sessions") == 1)
        let commands = try #require(sample(scraped, "livemount_lun_commands_total" + lun), "\(scraped)")
        #expect(commands >= Double(fixture.disk.count / (256 << 10)))  // at least one READ per 256 KiB read
        #expect(sample(scraped, "livemount_lun_read_bytes_total" + lun) ?? 0 >= Double(fixture.disk.count))
        #expect(sample(scraped, "livemount_lun_written_bytes_total" + lun) == Double(data.count))
        let histogram = #"livemount_lun_command_duration_count{target="\#(Self.target)",lun="0"}"#
        #expect(sample(scraped, histogram) == commands)
        #expect(sample(scraped, "livemount_cache_fetches") ?? 0 > 0)
        #expect(scraped.contains("# TYPE livemount_lun_command_duration histogram"))

        // The content type a Prometheus server expects, and 404 for a path that is not there.
        let raw = try runCurl(socket: socket, path: "/metrics")
        #expect(raw.contains("Content-Type: text/plain; version=0.0.4"))
        let missing = try await client.send("GET", "/metricsx")
        #expect(missing.status == 404)

        // `livemount status` shows each LUN's reads, writes and last access.
        let status = try runCLI(["status", "--socket", socket])
        #expect(status.status == 0)
        let line = try #require(
            status.output.split(separator: "\n").first { $0.hasPrefix("  LUN 0: ") }, "\(status.output)")
        let reads = try #require(Int(line.dropFirst("  LUN 0: ".count).prefix { $0.isNumber }))
        // Every READ the whole-LUN read sent (at most 1 MiB each), none of the other commands of the logins.
        #expect(reads >= fixture.disk.count >> 20 && reads < Int(commands) - 1)
        #expect(line.contains(" reads, 1 writes, last access 20"))
    }

    @Test("the control API on a loopback TCP port answers only requests with the bearer token")
    func controlOverTCP() async throws {
        let (fixture, arguments) = try await prepare()
        let tokenFile = fixture.scratch.path + "/control.token"
        let token = "tok-" + UUID().uuidString
        _ = FileManager.default.createFile(atPath: tokenFile, contents: Data((token + "\n").utf8))
        chmod(tokenFile, 0o600)
        // A free port: bind 0, read it, let it go.
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(probe, pointer, length) == 0 ? getsockname(probe, pointer, &length) : -1
            }
        }
        let port = Int(UInt16(bigEndian: address.sin_port))
        close(probe)
        #expect(port > 0)

        let daemon = try Daemon(
            arguments: arguments + ["--control-listen", "127.0.0.1:\(port)", "--control-token-file", tokenFile])
        defer { daemon.stop() }
        func get(_ path: String, _ headers: [String] = []) throws -> String {
            try runCurl(url: "http://127.0.0.1:\(port)" + path, headers: headers)
        }
        let none = try get("/v1/status")
        #expect(none.hasPrefix("HTTP/1.1 401"), "\(none)")
        #expect(none.contains("WWW-Authenticate: Bearer"))
        #expect(!none.contains(DaemonTests.target), "nothing of the daemon's state without the token")
        let wrong = try get("/v1/status", ["Authorization: Bearer " + token.dropLast()])
        #expect(wrong.hasPrefix("HTTP/1.1 401"))
        let status = try get("/v1/status", ["Authorization: Bearer " + token])
        #expect(status.hasPrefix("HTTP/1.1 200"), "\(status)")
        #expect(status.contains(DaemonTests.target))
        let metrics = try get("/metrics", ["Authorization: Bearer " + token])
        #expect(metrics.contains("livemount_iscsi_sessions"))

        // The Unix socket is unchanged: no token there.
        let local = try runCurl(socket: fixture.scratch.path + "/daemon-state/control.sock", path: "/v1/status")
        #expect(local.hasPrefix("HTTP/1.1 200"))

        // The CLI over TCP, with the token file; without it, or with a wrong token, a clear refusal.
        let cli = try runCLI(["status", "--control", "127.0.0.1:\(port)", "--token-file", tokenFile])
        #expect(cli.status == 0 && cli.output.contains("target \(DaemonTests.target)"), "\(cli.output)")
        let noToken = try runCLI(["mounts", "--control", "127.0.0.1:\(port)"])
        #expect(noToken.status == 1 && noToken.output.contains("needs --token-file"), "\(noToken.output)")
        let wrongFile = fixture.scratch.path + "/wrong.token"
        _ = FileManager.default.createFile(atPath: wrongFile, contents: Data("not-the-token-at-all".utf8))
        let wrongToken = try runCLI(["mounts", "--control", "127.0.0.1:\(port)", "--token-file", wrongFile])
        #expect(wrongToken.status == 1 && wrongToken.output.contains("Authorization: Bearer"), "\(wrongToken.output)")
        let badAddress = try runCLI(["mounts", "--control", "127.0.0.1", "--token-file", tokenFile])
        #expect(badAddress.status == 1 && badAddress.output.contains("expected HOST:PORT"), "\(badAddress.output)")
    }

    @Test("livemount lun soak: sessions on a live mount and verified reads, no errors; a bad argument is refused")
    func soakTool() async throws {
        let (fixture, arguments) = try await prepare()  // kept: its scratch directory holds the repository
        let daemon = try Daemon(arguments: arguments)
        defer {
            daemon.stop()
            withExtendedLifetime(fixture) {}
        }
        let run = try runCLI(["lun", "soak", daemon.url(0), "--sessions", "4", "--seconds", "2", "--report", "0"])
        #expect(run.status == 0, "\(run.output)")
        #expect(run.output.contains("sessions 4,"))
        #expect(run.output.contains("errors 0, mismatches 0"))
        let reads = run.output.components(separatedBy: "reads ").dropFirst().first?.prefix { $0.isNumber }
        #expect(Int(reads ?? "") ?? 0 > 0)
        let bad = try runCLI(["lun", "soak", "http://x", "--sessions", "4"])
        #expect(bad.status != 0)
        #expect(bad.output.contains("expected an iscsi:// URL"))
    }

    /// `curl -si URL` with extra headers: the response with its headers.
    func runCurl(url: String, headers: [String]) throws -> String {
        try curl(["-si"] + headers.flatMap { ["-H", $0] } + [url])
    }

    /// `curl -si` of a control-socket path: the response with its headers.
    func runCurl(socket: String, path: String) throws -> String {
        try curl(["-si", "--unix-socket", socket, "http://livemountd" + path])
    }

    func curl(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    /// Runs the `livemount` tool; returns its exit status and standard output + error.
    func runCLI(_ arguments: [String]) throws -> (status: Int32, output: String) {
        try runLivemountTool(arguments)
    }
}
