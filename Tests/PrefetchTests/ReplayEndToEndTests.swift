import BlockDevice
import Foundation
import Logging
import Prefetch
import SCSI
import TargetServer
import Testing

/// A target on 127.0.0.1 (free port) serving one in-memory LUN whose reads are recorded.
struct ReplayTestTarget {
    static let name = "iqn.2026-11.org.livemount:replay-test"
    let server: ISCSITargetServer
    let port: Int
    let device: MemoryBlockDevice
    let seen: SeenReads

    /// The reads the LUN served, as (byte offset, byte length).
    final class SeenReads: @unchecked Sendable {
        private let lock = NSLock()
        private var reads: [(offset: UInt64, length: Int)] = []

        func record(_ offset: UInt64, _ length: Int) { lock.withLock { reads.append((offset, length)) } }
        var all: [(offset: UInt64, length: Int)] { lock.withLock { reads } }
    }

    /// Starts the target; reads overlapping the byte range `failing` get MEDIUM ERROR and are not recorded.
    static func start(
        blocks: UInt64 = 8192, blockSize: Int = 512, failing: Range<UInt64>? = nil
    ) async throws -> ReplayTestTarget {
        let device = MemoryBlockDevice(blockSize: blockSize, blockCount: blocks)
        let seen = SeenReads()
        device.setFaultHook { request in
            guard case .read(let offset, let length) = request else { return nil }
            if let failing, offset < failing.upperBound, offset + UInt64(length) > failing.lowerBound {
                return .readFailed("injected read failure")
            }
            seen.record(offset, length)
            return nil
        }
        var logger = Logger(label: "replay-test")
        logger.logLevel = .critical
        let configuration = ServerConfiguration(
            portals: [PortalConfiguration(host: "127.0.0.1", port: 0)],
            targets: [
                TargetConfiguration(
                    name: name,
                    logicalUnits: [
                        LogicalUnitConfiguration(
                            lun: 0, device: device, serialNumber: "REPLAY0", naaIdentifier: 0x5024_C4D0_0000_2000)
                    ])
            ], nopInInterval: 0)
        let server = try ISCSITargetServer(configuration: configuration, logger: logger)
        let bound = try await server.start()
        guard let port = bound.first?.port else { throw TargetServerError("no port") }
        return ReplayTestTarget(server: server, port: port, device: device, seen: seen)
    }

    var url: String { "iscsi://127.0.0.1:\(port)/\(Self.name)/0" }
}

/// Runs blocking libiscsi calls on a thread of their own, never on the pool the target runs on.
func onReplayThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread {
            do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
}

@Suite("Replay against a real target")
struct ReplayEndToEndTests {
    /// A small boot-like trace in 512-byte blocks: sequential reads with think time, then bursts of 3.
    static func trace() -> Trace {
        let sequential = sequentialTrace(thinks: [0, 200, 0, 1500, 50, 0], services: [300, 120]).enumerated().map {
            read($0.element.issued, $0.element.completed, lba: UInt64($0.offset) * 16, blocks: 8)
        }
        let start = (sequential.last?.completed ?? 0) + 500
        let bursts = burstTrace(bursts: 3, width: 3).enumerated().map {
            read(
                $0.element.issued + start, $0.element.completed + start, lba: 4096 + UInt64($0.offset) * 64, blocks: 32)
        }
        let info = TraceInfo(profile: "test", vm: "vm", blockSize: 512, chunkSize: 1 << 20, recordedAt: 0)
        return Trace(info: info, reads: sequential + bursts)
    }

    @Test(
        "a replay through libiscsi sends every read of the trace to the LUN and reports its count and bytes",
        arguments: [0, 200])
    func replayThroughLibiscsi(pollMicroseconds: Int) async throws {
        let target = try await ReplayTestTarget.start()
        let trace = Self.trace()
        let sessions = Replay.defaultSessions(for: trace.reads)
        #expect(sessions == 3)
        let url = target.url
        let lun = try await onReplayThread {
            try ISCSIReplayTarget.connect(
                url: url, initiator: "iqn.2026-11.org.livemount:replay-test-client", count: sessions,
                pollMicroseconds: pollMicroseconds)
        }
        #expect(lun.sessions.count == 3)
        #expect(lun.sessions.allSatisfy { $0.pollMicroseconds == pollMicroseconds })
        #expect(lun.capacity.blockCount == 8192)
        let reads = try Replay.reads(of: trace, lunBlockSize: lun.capacity.blockSize)
        try Replay.checkCapacity(reads, blockCount: lun.capacity.blockCount)
        let outcome = await ReplayDriver.runOnThread(reads: reads, devices: lun.sessions)
        _ = try await onReplayThread { lun.logout() }
        let report = ReplayReport(reads: reads, blockSize: lun.capacity.blockSize, outcome: outcome)

        #expect(report.errors == 0)
        #expect(report.reads == 15)
        #expect(report.bytes == UInt64(6 * 8 + 9 * 32) * 512)
        #expect(report.sessions == 3)
        #expect(report.latency.count == 15)
        #expect(report.replayMaxConcurrency <= 3)
        #expect(report.totalSeconds >= report.thinkSeconds)
        // Every read was sent no earlier than the schedule allowed.
        #expect(outcome.readyTimes.count == reads.count)
        #expect(zip(outcome.issueTimes, outcome.readyTimes).allSatisfy { $0 >= $1 })
        let seen = target.seen.all.map { "\($0.offset)+\($0.length)" }.sorted()
        let expected = reads.map { "\($0.lba * 512)+\(Int($0.blocks) * 512)" }.sorted()
        #expect(seen == expected)
        await target.server.shutdown()
    }

    @Test("a LUN with 4096-byte blocks gets the trace's 512-byte reads widened to whole blocks")
    func otherBlockSize() async throws {
        let target = try await ReplayTestTarget.start(blocks: 1024, blockSize: 4096)
        let info = TraceInfo(profile: "test", vm: "vm", blockSize: 512, chunkSize: 1 << 20, recordedAt: 0)
        let trace = Trace(info: info, reads: [read(0, 10, lba: 9, blocks: 2), read(20, 30, lba: 7, blocks: 2)])
        let url = target.url
        let lun = try await onReplayThread {
            try ISCSIReplayTarget.connect(url: url, initiator: "iqn.2026-11.org.livemount:replay-test-client", count: 1)
        }
        let reads = try Replay.reads(of: trace, lunBlockSize: lun.capacity.blockSize)
        let outcome = await ReplayDriver.runOnThread(reads: reads, devices: lun.sessions)
        _ = try await onReplayThread { lun.logout() }
        #expect(outcome.failures.isEmpty)
        #expect(target.seen.all.map(\.offset) == [4096, 0])
        #expect(target.seen.all.map(\.length) == [4096, 8192])
        await target.server.shutdown()
    }

    @Test(
        "a read the LUN fails is reported with its index, LBA and sense; the others still reach it",
        arguments: [0, 200])
    func failedRead(pollMicroseconds: Int) async throws {
        // Fail the fourth read (LBA 48) with a medium error.
        let target = try await ReplayTestTarget.start(failing: 48 * 512..<(48 * 512 + 512))
        let trace = Self.trace()
        let url = target.url
        let lun = try await onReplayThread {
            try ISCSIReplayTarget.connect(
                url: url, initiator: "iqn.2026-11.org.livemount:replay-test-client", count: 2,
                pollMicroseconds: pollMicroseconds)
        }
        let outcome = await ReplayDriver.runOnThread(reads: trace.reads, devices: lun.sessions)
        _ = try await onReplayThread { lun.logout() }
        #expect(outcome.failures.map(\.index) == [3])
        // CHECK CONDITION with MEDIUM ERROR sense (SPC-4 §4.5.6: sense key 3h).
        #expect(outcome.failures.first?.message.contains("status 0x2 (sense key 0x3") == true, "\(outcome.failures)")
        #expect(outcome.failures.map(\.lba) == [48])
        #expect(ReplayReport(reads: trace.reads, blockSize: 512, outcome: outcome).errors == 1)
        #expect(target.seen.all.count == trace.reads.count - 1)
        await target.server.shutdown()
    }

    @Test("a trace reaching beyond the LUN is refused before anything is sent")
    func beyondCapacity() async throws {
        let target = try await ReplayTestTarget.start(blocks: 4096)
        let trace = Self.trace()
        let url = target.url
        let lun = try await onReplayThread {
            try ISCSIReplayTarget.connect(url: url, initiator: "iqn.2026-11.org.livemount:replay-test-client", count: 1)
        }
        let reads = try Replay.reads(of: trace, lunBlockSize: lun.capacity.blockSize)
        #expect(throws: ReplayError.self) { try Replay.checkCapacity(reads, blockCount: lun.capacity.blockCount) }
        _ = try await onReplayThread { lun.logout() }
        #expect(target.seen.all.isEmpty)
        await target.server.shutdown()
    }
}
