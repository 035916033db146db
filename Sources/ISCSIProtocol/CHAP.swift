import Crypto

// MARK: - Credentials and algorithms

/// A CHAP name and secret (RFC 7143 §12.1.3). ISCSIProtocol's own type: the server maps its
/// configuration onto it.
public struct CHAPAccount: Sendable, Equatable {
    public var user: String
    public var secret: String

    public init(user: String, secret: String) {
        self.user = user
        self.secret = secret
    }
}

/// CHAP_A values (RFC 7143 §12.1.3 uses the PPP CHAP algorithm numbers, RFC 1994 / IANA):
/// 5 = MD5 (mandatory), 6 = SHA-1, 7 = SHA-256 (as Linux LIO and newer open-iscsi offer them).
public enum CHAPAlgorithm: Int, Sendable, Equatable {
    case md5 = 5
    case sha1 = 6
    case sha256 = 7

    /// The challenge length we send: at least 16 bytes and at least the digest size.
    public var challengeLength: Int {
        switch self {
        case .md5: 16
        case .sha1: 20
        case .sha256: 32
        }
    }

    /// Response = H(identifier || secret || challenge) (RFC 1994 §4.1).
    public func response(identifier: UInt8, secret: [UInt8], challenge: [UInt8]) -> [UInt8] {
        let input = [identifier] + secret + challenge
        switch self {
        case .md5: return Array(Insecure.MD5.hash(data: input))
        case .sha1: return Array(Insecure.SHA1.hash(data: input))
        case .sha256: return Array(SHA256.hash(data: input))
        }
    }
}

// MARK: - Authenticator

/// The target side of one CHAP exchange (RFC 7143 §12.1.3), one-way or mutual:
///
/// ```
///  awaitingAlgorithm --CHAP_A--> awaitingResponse --CHAP_N, CHAP_R [, CHAP_I, CHAP_C]--> succeeded
///          \________________________ anything else _______________________________/--> failed
/// ```
///
/// Pure: the challenge bytes come from the caller's random source.
struct CHAPAuthenticator: Sendable {
    /// What one step of the exchange produced.
    enum Outcome: Equatable {
        /// Send these keys and wait for the next step.
        case respond([TextKeyValue])
        /// Authentication succeeded; send these keys (the mutual response, or nothing).
        case succeeded([TextKeyValue])
        /// Authentication failed: Login Response 02/01 (RFC 7143 §11.13.5).
        case failed
    }

    private enum State: Sendable {
        case awaitingAlgorithm
        case awaitingResponse(algorithm: CHAPAlgorithm, identifier: UInt8, challenge: [UInt8])
        case succeeded
        case failed
    }

    private var state: State = .awaitingAlgorithm
    private let account: CHAPAccount
    private let mutualAccount: CHAPAccount?

    /// - Parameters:
    ///   - account: the credentials the initiator must prove.
    ///   - mutualAccount: the credentials we prove when the initiator asks (mutual CHAP); nil refuses it.
    init(account: CHAPAccount, mutualAccount: CHAPAccount?) {
        self.account = account
        self.mutualAccount = mutualAccount
    }

    var isComplete: Bool {
        if case .succeeded = state { return true }
        return false
    }

    /// Handles the CHAP_* keys of one login request.
    mutating func handle(_ keys: [String: String], randomBytes: (Int) -> [UInt8]) -> Outcome {
        switch state {
        case .awaitingAlgorithm:
            // RFC 7143 §12.1.3: the initiator sends CHAP_A=<A1,A2,...>; we pick the first we support.
            guard keys.count == 1, let offered = keys["CHAP_A"] else { return fail() }
            let algorithm = offered.split(separator: ",").lazy.compactMap { Int($0).flatMap(CHAPAlgorithm.init) }.first
            guard let algorithm else { return fail() }
            let random = randomBytes(algorithm.challengeLength + 1)
            guard random.count == algorithm.challengeLength + 1 else { return fail() }
            let identifier = random[0]
            let challenge = Array(random.dropFirst())
            state = .awaitingResponse(algorithm: algorithm, identifier: identifier, challenge: challenge)
            return .respond([
                TextKeyValue("CHAP_A", String(algorithm.rawValue)),
                TextKeyValue("CHAP_I", String(identifier)),
                TextKeyValue("CHAP_C", TextParameters.hex(challenge)),
            ])

        case .awaitingResponse(let algorithm, let identifier, let challenge):
            let allowed: Set<String> = ["CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"]
            guard keys.keys.allSatisfy(allowed.contains), let name = keys["CHAP_N"], let responseText = keys["CHAP_R"],
                let response = TextParameters.binary(responseText)
            else { return fail() }
            let expected = algorithm.response(
                identifier: identifier, secret: Array(account.secret.utf8), challenge: challenge)
            guard name == account.user, constantTimeEqual(response, expected) else { return fail() }

            // Mutual CHAP: the initiator challenges us in the same PDU (RFC 7143 §12.1.3).
            switch (keys["CHAP_I"], keys["CHAP_C"]) {
            case (nil, nil):
                state = .succeeded
                return .succeeded([])
            case (let idText?, let challengeText?):
                guard let mutualAccount, let idValue = TextParameters.number(idText), idValue <= 255,
                    let initiatorChallenge = TextParameters.binary(challengeText), !initiatorChallenge.isEmpty,
                    // RFC 7143 §12.1.3: a challenge equal to ours is a reflection attack.
                    initiatorChallenge != challenge
                else { return fail() }
                let mutualResponse = algorithm.response(
                    identifier: UInt8(idValue), secret: Array(mutualAccount.secret.utf8), challenge: initiatorChallenge)
                state = .succeeded
                return .succeeded([
                    TextKeyValue("CHAP_N", mutualAccount.user),
                    TextKeyValue("CHAP_R", TextParameters.hex(mutualResponse)),
                ])
            default:
                return fail()
            }

        case .succeeded, .failed:
            return fail()
        }
    }

    private mutating func fail() -> Outcome {
        state = .failed
        return .failed
    }

    /// Compares without an early exit so timing does not reveal the matching prefix.
    private func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in a.indices { diff |= a[i] ^ b[i] }
        return diff == 0
    }
}
