import NIOCore

// MARK: - Configuration

/// Who may log in to one target and how (ISCSIProtocol's own view of a target's configuration).
public struct TargetLoginPolicy: Sendable, Equatable {
    /// TargetAlias declared in the final login response (RFC 7143 §13.6); nil sends none.
    public var alias: String?
    /// Credentials the initiator must prove with CHAP; nil lets AuthMethod=None through.
    public var chap: CHAPAccount?
    /// Credentials we prove when the initiator asks for mutual CHAP; nil refuses mutual CHAP.
    public var mutualChap: CHAPAccount?
    /// InitiatorNames allowed to log in (compared case-insensitively, RFC 3722); empty = any.
    public var allowedInitiators: [String]

    public init(
        alias: String? = nil, chap: CHAPAccount? = nil, mutualChap: CHAPAccount? = nil, allowedInitiators: [String] = []
    ) {
        self.alias = alias
        self.chap = chap
        self.mutualChap = mutualChap
        self.allowedInitiators = allowedInitiators
    }

    /// Whether `initiatorName` passes the ACL.
    public func allows(_ initiatorName: String) -> Bool {
        allowedInitiators.isEmpty || allowedInitiators.contains { $0.lowercased() == initiatorName.lowercased() }
    }
}

/// Everything one connection's login needs to know, built by the server per connection.
public struct LoginConfiguration: Sendable {
    /// TargetPortalGroupTag of the portal the connection arrived on (RFC 7143 §13.9).
    public var portalGroupTag: UInt16
    /// Targets by iSCSI name.
    public var targets: [String: TargetLoginPolicy]
    /// CHAP the initiator must prove for a discovery session; nil = none.
    public var discoveryChap: CHAPAccount?
    /// Credentials for mutual CHAP in a discovery session.
    public var discoveryMutualChap: CHAPAccount?
    /// Operational limits.
    public var limits: TargetLimits
    /// The TSIH given to the session if this login completes (non-zero, RFC 7143 §11.13.4).
    public var newTSIH: UInt16
    /// StatSN of the first login response (RFC 7143 §11.13.3); later responses count up from it.
    public var initialStatSN: UInt32
    /// TSIHs of sessions that exist now; a login naming one of them is refused with 02/06
    /// (MaxConnections=1), any other non-zero TSIH with 02/0A.
    public var existingSessions: Set<UInt16>

    public init(
        portalGroupTag: UInt16 = 1, targets: [String: TargetLoginPolicy], discoveryChap: CHAPAccount? = nil,
        discoveryMutualChap: CHAPAccount? = nil, limits: TargetLimits = TargetLimits(), newTSIH: UInt16,
        initialStatSN: UInt32, existingSessions: Set<UInt16> = []
    ) {
        self.portalGroupTag = portalGroupTag
        self.targets = targets
        self.discoveryChap = discoveryChap
        self.discoveryMutualChap = discoveryMutualChap
        self.limits = limits
        self.newTSIH = newTSIH
        self.initialStatSN = initialStatSN
        self.existingSessions = existingSessions
    }
}

// MARK: - State machine

/// The target side of the login phase of one connection (RFC 7143 §6.3, §11.12, §11.13).
///
/// Stages (CSG/NSG, RFC 7143 §6.3, §11.12.3):
///
/// ```
///            first Login Request (CSG=0 or 1)
///                        │
///                        ▼
///   ┌──── SecurityNegotiation (0) ── T=1, NSG=1 ──▶ LoginOperationalNegotiation (1)
///   │          │  AuthMethod, CHAP_A → CHAP_I/CHAP_C,              │
///   │          │  CHAP_N/CHAP_R [CHAP_I/CHAP_C] → [CHAP_N/CHAP_R]  │ T=1, NSG=3
///   │          └────────────── T=1, NSG=3 ──────────────┐          │
///   │                                                   ▼          ▼
///   │                                            FullFeaturePhase (3)  → .loginComplete
///   └── any failure (status class 02/03) ──▶ failed → .sendResponseAndClose
/// ```
///
/// The target answers T=1 only when the initiator asked for it and the stage may end: security
/// ends only once authentication succeeded; operational negotiation ends once our own offers
/// are answered. Text split with the C bit is reassembled before it is processed; our own
/// responses longer than 8192 bytes are split with the C bit and continued on empty requests
/// (RFC 7143 §11.12.2, §11.13.2).
///
/// Pure: no I/O, no clock; challenges come from the injected random source. One connection
/// per session (MaxConnections=1), ErrorRecoveryLevel 0.
public struct LoginStateMachine: Sendable {
    /// What the caller must do after one Login Request.
    public enum Action: Sendable {
        /// Send this response and wait for the next Login Request.
        case sendResponse(LoginResponsePDU)
        /// Send this (failure) response and close the connection (RFC 7143 §11.13.5: the
        /// target terminates the connection after a login reject).
        case sendResponseAndClose(LoginResponsePDU)
        /// Send this final response (T=1, NSG=FullFeaturePhase); afterwards the connection is in the
        /// full feature phase with these parameters. Digests apply from the NEXT PDU on. The next
        /// StatSN is `response.sequence.statSN + 1`; the session's ExpCmdSN is `response.sequence.expCmdSN`.
        case loginComplete(LoginResponsePDU, SessionParameters)
    }

    /// The largest data segment of a login PDU during login (RFC 7143 §13.12: 8192 until negotiated).
    public static let maxLoginDataSegmentLength = 8192

    /// Identity and progress of a login that got past its first request.
    private struct Context: Sendable {
        var stage: LoginStage
        let isid: UInt64
        let tsih: UInt16
        let cid: UInt16
        var sessionType: SessionType = .normal
        var initiatorName = ""
        var targetName: String?
        var policy = TargetLoginPolicy()
        /// Whether the leading text set (InitiatorName, SessionType, TargetName) was processed.
        var identified = false
        /// nil until AuthMethod was negotiated.
        var authMethod: AuthMethod?
        var chap: CHAPAuthenticator?
        /// Text of a request sequence with C=1, waiting for the PDU with C=0.
        var pendingRequestText: [UInt8] = []
        var operational: OperationalNegotiation
        var sentPortalGroupTag = false
        var sentDeclarations = false

        var authenticated: Bool {
            switch authMethod {
            case .noAuthentication?: return true
            case .chap?: return chap?.isComplete ?? false
            case nil: return false
            }
        }
    }

    /// AuthMethod values we implement (RFC 7143 §12.1).
    private enum AuthMethod: Sendable, Equatable {
        /// AuthMethod=None.
        case noAuthentication
        case chap
    }

    /// A response too long for one PDU: what is left and how the last part ends.
    private struct PendingResponse: Sendable {
        var remaining: [UInt8]
        var transit: Bool
        var nextStage: LoginStage
    }

    private enum State: Sendable {
        case awaitingFirstRequest
        case negotiating(Context)
        case sendingContinuation(Context, PendingResponse)
        case finished
    }

    private var state: State = .awaitingFirstRequest
    private let configuration: LoginConfiguration
    private let randomBytes: @Sendable (Int) -> [UInt8]
    private var nextStatSN: UInt32

    /// - Parameters:
    ///   - configuration: targets, limits, TSIH and StatSN for this connection.
    ///   - randomBytes: returns `count` unpredictable bytes (CHAP identifiers and challenges).
    public init(configuration: LoginConfiguration, randomBytes: @escaping @Sendable (Int) -> [UInt8]) {
        self.configuration = configuration
        self.randomBytes = randomBytes
        self.nextStatSN = configuration.initialStatSN
    }

    /// A random source backed by the system generator, for production use.
    public static let systemRandomBytes: @Sendable (Int) -> [UInt8] = { count in
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }

    /// Whether login ended (completed or failed); further requests are protocol errors.
    public var isFinished: Bool {
        if case .finished = state { return true }
        return false
    }

    // MARK: - Events

    /// Processes one Login Request (RFC 7143 §11.12).
    public mutating func receivedLoginRequest(_ request: LoginRequestPDU) -> Action {
        switch state {
        case .finished:
            return fail(request, .initiatorError)

        case .awaitingFirstRequest:
            if let failure = checkHeader(request, expectedStage: nil) { return fail(request, failure) }
            // RFC 7143 §11.12.4 (TSIH): non-zero in a leading login adds a connection to a session.
            // We support MaxConnections=1, so that is refused.
            if request.tsih != 0 {
                let status: LoginStatus =
                    configuration.existingSessions.contains(request.tsih) ? .tooManyConnections : .sessionDoesNotExist
                return fail(request, status)
            }
            guard let stage = LoginStage(rawValue: request.currentStage) else { return fail(request, .initiatorError) }
            let context = Context(
                stage: stage, isid: request.isid, tsih: request.tsih, cid: request.cid,
                operational: OperationalNegotiation(limits: configuration.limits))
            return process(request, context: context)

        case .negotiating(let context):
            if let failure = checkHeader(request, expectedStage: context.stage) { return fail(request, failure) }
            guard request.isid == context.isid, request.tsih == context.tsih, request.cid == context.cid else {
                return fail(request, .initiatorError)
            }
            return process(request, context: context)

        case .sendingContinuation(let context, var pending):
            // RFC 7143 §11.13.2 (C bit): the initiator asks for the rest with an empty Login Request.
            guard request.data.readableBytes == 0, !request.continue, request.currentStage == context.stage.rawValue,
                request.isid == context.isid
            else { return fail(request, .initiatorError) }
            let chunk = Array(pending.remaining.prefix(Self.maxLoginDataSegmentLength))
            pending.remaining.removeFirst(chunk.count)
            if !pending.remaining.isEmpty {
                state = .sendingContinuation(context, pending)
                return .sendResponse(response(request, context: context, transit: false, continue: true, chunk))
            }
            return finish(
                request, context: context, transit: pending.transit, nextStage: pending.nextStage, text: chunk)
        }
    }

    // MARK: - Header checks

    /// Checks version, C/T bits and stage numbers (RFC 7143 §11.12.1-§11.12.3). Returns the failure status.
    private func checkHeader(_ request: LoginRequestPDU, expectedStage: LoginStage?) -> LoginStatus? {
        // RFC 7143 §11.12.4: we support version 0 only.
        if request.versionMin > 0 { return .unsupportedVersion }
        // RFC 7143 §11.12.2: C=1 requires T=0.
        if request.continue && request.transit { return .initiatorError }
        // CSG must be a real stage before the full feature phase; 2 is reserved.
        guard let current = LoginStage(rawValue: request.currentStage), current != .fullFeaturePhase else {
            return .initiatorError
        }
        if let expectedStage, current != expectedStage { return .initiatorError }
        if request.transit {
            // RFC 7143 §6.3: transitions only move forward, and NSG=2 is reserved.
            guard let next = LoginStage(rawValue: request.nextStage), next.rawValue > current.rawValue else {
                return .initiatorError
            }
        }
        return nil
    }

    // MARK: - Processing a complete text set

    private mutating func process(_ request: LoginRequestPDU, context: Context) -> Action {
        var context = context
        context.pendingRequestText += request.data.readableBytesView
        if request.continue {
            // RFC 7143 §11.12.2: the text continues; answer with an empty response and wait.
            guard context.pendingRequestText.count <= 64 * 1024 else { return fail(request, .initiatorError) }
            state = .negotiating(context)
            return .sendResponse(response(request, context: context, transit: false, continue: false, []))
        }
        let text = context.pendingRequestText
        context.pendingRequestText = []
        let pairs: [TextKeyValue]
        do {
            pairs = try TextParameters.parse(text)
        } catch {
            return fail(request, .initiatorError)
        }

        if !context.identified {
            if let failure = identify(pairs, request: request, context: &context) { return fail(request, failure) }
        }

        var answers: [TextKeyValue] = []
        if !context.sentPortalGroupTag && context.sessionType == .normal {
            // RFC 7143 §13.9: the first response of a Normal session carries TargetPortalGroupTag.
            answers.append(TextKeyValue("TargetPortalGroupTag", String(configuration.portalGroupTag)))
            context.sentPortalGroupTag = true
        }
        var chapKeys: [String: String] = [:]
        for pair in pairs {
            switch pair.key {
            case "InitiatorName":
                guard pair.value == context.initiatorName else { return fail(request, .initiatorError) }
            case "SessionType":
                guard pair.value == context.sessionType.rawValue else { return fail(request, .initiatorError) }
            case "TargetName":
                if context.sessionType == .normal && pair.value != context.targetName {
                    return fail(request, .initiatorError)
                }
            case "AuthMethod":
                // RFC 7143 §6.3: security keys belong to the security stage and are negotiated once.
                guard context.stage == .securityNegotiation, context.authMethod == nil else {
                    return fail(request, .initiatorError)
                }
                switch negotiateAuthMethod(pair, context: context) {
                case .chap:
                    context.authMethod = .chap
                    context.chap = CHAPAuthenticator(account: chapAccount(context), mutualAccount: mutualAccount(context))
                    answers.append(TextKeyValue("AuthMethod", "CHAP"))
                case .noAuthentication:
                    context.authMethod = AuthMethod.noAuthentication
                    answers.append(TextKeyValue("AuthMethod", "None"))
                case nil:
                    return fail(request, .authenticationFailure)
                }
            case let key where key.hasPrefix("CHAP_"):
                guard context.stage == .securityNegotiation, context.authMethod == .chap else {
                    return fail(request, .initiatorError)
                }
                chapKeys[key] = pair.value
            case "SendTargets":
                // RFC 7143 §12.3 / Appendix C: only meaningful in the full feature phase.
                answers.append(TextKeyValue(pair.key, "Irrelevant"))
            case let key where key.hasPrefix("X-") || key.hasPrefix("X#"):
                // RFC 7143 §6.2 / §13.22-23: private and public extension keys we do not implement.
                answers.append(TextKeyValue(key, "NotUnderstood"))
            default:
                switch context.operational.handle(pair, sessionType: context.sessionType) {
                case .answer(let answer): answers.append(answer)
                case .noAnswer: break
                case .fail(let status): return fail(request, status)
                }
            }
        }

        // Authentication (RFC 7143 §12.1.3).
        let authRequired = chapAccountIfRequired(context) != nil
        if context.stage == .securityNegotiation {
            if context.authMethod == .chap && !context.authenticated {
                guard var chap = context.chap, !chapKeys.isEmpty || pairs.contains(where: { $0.key == "AuthMethod" }) else {
                    return fail(request, .authenticationFailure)
                }
                if !chapKeys.isEmpty {
                    switch chap.handle(chapKeys, randomBytes: randomBytes) {
                    case .respond(let keys): answers += keys
                    case .succeeded(let keys): answers += keys
                    case .failed: return fail(request, .authenticationFailure)
                    }
                    context.chap = chap
                }
            } else if !chapKeys.isEmpty {
                return fail(request, .initiatorError)
            }
            // Leaving security without AuthMethod: allowed only when no authentication is needed
            // (AuthMethod defaults to None, RFC 7143 §13 / §12.1).
            if request.transit && context.authMethod == nil {
                guard !authRequired else { return fail(request, .authenticationFailure) }
                context.authMethod = AuthMethod.noAuthentication
            }
        } else if authRequired && !context.authenticated {
            // The initiator skipped the security stage but the target requires CHAP (RFC 7143 §6.3).
            return fail(request, .authenticationFailure)
        }

        // Decide whether this response transits (RFC 7143 §6.3, §11.13.3).
        var transit = request.transit
        let nextStage = LoginStage(rawValue: request.nextStage) ?? .loginOperationalNegotiation
        if context.stage == .securityNegotiation && !context.authenticated { transit = false }
        if (transit && nextStage == .fullFeaturePhase) || context.stage == .loginOperationalNegotiation {
            // Our offers for keys whose defaults we cannot accept (RFC 7143 §6.2); answers come back
            // in the next request, so this response must not transit.
            let offers = context.operational.neededOffers(sessionType: context.sessionType)
            answers += offers
            if context.operational.awaitingAnswers { transit = false }
        }
        if !context.sentDeclarations
            && (context.stage == .loginOperationalNegotiation || (transit && nextStage == .fullFeaturePhase))
        {
            // Declarations the target makes by itself (RFC 7143 §13.12, §13.6).
            answers.append(TextKeyValue("MaxRecvDataSegmentLength", String(configuration.limits.maxRecvDataSegmentLength)))
            if context.sessionType == .normal, let alias = context.policy.alias {
                answers.append(TextKeyValue("TargetAlias", alias))
            }
            context.sentDeclarations = true
        }

        let encoded = TextParameters.encode(answers)
        if encoded.count > Self.maxLoginDataSegmentLength {
            // RFC 7143 §11.13.2: split with C=1; T stays 0 until the last part.
            let first = Array(encoded.prefix(Self.maxLoginDataSegmentLength))
            let pending = PendingResponse(
                remaining: Array(encoded.dropFirst(Self.maxLoginDataSegmentLength)), transit: transit,
                nextStage: nextStage)
            state = .sendingContinuation(context, pending)
            return .sendResponse(response(request, context: context, transit: false, continue: true, first))
        }
        return finish(request, context: context, transit: transit, nextStage: nextStage, text: encoded)
    }

    /// Sends the last part of a response and moves to the next stage when it transits.
    private mutating func finish(
        _ request: LoginRequestPDU, context: Context, transit: Bool, nextStage: LoginStage, text: [UInt8]
    ) -> Action {
        var context = context
        guard transit else {
            state = .negotiating(context)
            return .sendResponse(response(request, context: context, transit: false, continue: false, text))
        }
        if nextStage == .fullFeaturePhase {
            var pdu = response(request, context: context, transit: true, continue: false, text, nextStage: nextStage)
            // RFC 7143 §11.13.4: the final response of a new session carries the new TSIH.
            pdu.tsih = configuration.newTSIH
            var parameters = context.operational.parameters
            parameters.sessionType = context.sessionType
            parameters.initiatorName = context.initiatorName
            parameters.targetName = context.sessionType == .normal ? context.targetName : nil
            parameters.isid = context.isid
            parameters.tsih = configuration.newTSIH
            parameters.cid = context.cid
            parameters.maxRecvDataSegmentLength = configuration.limits.maxRecvDataSegmentLength
            state = .finished
            return .loginComplete(pdu, parameters)
        }
        let pdu = response(request, context: context, transit: true, continue: false, text, nextStage: nextStage)
        context.stage = nextStage
        state = .negotiating(context)
        return .sendResponse(pdu)
    }

    // MARK: - Leading request

    /// Reads InitiatorName, SessionType and TargetName from the first text set and applies the
    /// target lookup and ACL (RFC 7143 §11.12, §13.4, §13.5, §13.21).
    private func identify(_ pairs: [TextKeyValue], request: LoginRequestPDU, context: inout Context) -> LoginStatus? {
        let keys = Dictionary(pairs.map { ($0.key, $0.value) }, uniquingKeysWith: { first, _ in first })
        // RFC 7143 §13.5: InitiatorName MUST be in the first Login Request.
        guard let initiatorName = keys["InitiatorName"], !initiatorName.isEmpty else { return .missingParameter }
        context.initiatorName = initiatorName
        switch keys["SessionType"] {
        case nil, "Normal": context.sessionType = .normal
        case "Discovery": context.sessionType = .discovery
        default: return .sessionTypeNotSupported
        }
        if context.sessionType == .normal {
            // RFC 7143 §13.4: TargetName is required for a Normal session.
            guard let targetName = keys["TargetName"], !targetName.isEmpty else { return .missingParameter }
            let policy =
                configuration.targets[targetName]
                ?? configuration.targets.first { $0.key.lowercased() == targetName.lowercased() }?.value
            guard let policy else { return .targetNotFound }
            guard policy.allows(initiatorName) else { return .authorizationFailure }
            context.targetName = targetName
            context.policy = policy
        } else {
            context.policy = TargetLoginPolicy(
                chap: configuration.discoveryChap, mutualChap: configuration.discoveryMutualChap)
        }
        // Starting in the operational stage skips authentication; not allowed when CHAP is required.
        if context.stage == .loginOperationalNegotiation && context.policy.chap != nil { return .authenticationFailure }
        context.identified = true
        return nil
    }

    /// AuthMethod list negotiation (RFC 7143 §12.1): CHAP when the target requires it, otherwise
    /// None if offered. nil means no acceptable method.
    private func negotiateAuthMethod(_ pair: TextKeyValue, context: Context) -> AuthMethod? {
        let offered = pair.values
        if context.policy.chap != nil { return offered.contains("CHAP") ? .chap : nil }
        return offered.contains("None") ? AuthMethod.noAuthentication : nil
    }

    private func chapAccountIfRequired(_ context: Context) -> CHAPAccount? { context.policy.chap }

    private func chapAccount(_ context: Context) -> CHAPAccount {
        context.policy.chap ?? CHAPAccount(user: "", secret: "")
    }

    private func mutualAccount(_ context: Context) -> CHAPAccount? { context.policy.mutualChap }

    // MARK: - Building responses

    /// A login response echoing ISID and ITT, with the next StatSN (RFC 7143 §11.13).
    private mutating func response(
        _ request: LoginRequestPDU, context: Context?, transit: Bool, continue: Bool, _ text: [UInt8],
        nextStage: LoginStage? = nil, status: LoginStatus = .success
    ) -> LoginResponsePDU {
        var data = ByteBuffer()
        data.writeBytes(text)
        let window = UInt32(clamping: max(configuration.limits.commandWindow, 1))
        let sequence = SequenceNumbers(
            statSN: nextStatSN, expCmdSN: request.cmdSN, maxCmdSN: request.cmdSN &+ window &- 1)
        nextStatSN &+= 1
        var pdu = LoginResponsePDU(
            transit: transit, currentStage: context?.stage.rawValue ?? (request.currentStage & 0x03),
            nextStage: transit ? (nextStage?.rawValue ?? 0) : 0, isid: request.isid, tsih: request.tsih,
            initiatorTaskTag: request.initiatorTaskTag, sequence: sequence, status: status, data: data)
        pdu.continue = `continue`
        return pdu
    }

    /// A failure response; the login is over (RFC 7143 §11.13.5).
    private mutating func fail(_ request: LoginRequestPDU, _ status: LoginStatus) -> Action {
        state = .finished
        var pdu = response(request, context: nil, transit: false, continue: false, [], status: status)
        pdu.currentStage = request.currentStage & 0x03
        return .sendResponseAndClose(pdu)
    }
}
