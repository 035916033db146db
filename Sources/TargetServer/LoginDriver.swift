import ISCSIProtocol
import NIOCore

/// Connects a connection's login phase to `LoginStateMachine`: builds its
/// configuration from the server's, and turns its actions into what the
/// connection handler does next.
struct LoginDriver {
    enum Outcome {
        case respond(LoginResponsePDU)
        /// Send, then close; the string says why, for the log.
        case fail(LoginResponsePDU, String)
        case complete(LoginResponsePDU, Completed)
    }

    /// What the full-feature phase starts from.
    struct Completed {
        var parameters: ConnectionParameters
        var session: SessionParameters
        var nextStatSN: UInt32
        var expCmdSN: UInt32
    }

    private var machine: LoginStateMachine

    init(server: ServerContext) {
        var configuration = server.loginTemplate
        configuration.newTSIH = server.registry.allocateTSIH()
        configuration.initialStatSN = UInt32.random(in: 1...0x7FFF_FFFF)
        machine = LoginStateMachine(configuration: configuration, randomBytes: LoginStateMachine.systemRandomBytes)
    }

    /// The answer to any other PDU before login completes: RFC 7143 §6.3,
    /// Login Response "invalid request type during login" (02/0B), then close.
    func invalidDuringLogin(_ pdu: ISCSIPDU) -> LoginResponsePDU {
        LoginResponsePDU(
            transit: false, currentStage: 0, nextStage: 0, isid: 0, tsih: 0,
            initiatorTaskTag: pdu.header.initiatorTaskTag,
            sequence: SequenceNumbers(statSN: 0, expCmdSN: 0, maxCmdSN: 0), status: .invalidDuringLogin)
    }

    mutating func received(_ request: LoginRequestPDU) -> Outcome {
        switch machine.receivedLoginRequest(request) {
        case .sendResponse(let response):
            return .respond(response)
        case .sendResponseAndClose(let response):
            let status = response.status
            return .fail(
                response,
                "status class \(status.statusClass) detail \(status.detail) "
                    + "(RFC 7143 §11.13.5) for \(request.isid == 0 ? "?" : String(request.isid, radix: 16))")
        case .loginComplete(let response, let session):
            let parameters = ConnectionParameters(
                maxRecvDataSegmentLength: session.maxRecvDataSegmentLength,
                maxXmitDataSegmentLength: session.maxXmitDataSegmentLength,
                maxBurstLength: session.maxBurstLength, firstBurstLength: session.firstBurstLength,
                initialR2T: session.initialR2T, immediateData: session.immediateData,
                maxOutstandingR2T: session.maxOutstandingR2T, dataPDUInOrder: session.dataPDUInOrder,
                headerDigest: session.headerDigest, dataDigest: session.dataDigest,
                isDiscovery: session.sessionType == .discovery, initiatorName: session.initiatorName,
                targetName: session.targetName, isid: session.isid, tsih: session.tsih)
            return .complete(
                response,
                Completed(
                    parameters: parameters, session: session, nextStatSN: response.sequence.statSN &+ 1,
                    expCmdSN: response.sequence.expCmdSN))
        }
    }
}

extension ServerContext {
    /// The login configuration every connection starts from (RFC 7143 §6, §12).
    static func makeLoginTemplate(_ configuration: ServerConfiguration, portalGroupTag: UInt16) -> LoginConfiguration {
        func account(_ c: CHAPCredentials?) -> CHAPAccount? { c.map { CHAPAccount(user: $0.user, secret: $0.secret) } }
        var policies: [String: TargetLoginPolicy] = [:]
        for target in configuration.targets {
            policies[target.name] = TargetLoginPolicy(
                alias: target.alias, chap: account(target.chap), mutualChap: account(target.mutualChap),
                allowedInitiators: target.allowedInitiators)
        }
        let l = configuration.limits
        let limits = TargetLimits(
            maxRecvDataSegmentLength: l.maxRecvDataSegmentLength, maxBurstLength: l.maxBurstLength,
            firstBurstLength: l.firstBurstLength, initialR2T: l.initialR2T, immediateData: l.immediateData,
            maxOutstandingR2T: l.maxOutstandingR2T, commandWindow: l.commandWindow)
        return LoginConfiguration(
            portalGroupTag: portalGroupTag, targets: policies, discoveryChap: account(configuration.discoveryChap),
            limits: limits, newTSIH: 0, initialStatSN: 1)
    }

    /// Targets for SendTargets, each with its ACL and this server's portals.
    var discoveryTargets: [DiscoveryTarget] {
        let addresses = portalAddresses
        return targets.values.sorted { $0.name < $1.name }.map {
            DiscoveryTarget(name: $0.name, addresses: addresses, allowedInitiators: $0.configuration.allowedInitiators)
        }
    }
}
