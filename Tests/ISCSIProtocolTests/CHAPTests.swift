import Testing

@testable import ISCSIProtocol

@Suite("CHAP (RFC 7143 §12.1.3, RFC 1994)")
struct CHAPTests {
    let account = CHAPAccount(user: "alice", secret: "secretsecret12")
    let mutual = CHAPAccount(user: "target-user", secret: "targetsecret34")

    @Test("MD5 digest matches RFC 1321 vectors")
    func md5Vectors() {
        // RFC 1321 §A.5: MD5("abc") = 900150983cd24fb0d6963f7d28e17f72; here id 'a', secret 'b', challenge 'c'.
        #expect(TextParameters.hex(CHAPAlgorithm.md5.response(identifier: 0x61, secret: [0x62], challenge: [0x63]))
            == "0x900150983CD24FB0D6963F7D28E17F72")
    }

    @Test("one-way CHAP: challenge from the random source, correct response accepted")
    func oneWay() {
        var chap = CHAPAuthenticator(account: account, mutualAccount: nil)
        let first = chap.handle(["CHAP_A": "7,5"], randomBytes: LoginTest.fixedRandom)
        // SHA-256 (7) is the initiator's first choice.
        #expect(first == .respond([
            TextKeyValue("CHAP_A", "7"), TextKeyValue("CHAP_I", "7"),
            TextKeyValue("CHAP_C", TextParameters.hex((1...32).map { UInt8($0) })),
        ]))
        // Expected value computed independently (Python hashlib.sha256).
        let r = "0x1f785193db13671631502b7d41dc05efb2b0c0faed51ff6982f9fca65b7da81f"
        #expect(chap.handle(["CHAP_N": "alice", "CHAP_R": r], randomBytes: LoginTest.fixedRandom) == .succeeded([]))
        #expect(chap.isComplete)
    }

    @Test("MD5 one-way with base64 response")
    func md5Base64() {
        var chap = CHAPAuthenticator(account: account, mutualAccount: nil)
        guard case .respond(let keys) = chap.handle(["CHAP_A": "5"], randomBytes: LoginTest.fixedRandom) else {
            Issue.record("no challenge")
            return
        }
        #expect(keys.first == TextKeyValue("CHAP_A", "5"))
        #expect(keys.last == TextKeyValue("CHAP_C", "0x0102030405060708090A0B0C0D0E0F10"))
        // MD5(0x07 || "secretsecret12" || 01..10), computed with Python hashlib.
        let outcome = chap.handle(["CHAP_N": "alice", "CHAP_R": "0bkwrLG7Cy6ERdQfmUU+0hsQ=="], randomBytes: LoginTest.fixedRandom)
        #expect(outcome == .succeeded([]))
    }

    @Test("wrong secret, wrong user and unsupported algorithms fail")
    func failures() {
        var chap = CHAPAuthenticator(account: account, mutualAccount: nil)
        _ = chap.handle(["CHAP_A": "5"], randomBytes: LoginTest.fixedRandom)
        #expect(chap.handle(["CHAP_N": "alice", "CHAP_R": "0x930acb1bb0b2e8445d41f99453ed21b0"], randomBytes: LoginTest.fixedRandom) == .failed)

        var wrongUser = CHAPAuthenticator(account: account, mutualAccount: nil)
        _ = wrongUser.handle(["CHAP_A": "5"], randomBytes: LoginTest.fixedRandom)
        #expect(wrongUser.handle(["CHAP_N": "bob", "CHAP_R": "0x930acb1bb0b2e8445d41f99453ed21b1"], randomBytes: LoginTest.fixedRandom) == .failed)

        var algorithms = CHAPAuthenticator(account: account, mutualAccount: nil)
        #expect(algorithms.handle(["CHAP_A": "1,2,99"], randomBytes: LoginTest.fixedRandom) == .failed)

        var missingA = CHAPAuthenticator(account: account, mutualAccount: nil)
        #expect(missingA.handle(["CHAP_N": "alice"], randomBytes: LoginTest.fixedRandom) == .failed)
    }

    @Test("mutual CHAP: target answers the initiator's challenge with the mutual secret")
    func mutualCHAP() {
        var chap = CHAPAuthenticator(account: account, mutualAccount: mutual)
        _ = chap.handle(["CHAP_A": "5"], randomBytes: LoginTest.fixedRandom)
        let outcome = chap.handle(
            [
                "CHAP_N": "alice", "CHAP_R": "0x930acb1bb0b2e8445d41f99453ed21b1", "CHAP_I": "42",
                "CHAP_C": "0x" + String(repeating: "AA", count: 16),
            ], randomBytes: LoginTest.fixedRandom)
        // MD5(0x2a || "targetsecret34" || AA*16), computed with Python hashlib.
        #expect(outcome == .succeeded([
            TextKeyValue("CHAP_N", "target-user"), TextKeyValue("CHAP_R", "0x7928C613A6271F9958439528F48C9251"),
        ]))
    }

    @Test("mutual CHAP refused: not configured, reflected challenge, half a challenge")
    func mutualRefused() {
        let response = "0x930acb1bb0b2e8445d41f99453ed21b1"
        var notConfigured = CHAPAuthenticator(account: account, mutualAccount: nil)
        _ = notConfigured.handle(["CHAP_A": "5"], randomBytes: LoginTest.fixedRandom)
        #expect(notConfigured.handle(
            ["CHAP_N": "alice", "CHAP_R": response, "CHAP_I": "1", "CHAP_C": "0xAAAA"],
            randomBytes: LoginTest.fixedRandom) == .failed)

        var reflected = CHAPAuthenticator(account: account, mutualAccount: mutual)
        _ = reflected.handle(["CHAP_A": "5"], randomBytes: LoginTest.fixedRandom)
        #expect(reflected.handle(
            ["CHAP_N": "alice", "CHAP_R": response, "CHAP_I": "1", "CHAP_C": "0x0102030405060708090A0B0C0D0E0F10"],
            randomBytes: LoginTest.fixedRandom) == .failed)

        var half = CHAPAuthenticator(account: account, mutualAccount: mutual)
        _ = half.handle(["CHAP_A": "5"], randomBytes: LoginTest.fixedRandom)
        #expect(half.handle(["CHAP_N": "alice", "CHAP_R": response, "CHAP_I": "1"], randomBytes: LoginTest.fixedRandom) == .failed)
    }
}
