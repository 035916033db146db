import BlockDevice
import Foundation
import ISCSIProtocol
import NIOCore
import Testing

@testable import TargetServer

/// libiscsi as the initiator against a listening target (STYLE.md §7).
@Suite("End to end with libiscsi")
struct EndToEndTests {
    static let initiator = "iqn.2026-11.org.livemount:e2e-initiator"

    private func pattern(_ count: Int, seed: UInt64) -> [UInt8] {
        var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<count).map { _ in
            x ^= x << 13
            x ^= x >> 7
            x ^= x << 17
            return UInt8(truncatingIfNeeded: x)
        }
    }

    @Test("login, READ CAPACITY, then 1 MiB written through R2Ts reads back identical")
    func roundTrip() async throws {
        let target = try await TestTarget.start()
        defer { Task { await target.stop() } }
        let data = pattern(1 << 20, seed: 1)
        let (capacity, back) = try await onThread {
            let client = ISCSIClient(timeoutSeconds: 30)
            try client.connect(url: target.url(), initiatorName: Self.initiator)
            let capacity = try client.readCapacity16()
            try client.write(lba: 100, data: data)
            let back = try client.read(lba: 100, blocks: data.count / 512)
            try client.logout()
            return (capacity, back)
        }
        #expect(capacity.blockCount == 16384)
        #expect(capacity.blockSize == 512)
        #expect(back == data)
        #expect(target.devices[0]?.contents(offset: 100 * 512, length: data.count) == data)
    }

    @Test("CRC32C header digests negotiate and protect every PDU")
    func digests() async throws {
        let target = try await TestTarget.start()
        defer { Task { await target.stop() } }
        let data = pattern(300 * 512, seed: 2)
        let back = try await onThread {
            let client = ISCSIClient(timeoutSeconds: 30)
            try client.connect(url: target.url(), initiatorName: Self.initiator, headerDigest: true)
            try client.write(lba: 7, data: data)
            return try client.read(lba: 7, blocks: 300)
        }
        #expect(back == data)
    }

    @Test("eight sessions at once each write and verify their own region")
    func concurrentSessions() async throws {
        let target = try await TestTarget.start(luns: [0: (65536, false)])
        defer { Task { await target.stop() } }
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for session in 0..<8 {
                group.addTask {
                    try await onThread {
                        let client = ISCSIClient(timeoutSeconds: 30)
                        try client.connect(url: target.url(), initiatorName: Self.initiator + "-\(session)")
                        var ok = true
                        for round in 0..<20 {
                            let lba = UInt64(session * 8192 + round * 64)
                            let data = pattern(64 * 512, seed: UInt64(session * 1000 + round))
                            try client.write(lba: lba, data: data)
                            let back = try client.read(lba: lba, blocks: 64)
                            ok = ok && back == data
                        }
                        try client.logout()
                        return ok
                    }
                }
            }
            for try await ok in group { #expect(ok) }
        }
    }

    @Test("SendTargets discovery lists the target with its portal")
    func discovery() async throws {
        let target = try await TestTarget.start()
        defer { Task { await target.stop() } }
        let found = try await onThread {
            try ISCSIClient.discovery(portal: "127.0.0.1:\(target.port)", initiatorName: Self.initiator)
        }
        #expect(found.map(\.targetName) == [TestTarget.defaultName])
        #expect(found.first?.addresses == ["127.0.0.1:\(target.port),1"])
    }

    @Test("a read-only LUN refuses writes with DATA PROTECT and serves reads")
    func readOnly() async throws {
        let target = try await TestTarget.start(luns: [0: (2048, false), 1: (2048, true)])
        defer { Task { await target.stop() } }
        let error = try await onThread { () -> ISCSIClientError? in
            let client = ISCSIClient(timeoutSeconds: 30)
            try client.connect(url: target.url(lun: 1), initiatorName: Self.initiator)
            _ = try client.read(lba: 0, blocks: 8)
            do {
                try client.write(lba: 0, data: [UInt8](repeating: 1, count: 512))
                return nil
            } catch let error as ISCSIClientError {
                return error
            }
        }
        #expect(error?.sense.count ?? 0 >= 14)
        #expect(error.map { $0.sense[2] & 0x0F } == 0x07)
        #expect(error.map { $0.sense[12] } == 0x27)
    }

    @Test("iscsi-ls -s, iscsi-inq and iscsi-readcapacity16 work against the target")
    func libiscsiTools() async throws {
        let tools = ["/usr/bin/iscsi-ls", "/usr/bin/iscsi-inq", "/usr/bin/iscsi-readcapacity16"]
        guard tools.allSatisfy({ FileManager.default.isExecutableFile(atPath: $0) }) else {
            Issue.record("libiscsi-bin is not installed (tools/install-deps.sh installs it)")
            return
        }
        let target = try await TestTarget.start()
        defer { Task { await target.stop() } }
        let ls = try await run(tools[0], ["-s", "iscsi://127.0.0.1:\(target.port)"])
        #expect(ls.status == 0)
        #expect(ls.output.contains("Target:\(TestTarget.defaultName)"))
        #expect(ls.output.contains("Lun:0"))
        let inq = try await run(tools[1], [target.url()])
        #expect(inq.status == 0)
        #expect(inq.output.contains("Vendor:LIVEMNT"))
        let cap = try await run(tools[2], [target.url()])
        #expect(cap.status == 0)
        #expect(cap.output.contains("Total size:\(16384 * 512)"))
    }

    private func run(_ path: String, _ arguments: [String]) async throws -> (status: Int32, output: String) {
        try await onThread {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: path)
            process.arguments = arguments
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = pipe
            try process.run()
            let output = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return (process.terminationStatus, String(decoding: output, as: UTF8.self))
        }
    }
}
