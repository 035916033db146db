import NIOCore

@testable import ISCSIProtocol

/// Helpers shared by the login and text tests.
enum LoginTest {
    static let target = "iqn.2026-01.io.livemount:disk1"
    static let otherTarget = "iqn.2026-01.io.livemount:disk2"
    static let initiator = "iqn.1994-05.com.redhat:client"
    static let isid: UInt64 = 0x0002_3D00_0001

    /// Identifier 7, then challenge bytes 1, 2, 3, ...
    static let fixedRandom: @Sendable (Int) -> [UInt8] = { count in [7] + (1..<max(count, 1)).map { UInt8($0 & 0xFF) } }

    static func text(_ pairs: [(String, String)]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeBytes(TextParameters.encode(pairs.map { TextKeyValue($0.0, $0.1) }))
        return buffer
    }

    static func request(
        _ pairs: [(String, String)], csg: UInt8, nsg: UInt8, transit: Bool, continue: Bool = false, tsih: UInt16 = 0,
        cmdSN: UInt32 = 10, itt: UInt32 = 0x1234
    ) -> LoginRequestPDU {
        LoginRequestPDU(
            transit: transit, continue: `continue`, currentStage: csg, nextStage: nsg, isid: isid, tsih: tsih,
            initiatorTaskTag: itt, cid: 1, cmdSN: cmdSN, expStatSN: 0, data: text(pairs))
    }

    static func configuration(
        policy: TargetLoginPolicy = TargetLoginPolicy(), discoveryChap: CHAPAccount? = nil,
        limits: TargetLimits = TargetLimits(), existingSessions: Set<UInt16> = []
    ) -> LoginConfiguration {
        LoginConfiguration(
            portalGroupTag: 1, targets: [target: policy, otherTarget: TargetLoginPolicy()],
            discoveryChap: discoveryChap, limits: limits, newTSIH: 0x55, initialStatSN: 100,
            existingSessions: existingSessions)
    }

    static func machine(_ configuration: LoginConfiguration = configuration()) -> LoginStateMachine {
        LoginStateMachine(configuration: configuration, randomBytes: fixedRandom)
    }

    static func pairs(_ pdu: LoginResponsePDU) -> [String: String] {
        let list = (try? TextParameters.parse(pdu.data)) ?? []
        return Dictionary(list.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
    }

    static let normalLeading: [(String, String)] = [
        ("InitiatorName", initiator), ("TargetName", target), ("SessionType", "Normal"), ("AuthMethod", "None"),
    ]
}

extension LoginStateMachine.Action {
    /// The response, whatever the case.
    var response: LoginResponsePDU {
        switch self {
        case .sendResponse(let r), .sendResponseAndClose(let r), .loginComplete(let r, _): return r
        }
    }
    var closes: Bool {
        if case .sendResponseAndClose = self { return true }
        return false
    }
    var session: SessionParameters? {
        if case .loginComplete(_, let p) = self { return p }
        return nil
    }
}
