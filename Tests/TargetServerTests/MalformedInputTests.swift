import BlockDevice
import Foundation
import ISCSIProtocol
import NIOCore
import Testing

@testable import TargetServer

/// Bad input never takes the target down (DESIGN.md invariant 6): each bad
/// connection gets the right PDU or is closed, and other sessions go on.
@Suite("Malformed input")
struct MalformedInputTests {
    /// A libiscsi session that must keep working while the bad connections come and go.
    private func healthyRoundTrip(_ target: TestTarget, seed: UInt8) async throws -> Bool {
        try await onThread {
            let client = ISCSIClient(timeoutSeconds: 30)
            try client.connect(url: target.url(), initiatorName: "iqn.2026-11.org.livemount:healthy")
            let data = [UInt8](repeating: seed, count: 4096)
            try client.write(lba: 64, data: data)
            let back = try client.read(lba: 64, blocks: 8)
            try client.logout()
            return back == data
        }
    }

    @Test("garbage bytes close the connection")
    func garbage() async throws {
        let target = try await TestTarget.start()
        defer { Task { await target.stop() } }
        let result = try await onThread {
            let c = try RawConnection(port: target.port)
            c.send((0..<200).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) })
            return c.drainUntilClosed()
        }
        #expect(result.closed)
        #expect(try await healthyRoundTrip(target, seed: 1))
    }

    @Test("a SCSI command before login gets a login reject and the connection closes")
    func commandBeforeLogin() async throws {
        let target = try await TestTarget.start()
        defer { Task { await target.stop() } }
        let result = try await onThread {
            let c = try RawConnection(port: target.port)
            c.send(testUnitReadyPDU(itt: 1, cmdSN: 1))
            let first = c.receive()
            return (first, c.drainUntilClosed().closed)
        }
        guard case .pdu(let opcode, let header, _) = result.0 else {
            Issue.record("no answer: \(result.0)")
            return
        }
        #expect(opcode == ISCSIOpcode.loginResponse.rawValue)
        #expect(header[36] == 2)  // Status-Class: initiator error (RFC 7143 §11.13.5)
        #expect(result.1)
    }

    @Test("a truncated PDU followed by a hang-up does not disturb other sessions")
    func truncated() async throws {
        let target = try await TestTarget.start()
        defer { Task { await target.stop() } }
        try await onThread {
            for length in [1, 20, 47, 48, 60] {
                let c = try RawConnection(port: target.port)
                var bytes = Array(testUnitReadyPDU(itt: 9, cmdSN: 1).header.bytes)
                bytes[5] = 0
                bytes[7] = 100  // announces 100 bytes of data that never come
                c.send(Array((bytes + [UInt8](repeating: 7, count: 40)).prefix(length)))
            }
        }
        #expect(try await healthyRoundTrip(target, seed: 2))
    }

    @Test("a DataSegmentLength beyond MaxRecvDataSegmentLength closes the connection")
    func oversized() async throws {
        let target = try await TestTarget.start()
        defer { Task { await target.stop() } }
        let closed = try await onThread { () -> Bool in
            let c = try RawConnection(port: target.port)
            _ = try c.login(target: target.targetName)
            var header = testUnitReadyPDU(itt: 2, cmdSN: 1).header
            header.dataSegmentLength = 0xFF_FFFF
            c.send(header.bytes)
            return c.drainUntilClosed().closed
        }
        #expect(closed)
        #expect(try await healthyRoundTrip(target, seed: 3))
    }

    @Test("CmdSN outside the window is ignored; the right CmdSN is served")
    func wrongCmdSN() async throws {
        let target = try await TestTarget.start()
        defer { Task { await target.stop() } }
        let (ignored, answered) = try await onThread { () -> (RawConnection.Event, RawConnection.Event) in
            let c = try RawConnection(port: target.port)
            let cmdSN = try c.login(target: target.targetName)
            c.send(testUnitReadyPDU(itt: 3, cmdSN: cmdSN &+ 100_000))
            let ignored = c.receiveWithin(seconds: 1)
            c.send(testUnitReadyPDU(itt: 4, cmdSN: cmdSN))
            return (ignored, c.receive())
        }
        #expect(ignored == .timedOut)
        guard case .pdu(let opcode, let header, _) = answered else {
            Issue.record("no answer to the in-window command")
            return
        }
        #expect(opcode == ISCSIOpcode.scsiResponse.rawValue)
        #expect(header[16..<20] == [0, 0, 0, 4])
    }

    @Test("an unknown opcode in the full-feature phase is rejected; the session goes on")
    func unknownOpcode() async throws {
        let target = try await TestTarget.start()
        defer { Task { await target.stop() } }
        let (reject, next) = try await onThread { () -> (RawConnection.Event, RawConnection.Event) in
            let c = try RawConnection(port: target.port)
            let cmdSN = try c.login(target: target.targetName)
            var header = BasicHeaderSegment(opcode: .nopOut)
            header[0] = 0x1C  // reserved initiator opcode
            header.initiatorTaskTag = 77
            c.send(header.bytes)
            let reject = c.receive()
            c.send(testUnitReadyPDU(itt: 5, cmdSN: cmdSN))
            return (reject, c.receive())
        }
        guard case .pdu(let opcode, let header, let data) = reject else {
            Issue.record("no Reject")
            return
        }
        #expect(opcode == ISCSIOpcode.reject.rawValue)
        #expect(header[2] == RejectPDU.Reason.commandNotSupported.rawValue)
        #expect(data.first == 0x1C)
        guard case .pdu(let nextOpcode, _, _) = next else {
            Issue.record("session did not go on")
            return
        }
        #expect(nextOpcode == ISCSIOpcode.scsiResponse.rawValue)
    }

    @Test("immediate data beyond FirstBurstLength fails the task, not the session")
    func dataBeyondLimits() async throws {
        let target = try await TestTarget.start()
        defer { Task { await target.stop() } }
        let (response, next) = try await onThread { () -> (RawConnection.Event, RawConnection.Event) in
            let c = try RawConnection(port: target.port)
            let cmdSN = try c.login(target: target.targetName)
            // 512 blocks announced, 64 KiB of immediate data: over FirstBurstLength's default of 64 KiB
            // is not reachable with MaxRecvDataSegmentLength, so announce less EDTL than data instead.
            let data = ByteBuffer(repeating: 0x5A, count: 4096)
            let write = SCSICommandPDU(
                lun: 0, initiatorTaskTag: 6, expectedDataTransferLength: 1024, cmdSN: cmdSN, expStatSN: 0,
                cdb: [0x2A, 0, 0, 0, 0, 0, 0, 0, 2, 0], read: false, write: true, data: data)
            c.send(write.pdu)
            let response = c.receive()
            c.send(testUnitReadyPDU(itt: 7, cmdSN: cmdSN &+ 1))
            return (response, c.receive())
        }
        guard case .pdu(let opcode, let header, _) = response else {
            Issue.record("no response to the bad write")
            return
        }
        #expect(opcode == ISCSIOpcode.scsiResponse.rawValue)
        #expect(header[3] == 0x02)  // CHECK CONDITION
        guard case .pdu(let nextOpcode, _, _) = next else {
            Issue.record("session did not go on")
            return
        }
        #expect(nextOpcode == ISCSIOpcode.scsiResponse.rawValue)
        #expect(target.devices[0]?.contents(offset: 0, length: 1024) == [UInt8](repeating: 0, count: 1024))
    }

    @Test("a corrupted header digest closes that connection only")
    func badHeaderDigest() async throws {
        let target = try await TestTarget.start()
        defer { Task { await target.stop() } }
        let closed = try await onThread { () -> Bool in
            let c = try RawConnection(port: target.port)
            _ = try c.login(target: target.targetName, headerDigest: true)
            var serializer = PDUSerializer()
            serializer.headerDigest = true
            var bytes = ByteBuffer()
            serializer.write(testUnitReadyPDU(itt: 8, cmdSN: 1), into: &bytes)
            var raw = Array(bytes.readableBytesView)
            raw[49] ^= 0xFF
            c.send(raw)
            return c.drainUntilClosed().closed
        }
        #expect(closed)
        #expect(try await healthyRoundTrip(target, seed: 4))
    }

    @Test("forty connections of garbage at once while a session keeps working")
    func manyBadConnections() async throws {
        let target = try await TestTarget.start()
        defer { Task { await target.stop() } }
        async let healthy = healthyRoundTrip(target, seed: 5)
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<40 {
                group.addTask {
                    try await onThread {
                        let c = try RawConnection(port: target.port)
                        switch i % 4 {
                        case 0: c.send([UInt8](repeating: 0xFF, count: 48))
                        case 1: c.send(testUnitReadyPDU(itt: 1, cmdSN: 1))
                        case 2:
                            var h = BasicHeaderSegment(opcode: .loginRequest)
                            h.totalAHSLength = 255
                            h.dataSegmentLength = 0xFF_FFFF
                            c.send(h.bytes)
                        default:
                            // Part of a header: the target waits for the rest (until the login timeout).
                            c.send(Array(repeating: 0x03, count: 10))
                            return c.receiveWithin(seconds: 1) == .timedOut
                        }
                        return c.drainUntilClosed().closed
                    }
                }
            }
            for try await closed in group { #expect(closed) }
        }
        #expect(try await healthy)
    }

    @Test("an idle session gets NOP-In pings; a peer that never answers is dropped (RFC 7143 §11.19)")
    func pings() async throws {
        let target = try await TestTarget.start(nopInInterval: 1, nopInTimeout: 1)
        defer { Task { await target.stop() } }
        let (ping, closed) = try await onThread { () -> (RawConnection.Event, Bool) in
            let c = try RawConnection(port: target.port)
            _ = try c.login(target: target.targetName)
            let ping = c.receive()
            return (ping, c.drainUntilClosed().closed)
        }
        guard case .pdu(let opcode, let header, _) = ping else {
            Issue.record("no ping: \(ping)")
            return
        }
        #expect(opcode == ISCSIOpcode.nopIn.rawValue)
        #expect(header[16..<20] == [0xFF, 0xFF, 0xFF, 0xFF])  // ITT reserved: a target ping
        #expect(header[20..<24] != [0xFF, 0xFF, 0xFF, 0xFF])  // TTT to echo back
        #expect(closed)
    }

    @Test("a connection that never completes its login is dropped after the login timeout")
    func loginTimeout() async throws {
        let target = try await TestTarget.start(loginTimeout: 1)
        defer { Task { await target.stop() } }
        let (closedIdle, closedHalfway) = try await onThread { () -> (Bool, Bool) in
            let idle = try RawConnection(port: target.port)
            // Half a login: the security stage, then silence.
            let halfway = try RawConnection(port: target.port)
            var text = ByteBuffer()
            text.writeString("InitiatorName=iqn.2026-11.org.livemount:slow\0TargetName=\(target.targetName)\0")
            text.writeString("AuthMethod=None\0")
            halfway.send(
                LoginRequestPDU(transit: false, currentStage: 0, nextStage: 1, isid: 1, cmdSN: 1, data: text).pdu)
            return (idle.drainUntilClosed().closed, halfway.drainUntilClosed().closed)
        }
        #expect(closedIdle)
        #expect(closedHalfway)
    }
}
