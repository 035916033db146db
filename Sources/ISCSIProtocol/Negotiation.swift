// MARK: - Inputs

/// The operational limits this target negotiates with (RFC 7143 §13). The server maps its own
/// configuration onto this; defaults are LiveMount's choices, not the RFC defaults.
public struct TargetLimits: Sendable, Equatable {
    /// Our MaxRecvDataSegmentLength, declared to the initiator (RFC 7143 §13.12), 512...2^24-1.
    public var maxRecvDataSegmentLength: Int
    /// Upper bound for MaxBurstLength (RFC 7143 §13.13).
    public var maxBurstLength: Int
    /// Upper bound for FirstBurstLength (RFC 7143 §13.14); never above `maxBurstLength`.
    public var firstBurstLength: Int
    /// Our InitialR2T value (RFC 7143 §13.10, boolean OR).
    public var initialR2T: Bool
    /// Our ImmediateData value (RFC 7143 §13.11, boolean AND).
    public var immediateData: Bool
    /// Upper bound for MaxOutstandingR2T (RFC 7143 §13.17).
    public var maxOutstandingR2T: Int
    /// Our DefaultTime2Wait (RFC 7143 §13.15, numerical max).
    public var defaultTime2Wait: Int
    /// Our DefaultTime2Retain (RFC 7143 §13.16, numerical min).
    public var defaultTime2Retain: Int
    /// The CmdSN window: MaxCmdSN = ExpCmdSN + commandWindow - 1 (RFC 7143 §4.2.2.1).
    public var commandWindow: Int
    /// Whether HeaderDigest=CRC32C / DataDigest=CRC32C may be accepted (RFC 7143 §13.1).
    public var digestsAllowed: Bool

    public init(
        maxRecvDataSegmentLength: Int = 262_144, maxBurstLength: Int = 1_048_576, firstBurstLength: Int = 262_144,
        initialR2T: Bool = false, immediateData: Bool = true, maxOutstandingR2T: Int = 1, defaultTime2Wait: Int = 2,
        defaultTime2Retain: Int = 20, commandWindow: Int = 256, digestsAllowed: Bool = true
    ) {
        self.maxRecvDataSegmentLength = maxRecvDataSegmentLength
        self.maxBurstLength = maxBurstLength
        self.firstBurstLength = firstBurstLength
        self.initialR2T = initialR2T
        self.immediateData = immediateData
        self.maxOutstandingR2T = maxOutstandingR2T
        self.defaultTime2Wait = defaultTime2Wait
        self.defaultTime2Retain = defaultTime2Retain
        self.commandWindow = commandWindow
        self.digestsAllowed = digestsAllowed
    }
}

/// SessionType (RFC 7143 §13.21).
public enum SessionType: String, Sendable, Equatable {
    case normal = "Normal"
    case discovery = "Discovery"
}

// MARK: - Result

/// Every value the login settled, RFC 7143 §13 defaults where a key was not negotiated.
public struct SessionParameters: Sendable, Equatable {
    /// Our MaxRecvDataSegmentLength: the largest data segment the initiator may send us.
    public var maxRecvDataSegmentLength: Int = 8192
    /// The initiator's declared MaxRecvDataSegmentLength: the largest data segment we may send (default 8192).
    public var maxXmitDataSegmentLength: Int = 8192
    public var maxBurstLength: Int = 262_144
    public var firstBurstLength: Int = 65_536
    public var initialR2T = true
    public var immediateData = true
    public var maxOutstandingR2T = 1
    public var dataPDUInOrder = true
    public var dataSequenceInOrder = true
    /// Always 0: this target supports only ErrorRecoveryLevel 0 (RFC 7143 §13.20).
    public var errorRecoveryLevel = 0
    /// HeaderDigest=CRC32C was negotiated; the codec switches it on after the final login response.
    public var headerDigest = false
    /// DataDigest=CRC32C was negotiated.
    public var dataDigest = false
    public var defaultTime2Wait = 2
    public var defaultTime2Retain = 20
    /// Always 1: this target accepts one connection per session (RFC 7143 §13.2).
    public var maxConnections = 1
    public var sessionType: SessionType = .normal
    public var initiatorName = ""
    public var initiatorAlias: String?
    /// The target logged into; nil for a discovery session.
    public var targetName: String?
    /// ISID, 6 bytes as an integer (RFC 7143 §11.12.5).
    public var isid: UInt64 = 0
    /// The TSIH the target assigned (RFC 7143 §11.13.4).
    public var tsih: UInt16 = 0
    /// The connection ID from the login request (RFC 7143 §11.12.6).
    public var cid: UInt16 = 0

    public init() {}
}

// MARK: - Operational negotiation

/// Answers operational and declarative keys one at a time (RFC 7143 §6.2, §13) and accumulates the
/// results. Pure: the login state machine feeds it keys and collects the answers.
struct OperationalNegotiation: Sendable {
    /// What to do with one key.
    enum Outcome: Equatable {
        /// Put this pair in the response.
        case answer(TextKeyValue)
        /// The key was a declaration or an answer to our offer: nothing to send.
        case noAnswer
        /// The login must fail with this status (RFC 7143 §6.2 violations).
        case fail(LoginStatus)
    }

    let limits: TargetLimits
    var parameters = SessionParameters()
    /// Keys the initiator already offered or declared in this login (RFC 7143 §6.2: once only).
    private(set) var seenKeys: Set<String> = []
    /// Keys we offered and still expect an answer to, with our offered value.
    private(set) var pendingOffers: [String: String] = [:]

    init(limits: TargetLimits) {
        self.limits = limits
        parameters.maxRecvDataSegmentLength = limits.maxRecvDataSegmentLength
    }

    /// Keys meaningless in a discovery session (RFC 7143 §13 "Irrelevant when: SessionType=Discovery").
    static let irrelevantForDiscovery: Set<String> = [
        "MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength", "MaxOutstandingR2T",
        "DataPDUInOrder", "DataSequenceInOrder",
    ]

    /// Handles one key from the initiator. `sessionType` decides relevance.
    mutating func handle(_ pair: TextKeyValue, sessionType: SessionType) -> Outcome {
        let key = pair.key
        if let offered = pendingOffers.removeValue(forKey: key) {
            return handleAnswer(pair, offered: offered)
        }
        // RFC 7143 §6.2: renegotiating or redeclaring a key in the same login is an initiator error.
        guard seenKeys.insert(key).inserted else { return .fail(.initiatorError) }
        if sessionType == .discovery && Self.irrelevantForDiscovery.contains(key) {
            return .answer(TextKeyValue(key, "Irrelevant"))
        }
        if pair.valueTooLong { return .answer(TextKeyValue(key, "Reject")) }
        switch key {
        case "HeaderDigest", "DataDigest":
            // RFC 7143 §13.1: list negotiation; pick the first value we support.
            let chosen = pair.values.first { $0 == "None" || ($0 == "CRC32C" && limits.digestsAllowed) }
            guard let chosen else { return .answer(TextKeyValue(key, "Reject")) }
            if key == "HeaderDigest" { parameters.headerDigest = chosen == "CRC32C" } else {
                parameters.dataDigest = chosen == "CRC32C"
            }
            return .answer(TextKeyValue(key, chosen))
        case "MaxConnections":
            // RFC 7143 §13.2: numerical min, 1...65535; we support one connection per session.
            return minimum(pair, range: 1...65535, ours: 1) { $0.maxConnections = $1 }
        case "MaxBurstLength":
            // RFC 7143 §13.13: numerical min, 512...2^24-1.
            return minimum(pair, range: 512...16_777_215, ours: limits.maxBurstLength) {
                $0.maxBurstLength = $1
                $0.firstBurstLength = min($0.firstBurstLength, $1)
            }
        case "FirstBurstLength":
            // RFC 7143 §13.14: numerical min; MUST NOT exceed MaxBurstLength.
            let ours = min(limits.firstBurstLength, parameters.maxBurstLength)
            return minimum(pair, range: 512...16_777_215, ours: ours) { $0.firstBurstLength = $1 }
        case "MaxOutstandingR2T":
            // RFC 7143 §13.17: numerical min, 1...65535.
            return minimum(pair, range: 1...65535, ours: limits.maxOutstandingR2T) { $0.maxOutstandingR2T = $1 }
        case "DefaultTime2Retain":
            // RFC 7143 §13.16: numerical min, 0...3600.
            return minimum(pair, range: 0...3600, ours: limits.defaultTime2Retain) { $0.defaultTime2Retain = $1 }
        case "DefaultTime2Wait":
            // RFC 7143 §13.15: numerical max, 0...3600.
            guard let v = number(pair.value, in: 0...3600) else { return .answer(TextKeyValue(key, "Reject")) }
            let result = max(v, limits.defaultTime2Wait)
            parameters.defaultTime2Wait = result
            return .answer(TextKeyValue(key, String(result)))
        case "ErrorRecoveryLevel":
            // RFC 7143 §13.20: numerical min, 0...2; we implement level 0 only.
            return minimum(pair, range: 0...2, ours: 0) { $0.errorRecoveryLevel = $1 }
        case "InitialR2T":
            // RFC 7143 §13.10: boolean OR.
            guard let v = TextParameters.boolean(pair.value) else { return .answer(TextKeyValue(key, "Reject")) }
            parameters.initialR2T = v || limits.initialR2T
            return .answer(TextKeyValue(key, parameters.initialR2T ? "Yes" : "No"))
        case "ImmediateData":
            // RFC 7143 §13.11: boolean AND.
            return and(pair, ours: limits.immediateData) { $0.immediateData = $1 }
        case "DataPDUInOrder", "DataSequenceInOrder":
            // RFC 7143 §13.18, §13.19: boolean OR. We answer Yes, so data always arrives in order and
            // the Data-Out path never has to reorder.
            guard TextParameters.boolean(pair.value) != nil else { return .answer(TextKeyValue(key, "Reject")) }
            return .answer(TextKeyValue(key, "Yes"))
        case "MaxRecvDataSegmentLength":
            // RFC 7143 §13.12: declarative, 512...2^24-1; it bounds what we send.
            guard let v = number(pair.value, in: 512...16_777_215) else {
                return .answer(TextKeyValue(key, "Reject"))
            }
            parameters.maxXmitDataSegmentLength = v
            return .noAnswer
        case "InitiatorAlias":
            // RFC 7143 §13.7: declarative.
            parameters.initiatorAlias = pair.value
            return .noAnswer
        case "TargetAlias", "TargetAddress", "TargetPortalGroupTag":
            // Sent only by targets (RFC 7143 §13.6, §13.8, §13.9).
            return .answer(TextKeyValue(key, "Irrelevant"))
        case "OFMarker", "IFMarker":
            // RFC 3720 §A.3 markers (obsoleted by RFC 7143): boolean AND, we never use them.
            guard TextParameters.boolean(pair.value) != nil else { return .answer(TextKeyValue(key, "Reject")) }
            return .answer(TextKeyValue(key, "No"))
        case "OFMarkInt", "IFMarkInt":
            // RFC 3720 §A.3.2: irrelevant once the markers are off.
            return .answer(TextKeyValue(key, "Irrelevant"))
        default:
            return .answer(TextKeyValue(key, "NotUnderstood"))
        }
    }

    /// Offers we must make because the RFC default of a key the initiator did not offer would exceed
    /// what we support (RFC 7143 §6.2: either side may offer). Marks them pending.
    mutating func neededOffers(sessionType: SessionType) -> [TextKeyValue] {
        guard sessionType == .normal else { return [] }
        var offers: [TextKeyValue] = []
        func offer(_ key: String, _ value: String) {
            guard !seenKeys.contains(key), pendingOffers[key] == nil else { return }
            seenKeys.insert(key)
            pendingOffers[key] = value
            offers.append(TextKeyValue(key, value))
        }
        if limits.maxBurstLength < parameters.maxBurstLength {
            offer("MaxBurstLength", String(limits.maxBurstLength))
        }
        if min(limits.firstBurstLength, limits.maxBurstLength) < parameters.firstBurstLength {
            offer("FirstBurstLength", String(min(limits.firstBurstLength, limits.maxBurstLength)))
        }
        if !limits.immediateData && parameters.immediateData {
            offer("ImmediateData", "No")
        }
        return offers
    }

    /// Whether we still wait for answers to our offers (the response must then keep T=0).
    var awaitingAnswers: Bool { !pendingOffers.isEmpty }

    /// The initiator's answer to one of our offers (RFC 7143 §6.2: the answer must respect the key's
    /// rule; anything else fails the login).
    private mutating func handleAnswer(_ pair: TextKeyValue, offered: String) -> Outcome {
        switch pair.key {
        case "MaxBurstLength", "FirstBurstLength":
            guard let ours = Int(offered), let v = number(pair.value, in: 512...ours) else {
                return .fail(.initiatorError)
            }
            if pair.key == "MaxBurstLength" {
                parameters.maxBurstLength = v
                parameters.firstBurstLength = min(parameters.firstBurstLength, v)
            } else {
                parameters.firstBurstLength = min(v, parameters.maxBurstLength)
            }
        case "ImmediateData":
            guard pair.value == "No" else { return .fail(.initiatorError) }
            parameters.immediateData = false
        default:
            return .fail(.initiatorError)
        }
        return .noAnswer
    }

    private func number(_ text: String, in range: ClosedRange<Int>) -> Int? {
        guard let v = TextParameters.number(text), v <= UInt64(Int.max), range.contains(Int(v)) else { return nil }
        return Int(v)
    }

    private mutating func minimum(
        _ pair: TextKeyValue, range: ClosedRange<Int>, ours: Int, apply: (inout SessionParameters, Int) -> Void
    ) -> Outcome {
        guard let v = number(pair.value, in: range) else { return .answer(TextKeyValue(pair.key, "Reject")) }
        let result = min(v, ours)
        apply(&parameters, result)
        return .answer(TextKeyValue(pair.key, String(result)))
    }

    private mutating func and(_ pair: TextKeyValue, ours: Bool, apply: (inout SessionParameters, Bool) -> Void)
        -> Outcome
    {
        guard let v = TextParameters.boolean(pair.value) else { return .answer(TextKeyValue(pair.key, "Reject")) }
        let result = v && ours
        apply(&parameters, result)
        return .answer(TextKeyValue(pair.key, result ? "Yes" : "No"))
    }
}
