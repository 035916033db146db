import BlockDevice
import Foundation
import ISCSIProtocol
import NIOCore
import SCSI
import Testing

@testable import TargetServer

/// Targets, ACLs and CHAP changed while the server runs (`addTarget`, `removeTarget`, `updateLoginPolicy`),
/// with libiscsi and raw connections as initiators.
@Suite("Targets changed while serving")
struct TargetChangeTests {
    static let initiator = "iqn.2026-11.org.livemount:changer"
    static let other = "iqn.2026-11.org.livemount:other-initiator"
    static let second = "iqn.2026-11.org.livemount:second"

    /// A target with one in-memory LUN of `blocks` blocks.
    static func configuration(_ name: String, blocks: UInt64 = 1024) -> TargetConfiguration {
        TargetConfiguration(
            name: name,
            logicalUnits: [
                LogicalUnitConfiguration(
                    lun: 0, device: MemoryBlockDevice(blockCount: blocks, readOnly: false), serialNumber: "CHG0",
                    naaIdentifier: 0x5024_C4D0_0000_7000)
            ])
    }

    /// Logs in as `initiator` and reads one block; nil when that worked, the error otherwise.
    static func attempt(
        _ url: String, initiator: String = initiator, chap: (user: String, secret: String)? = nil
    ) async throws -> ISCSIClientError? {
        try await onThread {
            let client = ISCSIClient(timeoutSeconds: 30)
            do {
                try client.connect(url: url, initiatorName: initiator, chap: chap)
                _ = try client.read(lba: 0, blocks: 1)
                try client.logout()
                return nil
            } catch let error as ISCSIClientError {
                return error
            }
        }
    }

    /// The target names SendTargets gives `initiator` on a fresh discovery session (libiscsi reports an empty
    /// answer as an error: that is an empty list here).
    static func discover(_ port: Int, initiator: String = initiator) async throws -> [String] {
        try await onThread {
            (try? ISCSIClient.discovery(portal: "127.0.0.1:\(port)", initiatorName: initiator))?.map(\.targetName) ?? []
        }
    }

    @Test("a session on A reads on while B is added and removed and A's ACL changes; new logins see each change")
    func sessionsUndisturbed() async throws {
        let a = try await TestTarget.start(luns: [0: (2048, false)])
        defer { Task { await a.stop() } }
        let server = a.server
        let data = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let session = ISCSIClient(timeoutSeconds: 30)
        try await onThread {
            try session.connect(url: a.url(), initiatorName: Self.initiator)
            try session.write(lba: 8, data: data)
        }
        let readBack = { @Sendable () async throws -> [UInt8] in
            try await onThread { try session.read(lba: 8, blocks: 8) }
        }

        // B appears to logins and discovery at once.
        let b = "iqn.2026-11.org.livemount:added"
        try server.addTarget(Self.configuration(b))
        #expect(server.targetNames == [a.targetName, b].sorted())
        let urlB = "iscsi://127.0.0.1:\(a.port)/\(b)/0"
        #expect(try await Self.attempt(urlB) == nil)
        #expect(try await Self.discover(a.port) == [a.targetName, b].sorted())
        #expect(try await readBack() == data)
        #expect(throws: TargetServerError.self) { try server.addTarget(Self.configuration(b.uppercased())) }

        // B is refused removal while it has a LUN, and while a session is logged in to it unless forced.
        let sessionB = try RawConnection(port: a.port)
        _ = try await onThread { try sessionB.login(target: b, initiator: Self.second) }
        #expect(server.sessionCount(target: b) == 1)
        await #expect(throws: TargetServerError.self) { try await server.removeTarget(name: b) }
        #expect(server.scsiTarget(named: b)?.removeLogicalUnit(lun: 0) == true)
        do {
            try await server.removeTarget(name: b)
            Issue.record("a target with a session was removed without force")
        } catch {
            #expect(error.code == .conflict)
            #expect(error.description.contains("1 session"))
        }
        #expect(server.targetNames == [a.targetName, b].sorted())
        #expect(try await server.removeTarget(name: b, force: true) == 1)
        #expect(server.targetNames == [a.targetName])
        #expect(try await Self.discover(a.port) == [a.targetName])
        #expect(try await Self.attempt(urlB)?.code == .loginFailed)
        // The forced removal closed B's session; A's goes on.
        #expect(try await onThread { sessionB.drainUntilClosed().closed })
        #expect(try await readBack() == data)
        do {
            try await server.removeTarget(name: b)
            Issue.record("removed a target twice")
        } catch {
            #expect(error.code == .notFound)
        }

        // A's ACL no longer has this initiator: its session reads on, its new logins and discovery are refused.
        let policy = try server.updateLoginPolicy(target: a.targetName) { $0.allowedInitiators = [Self.other] }
        #expect(policy.allowedInitiators == [Self.other])
        #expect(try await readBack() == data)
        #expect(try await Self.attempt(a.url())?.code == .loginFailed)
        #expect(try await Self.attempt(a.url(), initiator: Self.other) == nil)
        #expect(try await Self.discover(a.port).isEmpty)
        #expect(try await Self.discover(a.port, initiator: Self.other) == [a.targetName])
        #expect(try await readBack() == data)
        try await onThread { try session.logout() }
        #expect(await Self.eventually { server.sessionCount(target: a.targetName) == 0 })
    }

    /// Whether `condition` holds within 10 s (the target ends a session after the initiator's logout returns).
    static func eventually(_ condition: () -> Bool) async -> Bool {
        for _ in 0..<1000 {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition()
    }

    @Test("CHAP set while serving is required from the next login on; cleared, it is not")
    func chapChanges() async throws {
        let a = try await TestTarget.start()
        defer { Task { await a.stop() } }
        let session = ISCSIClient(timeoutSeconds: 30)
        try await onThread { try session.connect(url: a.url(), initiatorName: Self.initiator) }
        try a.server.updateLoginPolicy(target: a.targetName) {
            $0.chap = CHAPCredentials(user: "alice", secret: "correct-horse-42")
        }
        #expect(try await Self.attempt(a.url())?.code == .loginFailed)
        #expect(try await Self.attempt(a.url(), chap: ("alice", "wrong-secret-123"))?.code == .loginFailed)
        #expect(try await Self.attempt(a.url(), chap: ("alice", "correct-horse-42")) == nil)
        // Logged in before the change, the first session goes on without CHAP.
        try await onThread { try session.testUnitReady() }
        try a.server.updateLoginPolicy(target: a.targetName) { $0.chap = nil }
        #expect(try await Self.attempt(a.url()) == nil)
        try await onThread { try session.logout() }
        #expect(throws: TargetServerError.self) {
            try a.server.updateLoginPolicy(target: "iqn.2026-11.org.x:none") { _ in }
        }
    }

    @Test("a login whose target is removed before it completes gets Target removed (02/04) and is closed")
    func removedDuringLogin() async throws {
        let a = try await TestTarget.start()
        defer { Task { await a.stop() } }
        let b = "iqn.2026-11.org.livemount:fleeting"
        try a.server.addTarget(TargetConfiguration(name: b, logicalUnits: []))
        let connection = try RawConnection(port: a.port)
        var security = ByteBuffer()
        for pair in ["InitiatorName=\(Self.initiator)", "TargetName=\(b)", "SessionType=Normal", "AuthMethod=None"] {
            security.writeString(pair + "\0")
        }
        let isid: UInt64 = 0x8000_0000_0042
        connection.send(
            LoginRequestPDU(transit: true, currentStage: 0, nextStage: 1, isid: isid, cmdSN: 1, data: security).pdu)
        guard case .pdu(0x23, let first, _) = connection.receive() else {
            Issue.record("no answer to the security stage")
            return
        }
        #expect(first[36] == 0)
        try await a.server.removeTarget(name: b)
        var operational = ByteBuffer()
        operational.writeString("HeaderDigest=None\0DataDigest=None\0")
        connection.send(
            LoginRequestPDU(transit: true, currentStage: 1, nextStage: 3, isid: isid, cmdSN: 1, data: operational).pdu)
        guard case .pdu(0x23, let last, _) = connection.receive() else {
            Issue.record("no login response after the target was removed")
            return
        }
        #expect(last[36] == 2 && last[37] == 4, "status \(last[36])/\(last[37])")
        #expect(last[1] & 0x80 == 0, "no transit to the full-feature phase")
        #expect(connection.drainUntilClosed().closed)
        #expect(a.server.sessionCount(target: b) == 0)
    }

    @Test("SendTargets in a running discovery session answers the targets and ACLs of the moment it is asked")
    func sendTargetsFollowsChanges() async throws {
        let a = try await TestTarget.start()
        defer { Task { await a.stop() } }
        let connection = try RawConnection(port: a.port)
        var security = ByteBuffer()
        for pair in ["InitiatorName=\(Self.initiator)", "SessionType=Discovery", "AuthMethod=None"] {
            security.writeString(pair + "\0")
        }
        connection.send(
            LoginRequestPDU(transit: true, currentStage: 0, nextStage: 1, isid: 7, cmdSN: 1, data: security).pdu)
        guard case .pdu(0x23, let h1, _) = connection.receive(), h1[36] == 0 else {
            Issue.record("discovery security stage refused")
            return
        }
        connection.send(
            LoginRequestPDU(transit: true, currentStage: 1, nextStage: 3, isid: 7, cmdSN: 1, data: ByteBuffer()).pdu)
        guard case .pdu(0x23, let h2, _) = connection.receive(), h2[36] == 0 else {
            Issue.record("discovery operational stage refused")
            return
        }
        var itt: UInt32 = 1
        func sendTargets() -> [String] {
            var header = BasicHeaderSegment(opcode: .textRequest)
            header.flags = 0x80
            header.initiatorTaskTag = itt
            header.setUInt32(0xFFFF_FFFF, at: 20)
            header.setUInt32(itt, at: 24)
            itt += 1
            connection.send(ISCSIPDU(header: header, data: ByteBuffer(bytes: Array("SendTargets=All\0".utf8))))
            guard case .pdu(0x24, _, let data) = connection.receive() else { return ["no answer"] }
            return String(decoding: data, as: UTF8.self).split(separator: "\0").filter { $0.hasPrefix("TargetName=") }
                .map { String($0.dropFirst("TargetName=".count)) }
        }
        #expect(sendTargets() == [a.targetName])
        let b = "iqn.2026-11.org.livemount:later"
        try a.server.addTarget(TargetConfiguration(name: b, logicalUnits: []))
        #expect(sendTargets() == [a.targetName, b].sorted())
        try a.server.updateLoginPolicy(target: a.targetName) { $0.allowedInitiators = [Self.other] }
        #expect(sendTargets() == [b])
        try await a.server.removeTarget(name: b)
        #expect(sendTargets().isEmpty)
    }
}
