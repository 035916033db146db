import BlockDevice
import ControlPlane
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 6, Archive and recall, through livemountd and the `livemount archive` commands: a raw LUN is archived
/// (backed up, its file released, a placeholder with the same identity in its place), recalled by the first
/// access of a new session (served from the backup at once, byte for byte, while it is relocated back), and
/// both survive restarts of the daemon, `kill -9` included.
@Suite("archive and recall through livemountd", .serialized)
struct ArchiveDaemonTests {
    static let target = RelocationDaemonTests.target
    static let diskBytes = 32 << 20

    @Test("archive releases the file; a new session recalls it and reads it byte for byte while it relocates back")
    func archiveAndRecall() async throws {
        let bench = try await ArchiveBench.make()
        var daemon = try bench.startDaemon()
        defer { daemon.stop() }
        let before = try await identity(url: daemon.url(0))
        #expect(firstDifference(try await readWholeLUN(url: daemon.url(0)), bench.contents) == nil)

        // The dry run lists the raw LUN, not the live mount on LUN 1.
        let candidates = try bench.cli(["archive", "candidates", "--idle", "0"])
        #expect(candidates.status == 0, "\(candidates.output)")
        #expect(candidates.output.contains("LUN 0") && candidates.output.contains(bench.primaryPath), "\(candidates.output)")
        #expect(!candidates.output.contains("LUN 1"), "a live mount is not on primary storage: \(candidates.output)")
        let none = try bench.cli(["archive", "candidates", "--idle", "86400"])
        #expect(none.status == 0 && none.output.contains("none"), "nothing has been idle a day: \(none.output)")

        let archived = try bench.cli(["archive", "lun", Self.target, "0"])
        #expect(archived.status == 0, "livemount archive lun: \(archived.output) \(bench.logTail())")
        let allocation = bench.primaryAllocation()
        #expect(allocation?.size == UInt64(Self.diskBytes) && allocation?.blocks == 0, "the primary storage is released; its path and size stay")
        let listed = try await bench.placeholders()
        #expect(listed.map(\.state) == ["archived"], "\(listed)")
        #expect(listed.first?.sizeBytes == UInt64(Self.diskBytes))

        // Errors name what was wrong.
        let again = try bench.cli(["archive", "lun", Self.target, "0"])
        #expect(again.status == 1 && again.output.contains("already archived"), "\(again.output)")
        let mounted = try bench.cli(["archive", "lun", Self.target, "1"])
        #expect(mounted.status == 1 && mounted.output.contains("is a live mount"), "\(mounted.output)")
        let missing = try bench.cli(["archive", "lun", Self.target, "7"])
        #expect(missing.status == 1 && missing.output.contains("has no LUN 7"), "\(missing.output)")
        let unknown = try bench.cli(["archive", "lun", "iqn.2026-11.org.livemount:nothing", "0"])
        #expect(unknown.status == 1 && unknown.output.contains("unknown target"), "\(unknown.output)")
        let notArchived = try bench.cli(["archive", "recall", Self.target, "1"])
        #expect(notArchived.status == 1 && notArchived.output.contains("is not archived"), "\(notArchived.output)")
        let negative = try bench.cli(["archive", "candidates", "--idle", "-5"])
        #expect(negative.status != 0 && negative.output.contains("--idle"), "\(negative.output)")

        // A new session: the same LU, and the first read recalls it.
        let recalledIdentity = try await identity(url: daemon.url(0))
        #expect(recalledIdentity == before, "same size, VPD 80h and 83h after archiving")
        let served = try await readWholeLUN(url: daemon.url(0), initiator: "iqn.2026-11.org.livemount:other-host")
        #expect(firstDifference(served, bench.contents) == nil, "the recalled LUN reads byte for byte as before")
        let recalling = try await bench.placeholders()
        #expect(recalling.first.map { ["recalling", "recalled"].contains($0.state) } == true, "\(recalling)")

        // Once relocated back, the LUN is its plain image again: no placeholder, and it can be archived again.
        try await bench.waitForNoPlaceholder(daemon: daemon)
        let file = try Data(contentsOf: URL(fileURLWithPath: bench.primaryPath))
        #expect(firstDifference([UInt8](file), bench.contents) == nil, "relocated back to its path, byte for byte")
        let status = try bench.cli(["status"])
        #expect(status.status == 0 && !status.output.contains("archived:"), "\(status.output)")
        #expect(firstDifference(try await readWholeLUN(url: daemon.url(0)), bench.contents) == nil)
        #expect(try await identity(url: daemon.url(0)) == before)
        let second = try bench.cli(["archive", "lun", Self.target, "0"])
        #expect(second.status == 0, "archived again without a restart: \(second.output)")
        #expect(bench.primaryAllocation()?.blocks == 0)

        // After a restart it is still archived, and recalls again on first access.
        daemon.stop()
        daemon = try bench.startDaemon()
        #expect(try await bench.placeholders().map(\.state) == ["archived"])
        #expect(firstDifference(try await readWholeLUN(url: daemon.url(0)), bench.contents) == nil)
        try await bench.waitForNoPlaceholder(daemon: daemon)
        #expect(try await identity(url: daemon.url(0)) == before)
    }

    @Test("restart with a placeholder present, and kill -9 in the middle of its recall: everything resumes")
    func restartWithPlaceholders() async throws {
        let bench = try await ArchiveBench.make(maxRateMiB: 4)
        var daemon = try bench.startDaemon()
        defer { daemon.stop() }
        let archived = try bench.cli(["archive", "lun", Self.target, "0"])
        #expect(archived.status == 0, "\(archived.output)")

        daemon.kill9()
        daemon = try bench.startDaemon()
        #expect(try await bench.placeholders().map(\.state) == ["archived"], "the placeholder survives a restart")
        #expect(bench.primaryAllocation()?.blocks == 0)

        // Writes recall it; they are acknowledged (FUA) while it relocates back.
        var expected = bench.contents
        let writes: [(lba: UInt64, data: [UInt8])] = (0..<6).map { index in
            (UInt64(index) * 9_973 + 17, pattern(4096, seed: 900 + UInt64(index)))
        }
        try await onThread { [url = daemon.url(0)] in
            let client = ISCSIClient()
            try client.connect(url: url, initiatorName: "iqn.2026-11.org.livemount:writer")
            defer { try? client.logout() }
            for write in writes { try client.write(lba: write.lba, data: write.data, fua: true) }
        }
        for write in writes {
            expected.replaceSubrange(Int(write.lba) * 512..<(Int(write.lba) * 512 + 4096), with: write.data)
        }
        let during = try await bench.placeholders().first
        #expect(during?.state == "recalling", "4 MiB/s: the relocation back takes seconds: \(String(describing: during))")

        daemon.kill9()
        daemon = try bench.startDaemon()
        let resumed = try await bench.placeholders().first
        #expect(
            resumed.map { ["recalling", "recalled"].contains($0.state) } == true,
            "the recall survives kill -9: \(String(describing: resumed))")
        #expect(firstDifference(try await readWholeLUN(url: daemon.url(0)), expected) == nil, "the writes are there")

        try await bench.waitForNoPlaceholder(daemon: daemon)
        let file = try Data(contentsOf: URL(fileURLWithPath: bench.primaryPath))
        #expect(firstDifference([UInt8](file), expected) == nil, "the primary holds the archive plus the writes")

        daemon.kill9()
        daemon = try bench.startDaemon()
        #expect(try await bench.placeholders().isEmpty, "a completed recall leaves no placeholder after a restart")
        #expect(firstDifference(try await readWholeLUN(url: daemon.url(0)), expected) == nil)
    }

    @Test("the policy archives a LUN idle longer than idle_seconds by itself, and not one in use")
    func policy() async throws {
        let bench = try await ArchiveBench.make(archive: "idle_seconds = 3\ncheck_seconds = 1")
        let daemon = try bench.startDaemon()
        defer { daemon.stop() }
        // While a session keeps reading LUN 0, the policy leaves it alone.
        let deadline = Date().addingTimeInterval(6)
        try await onThread { [url = daemon.url(0)] in
            let client = ISCSIClient()
            try client.connect(url: url, initiatorName: "iqn.2026-11.org.livemount:busy")
            defer { try? client.logout() }
            while Date() < deadline {
                _ = try client.read(lba: 0, blocks: 8)
                Thread.sleep(forTimeInterval: 0.2)
            }
        }
        #expect(try await bench.placeholders().isEmpty, "a LUN read every 0.2 s is not idle")
        let candidates = try bench.cli(["archive", "candidates"])
        #expect(candidates.output.contains("policy archives them by itself"), "\(candidates.output)")
        // Left alone, it is archived within a few checks (the placeholder is recorded before the file is
        // released, so wait for both).
        var archived: [PlaceholderInfo] = []
        for _ in 0..<600 where archived.isEmpty || bench.primaryAllocation()?.blocks != 0 {
            try await Task.sleep(for: .milliseconds(100))
            archived = try await bench.placeholders()
        }
        #expect(archived.map(\.state) == ["archived"], "\(bench.logTail())")
        #expect(bench.primaryAllocation()?.blocks == 0)
        #expect(firstDifference(try await readWholeLUN(url: daemon.url(0)), bench.contents) == nil)
    }

    @Test("a LUN added through the API, archived, comes back as its placeholder after a restart; lun remove waits for the recall")
    func apiLUN() async throws {
        let bench = try await ArchiveBench.make()
        var daemon = try bench.startDaemon()
        defer { daemon.stop() }
        let image = bench.fixture.scratch.path + "/api-lun.img"
        let contents = pattern(8 << 20, seed: 5150)
        _ = FileManager.default.createFile(atPath: image, contents: Data(contents))
        let added = try bench.cli(["lun", "add", "--target", Self.target, image, "--lun", "5", "--no-direct"])
        #expect(added.status == 0, "\(added.output)")
        let before = try await identity(url: daemon.url(5))
        let archived = try bench.cli(["archive", "lun", Self.target, "5"])
        #expect(archived.status == 0, "\(archived.output)")
        let shown = try bench.cli(["target", "show", Self.target])
        #expect(shown.status == 0, "\(shown.output)")
        let remove = try bench.cli(["lun", "remove", "--target", Self.target, "--lun", "5"])
        #expect(remove.status == 1 && remove.output.contains("is archived"), "\(remove.output)")

        daemon.kill9()
        daemon = try bench.startDaemon()
        let listed = try await bench.placeholders()
        #expect(listed.map { "\($0.lun) \($0.state)" } == ["5 archived"], "\(listed) \(bench.logTail())")
        #expect(try await identity(url: daemon.url(5)) == before)
        #expect(firstDifference(try await readWholeLUN(url: daemon.url(5)), contents) == nil, "recalled byte for byte")
        try await bench.waitForNoPlaceholder(daemon: daemon)
        let removed = try bench.cli(["lun", "remove", "--target", Self.target, "--lun", "5"])
        #expect(removed.status == 0, "back on its image, it can be removed: \(removed.output)")
        let file = try Data(contentsOf: URL(fileURLWithPath: image))
        #expect(firstDifference([UInt8](file), contents) == nil)
    }

    /// READ CAPACITY (16), VPD 80h and VPD 83h of `url`'s LUN.
    func identity(url: String) async throws -> [[UInt8]] {
        try await onThread {
            let client = ISCSIClient()
            try client.connect(url: url, initiatorName: "iqn.2026-11.org.livemount:identity")
            defer { try? client.logout() }
            let capacity = try client.readCapacity16()
            return [
                Array("\(capacity.blockCount)x\(capacity.blockSize)".utf8),
                try client.inquiry(evpd: true, page: 0x80),
                try client.inquiry(evpd: true, page: 0x83),
            ]
        }
    }
}

/// A repository (web01, for a live mount on LUN 1), a raw image on LUN 0 and a livemountd configuration.
struct ArchiveBench {
    let fixture: Fixture
    let contents: [UInt8]
    let configPath: String
    let logPath: String

    var primaryPath: String { fixture.scratch.path + "/primary.img" }
    var socketPath: String { fixture.scratch.path + "/daemon-state/control.sock" }

    static func make(maxRateMiB: Int = 16, archive: String = "idle_seconds = 0") async throws -> ArchiveBench {
        let fixture = try await Fixture.make()
        await fixture.cache.close()
        let root = fixture.scratch.path
        let contents = relocationDisk(mebibytes: ArchiveDaemonTests.diskBytes >> 20)
        _ = FileManager.default.createFile(atPath: root + "/primary.img", contents: Data(contents))
        let config = """
            [daemon]
            state_dir = "\(root)/daemon-state"
            log_level = "error"

            [[portals]]
            listen = "127.0.0.1:0"

            [repository]
            path = "\(fixture.repositoryPath)"

            [cache]
            path = "\(root)/daemon-cache.img"
            size = "64M"

            [relocation]
            max_rate_mib = \(maxRateMiB)
            busy_rate_mib = \(maxRateMiB)
            checkpoint_seconds = 1

            [archive]
            \(archive)

            [[targets]]
            name = "\(ArchiveDaemonTests.target)"

              [[targets.luns]]
              lun = 0
              path = "\(root)/primary.img"

              [[targets.luns]]
              lun = 1
              backup = "web01"
            """
        let configPath = root + "/livemountd.toml"
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        let logPath = root + "/livemountd.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        return ArchiveBench(fixture: fixture, contents: contents, configPath: configPath, logPath: logPath)
    }

    func startDaemon() throws -> ManagedDaemon {
        try ManagedDaemon(configPath: configPath, logPath: logPath)
    }

    /// The primary file's size and allocated 512-byte blocks.
    func primaryAllocation() -> (size: UInt64, blocks: UInt64)? {
        var info = stat()
        guard stat(primaryPath, &info) == 0 else { return nil }
        return (UInt64(info.st_size), UInt64(info.st_blocks))
    }

    func logTail(_ lines: Int = 20) -> String {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }

    /// `livemount ARGS --socket SOCKET`.
    func cli(_ arguments: [String]) throws -> (status: Int32, output: String) {
        try runLivemountTool(arguments + ["--socket", socketPath])
    }

    /// `GET /v1/placeholders` (asked again while the daemon is still starting).
    func placeholders() async throws -> [PlaceholderInfo] {
        var attempt = 0
        while true {
            do {
                let response = try await ControlClient(socketPath: socketPath).send("GET", "/v1/placeholders")
                guard response.status == 200 else {
                    throw DaemonFailure("GET /v1/placeholders: \(response.status) \(String(decoding: response.body, as: UTF8.self))")
                }
                return try JSONDecoder().decode([PlaceholderInfo].self, from: Data(response.body))
            } catch let error as ControlError where error.status == 0 && attempt < 50 {
                attempt += 1
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// Polls until LUN 0 has no placeholder any more: its recall relocated it back and it is its image again (a
    /// guard of about 6 minutes against a hang, not a timing assertion: CI runs every suite at once on two cores).
    func waitForNoPlaceholder(daemon: ManagedDaemon) async throws {
        var last: PlaceholderInfo?
        for _ in 0..<18_000 {
            guard daemon.process.isRunning else { throw DaemonFailure("livemountd exited: \(logTail())") }
            last = try await placeholders().first
            guard let current = last else { return }
            if current.relocationPhase == "failed" { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw DaemonFailure("the recall did not finish: \(String(describing: last)) \(logTail())")
    }
}
