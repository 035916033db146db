import BlockDevice
import Foundation
import Testing

@testable import TargetServer

/// CHAP (RFC 7143 §12.1.3) and initiator ACLs, with libiscsi as the initiator.
@Suite("CHAP and ACLs end to end")
struct AuthenticationTests {
    static let initiator = "iqn.2026-11.org.livemount:auth-initiator"
    static let chap = CHAPCredentials(user: "alice", secret: "correct-horse-42")
    static let mutual = CHAPCredentials(user: "target", secret: "battery-staple-7")

    /// Logs in and reads capacity; returns the error if login fails.
    private func attempt(
        _ target: TestTarget, initiator: String = initiator, chap: (String, String)?, mutual: (String, String)? = nil
    ) async throws -> ISCSIClientError? {
        try await onThread {
            // Generous: CI runs every suite at once on two cores, and a login that times out is not a refusal.
            let client = ISCSIClient(timeoutSeconds: 30)
            do {
                try client.connect(
                    url: target.url(), initiatorName: initiator, chap: chap.map { (user: $0.0, secret: $0.1) },
                    mutualChap: mutual.map { (user: $0.0, secret: $0.1) })
                _ = try client.readCapacity16()
                try client.logout()
                return nil
            } catch let error as ISCSIClientError {
                return error
            }
        }
    }

    @Test("one-way CHAP: the right secret logs in, a wrong one and none are refused")
    func oneWay() async throws {
        let target = try await TestTarget.start(chap: Self.chap)
        defer { Task { await target.stop() } }
        let right = try await attempt(target, chap: ("alice", "correct-horse-42"))
        #expect(right == nil, "the right secret was refused: \(String(describing: right))")
        let wrong = try await attempt(target, chap: ("alice", "wrong-secret-123"))
        #expect(wrong?.code == .loginFailed)
        let wrongUser = try await attempt(target, chap: ("mallory", "correct-horse-42"))
        #expect(wrongUser?.code == .loginFailed)
        let none = try await attempt(target, chap: nil)
        #expect(none?.code == .loginFailed)
    }

    @Test("mutual CHAP: the target proves its own secret")
    func mutualCHAP() async throws {
        let target = try await TestTarget.start(chap: Self.chap, mutualChap: Self.mutual)
        defer { Task { await target.stop() } }
        #expect(
            try await attempt(target, chap: ("alice", "correct-horse-42"), mutual: ("target", "battery-staple-7")) == nil)
        // The initiator expects another target secret: it refuses the target's answer.
        let impostor = try await attempt(
            target, chap: ("alice", "correct-horse-42"), mutual: ("target", "not-the-target-1"))
        #expect(impostor != nil)
    }

    @Test("an initiator not on the ACL is refused; a listed one logs in")
    func acl() async throws {
        let target = try await TestTarget.start(allowed: [Self.initiator])
        defer { Task { await target.stop() } }
        #expect(try await attempt(target, chap: nil) == nil)
        let stranger = try await attempt(target, initiator: "iqn.2026-11.org.livemount:stranger", chap: nil)
        #expect(stranger?.code == .loginFailed)
    }

    @Test("discovery hides targets an initiator may not log in to")
    func discoveryHonoursACL() async throws {
        let target = try await TestTarget.start(allowed: [Self.initiator])
        defer { Task { await target.stop() } }
        let (allowed, stranger) = try await onThread {
            let portal = "127.0.0.1:\(target.port)"
            return (
                try ISCSIClient.discovery(portal: portal, initiatorName: Self.initiator).map(\.targetName),
                // libiscsi reports an empty SendTargets answer as an error; either way the target must not show.
                (try? ISCSIClient.discovery(portal: portal, initiatorName: "iqn.2026-11.org.livemount:x"))?
                    .map(\.targetName) ?? []
            )
        }
        #expect(allowed == [TestTarget.defaultName])
        #expect(!stranger.contains(TestTarget.defaultName))
    }
}
