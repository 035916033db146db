import BlockDevice
import CLibISCSI
import ControlPlane
import Foundation
import Relocation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Acceptance of issue 5 (the relocation pump), end to end: livemountd as a process serving a live mount, a
/// libiscsi guest writing random regions through it, a relocation to a file or to a LUN of a private tgtd, and
/// (in the second test) `kill -9` of the daemon at random moments. After switchover the LUN read through
/// livemountd, and the destination read directly, must both equal the backup with every acknowledged write
/// applied (DESIGN.md, invariants 1-3).
@Suite("relocation through livemountd", .serialized)
struct RelocationDaemonTests {
    static let target = "iqn.2026-11.org.livemount:relocation-test"
    static let diskBytes = 64 << 20

    // MARK: - Acceptance 1: relocation under a writing guest

    @Test("a live mount relocated to a file while a guest writes ends byte-identical to backup + writes")
    func relocateToFile() async throws {
        let bench = try await Bench.make(maxRateMiB: 16)
        let destination = bench.fixture.scratch.path + "/primary.img"
        let outcome = try await bench.relocateWhileWriting(to: destination, startWithCLI: true)
        let file = try Data(contentsOf: URL(fileURLWithPath: destination))
        #expect(file.count == Self.diskBytes, "the destination file has the disk's size")
        #expect(firstDifference([UInt8](file), outcome.expected) == nil, "the destination file equals the expected image")
    }

    @Test(
        "a live mount relocated to a tgt LUN over iSCSI while a guest writes ends byte-identical to backup + writes",
        .enabled(if: TGTPrimary.isInstalled, "tgtd/tgtadm not installed (Debian package tgt)"))
    func relocateToISCSI() async throws {
        let bench = try await Bench.make(maxRateMiB: 16)
        let primary = try TGTPrimary(directory: bench.fixture.scratch.path, size: Self.diskBytes)
        defer { primary.stop() }
        let outcome = try await bench.relocateWhileWriting(to: primary.url, startWithCLI: false)
        let direct = try await readWholeLUN(url: primary.url, initiator: "iqn.2026-11.org.livemount:direct-reader")
        #expect(firstDifference(direct, outcome.expected) == nil, "the tgt LUN read directly equals the expected image")
    }

    // MARK: - Acceptance 2: kill -9 at five random moments

    @Test("kill -9 of livemountd at 5 random moments during a relocation: same byte-identical result, backup unchanged")
    func relocationSurvivesKills() async throws {
        var random = SplitMix64(seed: UInt64.random(in: 1...UInt64.max))
        let seed = random.seed
        let bench = try await Bench.make(maxRateMiB: 16)
        let chunksBefore = try bench.fixture.chunkFiles()
        let destination = bench.fixture.scratch.path + "/primary.img"
        var daemon = try bench.startDaemon()
        defer { daemon.stop() }
        let writer = GuestWriter(url: daemon.url(0), seed: random.next(), blockCount: Self.diskBytes / 512)
        defer { writer.requestStop() }
        let disk = bench.fixture.disk
        let writing = Task { try await onThread { writer.run(initial: disk) } }

        try await writer.waitForOperations(20)
        let started = try await bench.control.startRelocation(to: destination, maxRateMiB: bench.maxRateMiB)
        #expect(started.phase == .copying || started.phase == .verifying)

        // Kills 1-4 at random moments while copying; kill 5 as soon as the pump verifies or switches (or, if the
        // poll misses those, at its next look). Each restart uses the same configuration on a new port.
        var phasesAtKill: [RelocationPhase] = []
        for kill in 1...5 {
            let phase: RelocationPhase
            if kill < 5 {
                _ = try await bench.control.waitForPhase(in: [.copying, .verifying, .switching], daemon: daemon)
                try await Task.sleep(for: .milliseconds(Int.random(in: 200...1_400, using: &random)))
                phase = try await bench.control.status()?.phase ?? .failed
            } else {
                phase = try await bench.control.waitForPhase(in: [.verifying, .switching, .completed], daemon: daemon)
            }
            phasesAtKill.append(phase)
            daemon.kill9()
            daemon = try bench.startDaemon()
            writer.setURL(daemon.url(0))
        }
        let completed = try await bench.control.waitForPhase(in: [.completed], daemon: daemon)
        #expect(completed == .completed, "seed \(seed), log: \(bench.logTail())")
        #expect(
            phasesAtKill.prefix(4).allSatisfy { $0 != .completed && $0 != .failed },
            "kills 1-4 hit a running relocation: \(phasesAtKill) (seed \(seed))")
        #expect(phasesAtKill.contains(.copying), "at least one kill during copying: \(phasesAtKill)")
        let status = try await bench.control.status()
        #expect((status?.resumes ?? 0) >= 5, "each restart resumed the pump: \(String(describing: status))")

        // Writes after switchover go to the primary.
        try await writer.waitForOperations(writer.operations + 40)
        writer.requestStop()
        let result = try await writing.value
        result.expectClean(seed: seed)

        // kill -9 after completion: the restarted daemon keeps serving the destination.
        daemon.kill9()
        daemon = try bench.startDaemon()
        let served = try await readWholeLUN(url: daemon.url(0))
        #expect(firstDifference(served, result.expected) == nil, "the LUN after a restart equals the expected image")
        #expect(try await bench.control.status()?.phase == .completed)
        let file = try Data(contentsOf: URL(fileURLWithPath: destination))
        #expect(firstDifference([UInt8](file), result.expected) == nil, "the destination file equals the expected image")
        #expect(try bench.fixture.chunkFiles() == chunksBefore, "the repository's chunk files are unchanged")
    }
}

// MARK: - The bench: a repository, a config file and the daemon

/// Everything one test needs: the fixture repository (64 MiB disk), a livemountd configuration file with a
/// `[relocation]` table, the daemon's log, and a control client.
struct Bench {
    let fixture: Fixture
    let configPath: String
    let logPath: String
    let control: RelocationControl
    /// The pump's ceiling: `[relocation] max_rate_mib` and `busy_rate_mib`, and `maxRateMiB` of API requests.
    let maxRateMiB: Int

    var socketPath: String { fixture.scratch.path + "/daemon-state/control.sock" }

    /// Builds the repository and writes the configuration. `maxRateMiB` also serves as the busy rate, so the
    /// pump keeps moving while the guest writes and the relocation lasts (64 MiB / rate) seconds at least.
    static func make(maxRateMiB: Int) async throws -> Bench {
        let fixture = try await Fixture.make(disk: relocationDisk(mebibytes: RelocationDaemonTests.diskBytes >> 20))
        await fixture.cache.close()
        let root = fixture.scratch.path
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
            direct = true

            [relocation]
            max_rate_mib = \(maxRateMiB)
            busy_rate_mib = \(maxRateMiB)
            region_kib = 1024
            checkpoint_seconds = 1

            [[targets]]
            name = "\(RelocationDaemonTests.target)"

              [[targets.luns]]
              lun = 0
              backup = "web01"
            """
        let configPath = root + "/livemountd.toml"
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        let logPath = root + "/livemountd.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let socket = root + "/daemon-state/control.sock"
        return Bench(
            fixture: fixture, configPath: configPath, logPath: logPath,
            control: RelocationControl(socketPath: socket, target: RelocationDaemonTests.target, lun: 0),
            maxRateMiB: maxRateMiB)
    }

    /// Starts livemountd on this bench's configuration (a new port each time).
    func startDaemon() throws -> ManagedDaemon {
        try ManagedDaemon(configPath: configPath, logPath: logPath)
    }

    /// The last lines of the daemon's standard error, for failure messages.
    func logTail(_ lines: Int = 20) -> String {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }

    /// What acceptance 1 checks through livemountd, for either kind of destination: a guest writes before,
    /// during and after the relocation; the relocation completes; the LUN read through livemountd equals the
    /// backup plus every acknowledged write; the backup's chunk files did not change. Returns the guest's
    /// result so the caller can compare the destination read directly.
    func relocateWhileWriting(to destination: String, startWithCLI: Bool) async throws -> GuestResult {
        let chunksBefore = try fixture.chunkFiles()
        let daemon = try startDaemon()
        defer { daemon.stop() }
        let seed = UInt64.random(in: 1...UInt64.max)
        let writer = GuestWriter(url: daemon.url(0), seed: seed, blockCount: RelocationDaemonTests.diskBytes / 512)
        defer { writer.requestStop() }
        let disk = fixture.disk
        let writing = Task { try await onThread { writer.run(initial: disk) } }
        try await writer.waitForOperations(20)

        let lunName = "\(RelocationDaemonTests.target)/0"
        if startWithCLI {
            let started = try runLivemount(["relocate", lunName, "--to", destination, "--socket", socketPath])
            #expect(started.status == 0, "livemount relocate: \(started.output)")
        } else {
            _ = try await control.startRelocation(to: destination, maxRateMiB: maxRateMiB)
        }
        let starting = try await control.status()
        #expect(starting?.bytesTotal == UInt64(RelocationDaemonTests.diskBytes))
        #expect(starting?.destination == destination)

        var phases: [RelocationPhase] = []
        let final = try await control.waitForPhase(in: [.completed], daemon: daemon) { phase in
            if phases.last != phase { phases.append(phase) }
        }
        #expect(final == .completed, "phases seen \(phases); log: \(logTail())")
        #expect(phases.first == .copying, "phases seen: \(phases)")
        let operationsAtSwitch = writer.operations

        // The guest keeps writing after switchover; these writes land on the primary.
        try await writer.waitForOperations(operationsAtSwitch + 40)
        writer.requestStop()
        let result = try await writing.value
        result.expectClean(seed: seed)
        #expect(result.operations > operationsAtSwitch, "writes completed after switchover")

        let served = try await readWholeLUN(url: daemon.url(0))
        #expect(firstDifference(served, result.expected) == nil, "the LUN through livemountd equals the expected image")

        let cli = try runLivemount(["relocate", "status", lunName, "--json", "--socket", socketPath])
        #expect(cli.status == 0, "livemount relocate status: \(cli.output)")
        let reported = try? JSONDecoder().decode(RelocationStatus.self, from: Data(cli.output.utf8))
        #expect(reported?.phase == .completed, "livemount relocate status --json: \(cli.output)")
        #expect(reported?.bytesDone == UInt64(RelocationDaemonTests.diskBytes))
        #expect(reported?.bytesLeft == 0)
        #expect(try fixture.chunkFiles() == chunksBefore, "the repository's chunk files are unchanged")
        return result
    }

    /// Runs the `livemount` tool; returns its exit status and standard output + error.
    func runLivemount(_ arguments: [String]) throws -> (status: Int32, output: String) {
        try runLivemountTool(arguments)
    }
}

/// The disk the relocation tests back up, `mebibytes` chunks of 1 MiB of realistic content: random chunks, zero
/// chunks, repeats of earlier chunks (deduplicated), half-zero chunks and a short repeated pattern.
func relocationDisk(mebibytes: Int) -> [UInt8] {
    let chunk = 1 << 20
    var disk = [UInt8](repeating: 0, count: mebibytes * chunk)
    var random = SplitMix64(seed: 0x5EED_0005)
    for index in 0..<mebibytes {
        let base = index * chunk
        switch index % 8 {
        case 0, 1, 7:
            disk.replaceSubrange(base..<(base + chunk), with: random.bytes(chunk))
        case 3:
            disk.replaceSubrange(base..<(base + chunk), with: disk[(base - 3 * chunk)..<(base - 2 * chunk)])
        case 4:
            disk.replaceSubrange(base..<(base + chunk / 2), with: random.bytes(chunk / 2))
        case 6:
            let block = random.bytes(4096)
            for offset in stride(from: 0, to: chunk, by: 4096) {
                disk.replaceSubrange((base + offset)..<(base + offset + 4096), with: block)
            }
        default:
            break
        }
    }
    return disk
}

/// The offset of the first byte where `a` and `b` differ (the shorter length if one is a prefix); nil if equal.
/// Used instead of `==` in expectations so a failure prints an offset, not 64 MiB of bytes.
func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int? {
    let common = min(a.count, b.count)
    let found = a.withUnsafeBufferPointer { left in
        b.withUnsafeBufferPointer { right -> Int? in
            if let l = left.baseAddress, let r = right.baseAddress, memcmp(l, r, common) == 0 { return nil }
            return (0..<common).first { left[$0] != right[$0] }
        }
    }
    if let found { return found }
    return a.count == b.count ? nil : common
}

// MARK: - livemountd as a process

/// livemountd started with `--config FILE`, on the port the file's `127.0.0.1:0` portal picks; its standard
/// error is appended to the bench's log.
final class ManagedDaemon: @unchecked Sendable {
    let process = Process()
    let port: Int

    init(configPath: String, logPath: String) throws {
        process.executableURL = URL(fileURLWithPath: builtProduct("livemountd"))
        process.arguments = ["--config", configPath, "--log-level", "error"]
        let output = Pipe()
        process.standardOutput = output
        let log = FileHandle(forWritingAtPath: logPath)
        _ = try? log?.seekToEnd()
        process.standardError = log ?? FileHandle.nullDevice
        try process.run()
        // The one line on standard output: "livemountd: listening on 127.0.0.1:PORT (...)".
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let byte = output.fileHandleForReading.readData(ofLength: 1)
            if byte.isEmpty {
                let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
                throw DaemonFailure("livemountd exited before listening: \(text.suffix(2000))")
            }
            line += byte
        }
        let text = String(decoding: line, as: UTF8.self)
        guard let range = text.range(of: "127.0.0.1:"), let port = Int(text[range.upperBound...].prefix { $0.isNumber })
        else { throw DaemonFailure("unexpected first line: \(text)") }
        self.port = port
    }

    func url(_ lun: UInt64) -> String { "iscsi://127.0.0.1:\(port)/\(RelocationDaemonTests.target)/\(lun)" }

    /// `kill -9`: no flush, no checkpoint, no clean shutdown.
    func kill9() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// SIGTERM and wait (a graceful shutdown); nothing if it already exited.
    func stop() {
        guard process.isRunning else { return }
        process.terminate()
        process.waitUntilExit()
    }
}

struct DaemonFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

// MARK: - The relocation control API

/// The relocation calls of the control API for one LUN (`/v1/mounts/TARGET/LUN/relocation`).
struct RelocationControl: Sendable {
    let socketPath: String
    let target: String
    let lun: UInt64

    var path: String { "/v1/mounts/\(target)/\(lun)/relocation" }

    /// `POST .../relocation {"to": URL}`; expects 201 and returns the status.
    func startRelocation(to destination: String, maxRateMiB: Int? = nil) async throws -> RelocationStatus {
        let body = try JSONEncoder().encode(RelocationRequest(to: destination, maxRateMiB: maxRateMiB))
        let response = try await ControlClient(socketPath: socketPath).send("POST", path, body: [UInt8](body))
        guard response.status == 201 else {
            throw DaemonFailure("POST \(path): \(response.status) \(String(decoding: response.body, as: UTF8.self))")
        }
        return try JSONDecoder().decode(RelocationStatus.self, from: Data(response.body))
    }

    /// `GET .../relocation`; nil when the daemon knows no relocation of the LUN (404). A daemon that is still
    /// starting (its socket not yet there) is asked again a few times.
    func status() async throws -> RelocationStatus? {
        var attempt = 0
        while true {
            do {
                let response = try await ControlClient(socketPath: socketPath).send("GET", path)
                if response.status == 404 { return nil }
                guard response.status == 200 else {
                    throw DaemonFailure("GET \(path): \(response.status) \(String(decoding: response.body, as: UTF8.self))")
                }
                return try JSONDecoder().decode(RelocationStatus.self, from: Data(response.body))
            } catch let error as ControlError where error.status == 0 && attempt < 50 {
                attempt += 1
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// Polls the status (every 20 ms) until its phase is one of `phases`, and returns that phase. Stops early on
    /// `failed` (returned, so the caller's expectation shows it) and on a daemon that died. The poll count is a
    /// guard against a hang (about 6 minutes: CI runs every suite at once on two cores), not a timing assertion.
    func waitForPhase(
        in phases: Set<RelocationPhase>, daemon: ManagedDaemon, observe: (RelocationPhase) -> Void = { _ in }
    ) async throws -> RelocationPhase {
        var last: RelocationStatus?
        for _ in 0..<18_000 {
            guard daemon.process.isRunning else { throw DaemonFailure("livemountd exited") }
            last = try await status()
            if let phase = last?.phase {
                observe(phase)
                if phases.contains(phase) || phase == .failed { return phase }
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw DaemonFailure("the relocation never reached \(phases); last status: \(String(describing: last))")
    }
}

// MARK: - The guest: random writes over libiscsi

/// What the guest saw: the expected image (backup plus every acknowledged write and unmap) and its troubles.
struct GuestResult: Sendable {
    var expected: [UInt8]
    var operations = 0
    var writes = 0
    var unmaps = 0
    var readBacks = 0
    /// Read-backs that did not return what the guest had just written (or the latest acknowledged data).
    var readBackMismatches: [String] = []
    /// BUSY / TASK SET FULL answers, retried.
    var retryable = 0
    /// Connections lost (the daemon killed, or a command that failed in transport), re-connected and re-issued.
    var reconnects = 0
    /// CHECK CONDITIONs other than the POWER ON / RESET unit attention after a restart (a bug to report).
    var checkConditions: [String] = []
    /// An operation still not acknowledged when the guest was told to stop.
    var unresolved: String?

    /// The expectations every run shares: nothing unexpected from the target, nothing left unresolved.
    func expectClean(seed: UInt64) {
        #expect(checkConditions.isEmpty, "unexpected CHECK CONDITIONs (seed \(seed)): \(checkConditions.prefix(10))")
        #expect(readBackMismatches.isEmpty, "read-backs that differ (seed \(seed)): \(readBackMismatches.prefix(10))")
        #expect(unresolved == nil, "seed \(seed): \(unresolved ?? "")")
        #expect(writes > 0)
    }
}

/// A guest on its own thread: random writes (FUA, or followed by SYNCHRONIZE CACHE, so an acknowledged write is
/// durable; UNMAPs are followed by SYNCHRONIZE CACHE too), some straddling chunk/region boundaries, some unaligned, a few UNMAPs, and now and then a read-back.
/// When a command fails in transport (the daemon was killed) its outcome is unknown: the guest reconnects to the
/// current URL and re-issues it, so the expected image is definite.
final class GuestWriter: @unchecked Sendable {
    /// One guest command.
    enum Operation {
        case write(lba: UInt64, data: [UInt8], fua: Bool, readBack: Bool)
        case unmap(lba: UInt64, blocks: UInt32)

        var description: String {
            switch self {
            case .write(let lba, let data, let fua, _): "WRITE lba \(lba) blocks \(data.count / 512) fua \(fua)"
            case .unmap(let lba, let blocks): "UNMAP lba \(lba) blocks \(blocks)"
            }
        }
    }

    private let lock = NSLock()
    private var currentURL: String
    private var stopRequested = false
    private var completed = 0
    private var random: SplitMix64
    private let blockCount: Int
    /// The guest's working set: 90% of the writes land in these 1 MiB regions, the rest anywhere.
    private let hotRegions: [Int]
    static let initiator = "iqn.2026-11.org.livemount:relocation-guest"

    init(url: String, seed: UInt64, blockCount: Int) {
        currentURL = url
        random = SplitMix64(seed: seed)
        self.blockCount = blockCount
        var generator = SplitMix64(seed: seed ^ 0x407)
        hotRegions = (0..<6).map { _ in Int.random(in: 0..<(blockCount / 2048), using: &generator) }
    }

    /// Acknowledged operations so far.
    var operations: Int { lock.withLock { completed } }

    /// Where to reconnect (after a restart on a new port).
    func setURL(_ url: String) { lock.withLock { currentURL = url } }

    /// Asks the guest to stop after its current operation is acknowledged.
    func requestStop() { lock.withLock { stopRequested = true } }

    /// Waits (polling) until `count` operations have been acknowledged; a guard stops a hang (about 6 minutes).
    func waitForOperations(_ count: Int) async throws {
        for _ in 0..<18_000 {
            if operations >= count { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw DaemonFailure("the guest did not reach \(count) operations (at \(operations))")
    }

    /// The guest's loop; blocking, run it on its own thread.
    func run(initial: [UInt8]) -> GuestResult {
        var result = GuestResult(expected: initial)
        var client: GuestSession?
        var canUnmap = false
        var pending: Operation?
        var failures = 0
        while true {
            if pending == nil {
                if lock.withLock({ stopRequested }) { break }
                pending = nextOperation(canUnmap: canUnmap)
                // Bursts of commands with short gaps, and now and then an idle moment, as a guest does.
                let idle = Int.random(in: 0..<25, using: &random) == 0
                usleep(idle ? UInt32.random(in: 50_000...200_000, using: &random) : UInt32.random(in: 0...2_000, using: &random))
            } else if lock.withLock({ stopRequested }) && failures > 600 {
                result.unresolved = "gave up on \(pending?.description ?? "") after \(failures) failures"
                break
            }
            guard let operation = pending else { continue }
            if client == nil {
                do {
                    let fresh = try GuestSession(url: lock.withLock { currentURL }, initiatorName: Self.initiator)
                    let capacity = try fresh.readCapacity16()
                    canUnmap = capacity.provisioningEnabled && capacity.unmappedReadsZero
                    client = fresh
                } catch {
                    failures += 1
                    usleep(50_000)
                    continue
                }
            }
            guard let session = client else { continue }
            do throws(ISCSIClientError) {
                try perform(operation, on: session, result: &result)
                pending = nil
                failures = 0
                lock.withLock { completed += 1 }
                result.operations += 1
            } catch {
                failures += 1
                if error.code == .scsiStatus {
                    if error.status == 0x08 || error.status == 0x28 {
                        result.retryable += 1
                    } else if let sense = error.senseCode, sense.key == 0x06, sense.asc == 0x29 {
                        result.retryable += 1
                    } else {
                        result.checkConditions.append("\(operation.description): \(error)")
                    }
                    usleep(10_000)
                } else {
                    result.reconnects += 1
                    client = nil
                    usleep(20_000)
                }
            }
        }
        client?.logout()
        return result
    }

    /// Sends one operation; on success applies it to the expected image (and checks a read-back).
    private func perform(_ operation: Operation, on client: GuestSession, result: inout GuestResult)
        throws(ISCSIClientError)
    {
        switch operation {
        case .write(let lba, let data, let fua, let readBack):
            try client.write(lba: lba, data: data, fua: fua)
            if !fua { try client.synchronizeCache() }
            let offset = Int(lba) * 512
            result.expected.replaceSubrange(offset..<(offset + data.count), with: data)
            result.writes += 1
            if readBack {
                let read = try client.read(lba: lba, blocks: data.count / 512)
                result.readBacks += 1
                if read != data { result.readBackMismatches.append(operation.description) }
            }
        case .unmap(let lba, let blocks):
            // UNMAP has no FUA bit: the SYNCHRONIZE CACHE after it makes it durable.
            try client.unmap(lba: lba, blocks: blocks)
            try client.synchronizeCache()
            let offset = Int(lba) * 512
            result.expected.replaceSubrange(
                offset..<(offset + Int(blocks) * 512), with: repeatElement(0, count: Int(blocks) * 512))
            result.unmaps += 1
        }
    }

    /// A random operation: one in twenty an UNMAP (if the LUN reads zeros after it), else a write that is small,
    /// medium-sized, or straddling a 1 MiB chunk/region boundary at an odd block; 90% of them in the working set.
    private func nextOperation(canUnmap: Bool) -> Operation {
        let chunkBlocks = 2048
        let kind = Int.random(in: 0..<20, using: &random)
        if canUnmap && kind == 0 {
            let blocks = Int.random(in: 1...4096, using: &random)
            let lba = Int.random(in: 0...(blockCount - blocks), using: &random)
            return .unmap(lba: UInt64(lba), blocks: UInt32(blocks))
        }
        var lba: Int
        var blocks: Int
        let hot = Int.random(in: 0..<10, using: &random) < 9
        let region = hot ? hotRegions[Int.random(in: 0..<hotRegions.count, using: &random)] : nil
        let anywhere = { (generator: inout SplitMix64) in
            region.map { $0 * chunkBlocks + Int.random(in: 0..<chunkBlocks, using: &generator) }
                ?? Int.random(in: 0..<self.blockCount, using: &generator)
        }
        switch kind % 3 {
        case 0:
            blocks = Int.random(in: 1...16, using: &random)
            lba = anywhere(&random)
        case 1:
            blocks = Int.random(in: 17...512, using: &random)
            lba = anywhere(&random)
        default:
            let boundary =
                region.map { max(1, $0) * chunkBlocks }
                ?? Int.random(in: 1..<(blockCount / chunkBlocks), using: &random) * chunkBlocks
            lba = boundary - Int.random(in: 1...96, using: &random)
            blocks = Int.random(in: 2...256, using: &random)
        }
        blocks = min(blocks, blockCount - lba)
        let data = random.bytes(blocks * 512)
        return .write(
            lba: UInt64(lba), data: data, fua: Int.random(in: 0..<4, using: &random) != 0,
            readBack: Int.random(in: 0..<6, using: &random) == 0)
    }
}

// MARK: - The guest's libiscsi session

/// The guest's session: like `ISCSIClient`, but with libiscsi's automatic reconnect turned off. After `kill -9` of
/// the daemon, libiscsi would otherwise try to reconnect to the old port for ever inside the pending command;
/// this way the command fails at once and the guest reconnects to the restarted daemon's new port itself.
/// Failures are `ISCSIClientError`s (CHECK CONDITION with fixed-format sense bytes), as `ISCSIClient` reports them.
final class GuestSession {
    private let context: OpaquePointer
    private var lun: Int32 = 0
    private var blockSize = 512

    /// Logs in to the LUN named by `url` (`iscsi://HOST:PORT/IQN/LUN`).
    init(url: String, initiatorName: String, timeoutSeconds: Int32 = 10) throws(ISCSIClientError) {
        guard let context = iscsi_create_context(initiatorName) else {
            throw ISCSIClientError(.invalidArgument, "cannot create an iSCSI context")
        }
        self.context = context
        guard let parsed = iscsi_parse_full_url(context, url) else {
            throw ISCSIClientError(.invalidArgument, "bad iSCSI URL \(url): \(lastError)")
        }
        defer { iscsi_destroy_url(parsed) }
        let portal = Self.string(parsed.pointee.portal)
        lun = parsed.pointee.lun
        iscsi_set_targetname(context, Self.string(parsed.pointee.target))
        iscsi_set_session_type(context, ISCSI_SESSION_NORMAL)
        iscsi_set_header_digest(context, ISCSI_HEADER_DIGEST_NONE)
        iscsi_set_noautoreconnect(context, 1)
        iscsi_set_timeout(context, timeoutSeconds)
        guard iscsi_full_connect_sync(context, portal, lun) == 0 else {
            throw ISCSIClientError(.loginFailed, "login to \(url) failed: \(lastError)")
        }
    }

    deinit { iscsi_destroy_context(context) }

    /// What READ CAPACITY (16) reports that the guest uses.
    struct Capacity {
        var blockCount: UInt64
        var blockSize: Int
        var provisioningEnabled: Bool
        var unmappedReadsZero: Bool
    }

    /// READ CAPACITY (16) (SBC-4 §5.20); remembers the block size.
    func readCapacity16() throws(ISCSIClientError) -> Capacity {
        let task = iscsi_readcapacity16_sync(context, lun)
        let finished = try check(task, "READ CAPACITY (16)")
        defer { scsi_free_scsi_task(finished) }
        guard let raw = scsi_datain_unmarshall(finished) else {
            throw ISCSIClientError(.transport, "READ CAPACITY (16): cannot unmarshall")
        }
        let data = raw.assumingMemoryBound(to: scsi_readcapacity16.self).pointee
        blockSize = Int(data.block_length)
        return Capacity(
            blockCount: data.returned_lba + 1, blockSize: blockSize, provisioningEnabled: data.lbpme != 0,
            unmappedReadsZero: data.lbprz != 0)
    }

    /// WRITE (16) (SBC-4 §5.43), with FUA when asked.
    func write(lba: UInt64, data: [UInt8], fua: Bool) throws(ISCSIClientError) {
        var bytes = data
        let task = bytes.withUnsafeMutableBufferPointer { buffer in
            iscsi_write16_sync(
                context, lun, lba, buffer.baseAddress, UInt32(buffer.count), Int32(blockSize), 0, 0, fua ? 1 : 0, 0, 0)
        }
        scsi_free_scsi_task(try check(task, "WRITE (16)"))
    }

    /// READ (16) (SBC-4 §5.17).
    func read(lba: UInt64, blocks: Int) throws(ISCSIClientError) -> [UInt8] {
        let length = blocks * blockSize
        let task = iscsi_read16_sync(context, lun, lba, UInt32(length), Int32(blockSize), 0, 0, 0, 0, 0)
        let finished = try check(task, "READ (16)")
        defer { scsi_free_scsi_task(finished) }
        let size = Int(finished.pointee.datain.size)
        guard size == length, let bytes = finished.pointee.datain.data else {
            throw ISCSIClientError(.transport, "READ (16) returned \(size) of \(length) bytes")
        }
        return Array(UnsafeBufferPointer(start: bytes, count: size))
    }

    /// SYNCHRONIZE CACHE (10) of the whole LUN (SBC-4 §5.24).
    func synchronizeCache() throws(ISCSIClientError) {
        scsi_free_scsi_task(try check(iscsi_synchronizecache10_sync(context, lun, 0, 0, 0, 0), "SYNCHRONIZE CACHE"))
    }

    /// UNMAP of one range (SBC-4 §5.30).
    func unmap(lba: UInt64, blocks: UInt32) throws(ISCSIClientError) {
        var list = unmap_list(lba: lba, num: blocks)
        scsi_free_scsi_task(try check(iscsi_unmap_sync(context, lun, 0, 0, &list, 1), "UNMAP"))
    }

    func logout() { _ = iscsi_logout_sync(context) }

    /// The finished task if its status is GOOD; else frees it and throws (`.scsiStatus` for a SCSI status,
    /// `.transport` when the command did not complete).
    private func check(_ task: UnsafeMutablePointer<scsi_task>?, _ name: String) throws(ISCSIClientError)
        -> UnsafeMutablePointer<scsi_task>
    {
        guard let task else { throw ISCSIClientError(.transport, "\(name) failed: \(lastError)") }
        let status = Int(task.pointee.status)
        if status == Int(SCSI_STATUS_GOOD.rawValue) { return task }
        defer { scsi_free_scsi_task(task) }
        guard status < 0x100 else { throw ISCSIClientError(.transport, "\(name) failed: \(lastError)") }
        var sense: [UInt8] = []
        if status == Int(SCSI_STATUS_CHECK_CONDITION.rawValue) {
            // Fixed-format sense (SPC-4 §4.5.3) from libiscsi's parsed key and ASC/ASCQ.
            let ascq = task.pointee.sense.ascq
            sense = [0x70, 0, UInt8(truncatingIfNeeded: task.pointee.sense.key.rawValue), 0, 0, 0, 0, 10, 0, 0, 0, 0]
                + [UInt8(truncatingIfNeeded: ascq >> 8), UInt8(truncatingIfNeeded: ascq)]
        }
        throw ISCSIClientError(
            .scsiStatus, "\(name) ended with status 0x\(String(status, radix: 16))", status: status, sense: sense)
    }

    private var lastError: String {
        guard let text = iscsi_get_error(context) else { return "unknown error" }
        return String(cString: text)
    }

    /// A C `char[N]` field as a Swift string.
    private static func string<T>(_ field: T) -> String {
        withUnsafeBytes(of: field) { raw in
            let bytes = raw.bindMemory(to: UInt8.self)
            let end = bytes.firstIndex(of: 0) ?? bytes.count
            return String(decoding: bytes[..<end], as: UTF8.self)
        }
    }
}

// MARK: - Random numbers

/// SplitMix64: a small seeded generator, so a failing run can be reproduced from its seed.
struct SplitMix64: RandomNumberGenerator, Sendable {
    let seed: UInt64
    private var state: UInt64

    init(seed: UInt64) {
        self.seed = seed
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// `count` random bytes (a multiple of 8 is fastest).
    mutating func bytes(_ count: Int) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        result.withUnsafeMutableBytes { raw in
            var offset = 0
            while offset + 8 <= count {
                raw.storeBytes(of: next(), toByteOffset: offset, as: UInt64.self)
                offset += 8
            }
            if offset < count {
                let last = next()
                for index in offset..<count { raw[index] = UInt8(truncatingIfNeeded: last >> (8 * (index - offset))) }
            }
        }
        return result
    }
}

// MARK: - A primary LUN on tgt

/// A private tgtd on 127.0.0.1 with one sparse file-backed LUN (thin provisioned, so UNMAP works), the
/// relocation's iSCSI destination. Same pattern as Tests/BlockDeviceTests/ISCSIClientTests.swift: tgtd in the
/// foreground with its own control socket (`-C`), killed by pid when done.
final class TGTPrimary: @unchecked Sendable {
    static let tgtd = "/usr/sbin/tgtd"
    static let tgtadm = "/usr/sbin/tgtadm"
    static var isInstalled: Bool {
        FileManager.default.isExecutableFile(atPath: tgtd) && FileManager.default.isExecutableFile(atPath: tgtadm)
    }

    /// No ':' in the name, so the URL needs no escaping.
    let targetName = "iqn.2026-11.org.livemount.test.primary"
    let port: Int
    let control: Int
    let imagePath: String
    private let process = Process()

    var url: String { "iscsi://127.0.0.1:\(port)/\(targetName)/1" }

    init(directory: String, size: Int) throws {
        port = try Self.freePort()
        control = 1000 + port % 29000
        imagePath = directory + "/tgt-primary.img"
        guard FileManager.default.createFile(atPath: imagePath, contents: nil), truncate(imagePath, off_t(size)) == 0
        else { throw DaemonFailure("cannot create \(imagePath)") }
        process.executableURL = URL(fileURLWithPath: Self.tgtd)
        process.arguments = ["-f", "--iscsi", "portal=127.0.0.1:\(port)", "-C", "\(control)"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        do {
            try waitUntilReady()
            try admin("--op", "new", "--mode", "target", "--tid", "1", "-T", targetName)
            try admin("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", imagePath)
            try admin(
                "--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "--params", "thin_provisioning=1")
            try admin("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        } catch {
            stop()
            throw error
        }
    }

    /// Kills tgtd and removes its socket files (the image goes with the scratch directory).
    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        unlink("/var/run/tgtd/socket.\(control)")
        unlink("/var/run/tgtd/socket.\(control).lock")
    }

    private func waitUntilReady() throws {
        for _ in 0..<400 {
            guard process.isRunning else { throw DaemonFailure("tgtd exited with status \(process.terminationStatus)") }
            if (try? admin("--op", "show", "--mode", "target")) != nil { return }
            usleep(25_000)
        }
        throw DaemonFailure("tgtd did not open its control socket")
    }

    private func admin(_ arguments: String...) throws {
        let tool = Process()
        tool.executableURL = URL(fileURLWithPath: Self.tgtadm)
        tool.arguments = ["-C", "\(control)", "--lld", "iscsi"] + arguments
        tool.standardOutput = FileHandle.nullDevice
        tool.standardError = FileHandle.nullDevice
        try tool.run()
        tool.waitUntilExit()
        guard tool.terminationStatus == 0 else {
            throw DaemonFailure("tgtadm \(arguments.joined(separator: " ")) exited \(tool.terminationStatus)")
        }
    }

    /// A TCP port that was free a moment ago on 127.0.0.1.
    private static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw DaemonFailure("socket: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic in
                bind(fd, generic, length) == 0 && getsockname(fd, generic, &length) == 0
            }
        }
        guard bound else { throw DaemonFailure("bind: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
