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

    /// Starts a login against the server's targets and policies as they are now: the handler creates the
    /// driver when the connection's first Login Request arrives, so a change made through the control plane
    /// applies to every login that starts after it.
    init(server: ServerContext) {
        var configuration = server.loginConfiguration()
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

    /// The answer in place of a successful final Login Response when the target was removed while the login
    /// ran: RFC 7143 §11.13.5, "Target removed" (02/04), no keys, then close.
    func targetRemoved(instead response: LoginResponsePDU) -> LoginResponsePDU {
        LoginResponsePDU(
            transit: false, currentStage: response.currentStage, nextStage: 0, isid: response.isid, tsih: 0,
            initiatorTaskTag: response.initiatorTaskTag, sequence: response.sequence, status: .targetRemoved)
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
