import NIOCore

// MARK: - Discovery input

/// A target as SendTargets reports it (RFC 7143 Appendix C).
public struct DiscoveryTarget: Sendable, Equatable {
    /// iSCSI name.
    public var name: String
    /// Portals as `host:port,tpgt` (RFC 7143 §13.8 TargetAddress); IPv6 hosts in brackets.
    public var addresses: [String]
    /// InitiatorNames that may see this target (case-insensitive); empty = any.
    public var allowedInitiators: [String]

    public init(name: String, addresses: [String], allowedInitiators: [String] = []) {
        self.name = name
        self.addresses = addresses
        self.allowedInitiators = allowedInitiators
    }

    func visible(to initiatorName: String) -> Bool {
        allowedInitiators.isEmpty || allowedInitiators.contains { $0.lowercased() == initiatorName.lowercased() }
    }
}

// MARK: - Text negotiation in the full feature phase

/// Answers Text Requests after login (RFC 7143 §11.10, §11.11): SendTargets (Appendix C) and any
/// other key. Text the initiator splits with the C bit is reassembled; answers longer than the
/// initiator's MaxRecvDataSegmentLength are split across Text Responses with C=1 and a Target
/// Transfer Tag the initiator echoes in empty Text Requests to fetch the rest.
///
/// ```
///  idle ──request C=1──▶ receiving ──request C=0──▶ answer fits ──▶ idle (F=1, TTT=0xffffffff)
///                                                  answer too long ──▶ sending (C=1, F=0, TTT=t)
///  sending ──empty request, TTT=t──▶ next part ... last part F=1 ──▶ idle
///  any state ──request with TTT=0xffffffff──▶ starts over (RFC 7143 §11.10.4)
/// ```
///
/// Pure: the caller supplies the sequence numbers of each response and performs the sends.
public struct TextNegotiator: Sendable {
    /// What to do with one Text Request.
    public enum Action: Sendable {
        /// Send this Text Response.
        case sendResponse(TextResponsePDU)
        /// The request breaks the protocol: send a Reject PDU with this reason (RFC 7143 §11.17.1).
        case reject(RejectPDU.Reason)
    }

    private enum State: Sendable {
        case idle
        /// Text of a request sequence with C=1.
        case receiving(initiatorTaskTag: UInt32, targetTransferTag: UInt32, text: [UInt8])
        /// Answer parts not yet sent.
        case sending(initiatorTaskTag: UInt32, targetTransferTag: UInt32, remaining: [UInt8])
    }

    private var state: State = .idle
    private let session: SessionParameters
    /// Every target with its portals; the caller may replace it between requests (targets added, removed or
    /// given another ACL while the session runs), and the next SendTargets answers from the new list.
    public var targets: [DiscoveryTarget]
    private var nextTargetTransferTag: UInt32 = 1

    /// - Parameters:
    ///   - session: the logged-in session (session type, initiator, target, MaxXmitDataSegmentLength).
    ///   - targets: every target with its portals; filtered by session type and ACL.
    public init(session: SessionParameters, targets: [DiscoveryTarget]) {
        self.session = session
        self.targets = targets
    }

    /// Processes one Text Request; `sequence` goes into the response (the caller advances StatSN).
    public mutating func receivedTextRequest(_ request: TextRequestPDU, sequence: SequenceNumbers) -> Action {
        // RFC 7143 §11.10.2: C=1 requires F=0.
        if request.continue && request.final { return .reject(.protocolError) }
        let isNewExchange = request.targetTransferTag == 0xFFFF_FFFF

        switch state {
        case .sending(let itt, let ttt, let remaining) where !isNewExchange:
            // RFC 7143 §11.10.4: continuing our response; the initiator echoes TTT with no data.
            guard request.targetTransferTag == ttt, request.initiatorTaskTag == itt, request.data.readableBytes == 0
            else { return .reject(.protocolError) }
            return send(remaining, initiatorTaskTag: itt, targetTransferTag: ttt, sequence: sequence)

        case .receiving(let itt, let ttt, let text) where !isNewExchange:
            guard request.targetTransferTag == ttt, request.initiatorTaskTag == itt else {
                return .reject(.protocolError)
            }
            return accumulate(text, request, sequence: sequence)

        case .idle where !isNewExchange:
            // A TTT we never handed out.
            return .reject(.invalidPDUField)

        default:
            // RFC 7143 §11.10.4: TTT=0xffffffff starts a new exchange and discards any pending one.
            state = .idle
            return accumulate([], request, sequence: sequence)
        }
    }

    // MARK: - Internals

    private mutating func accumulate(_ previous: [UInt8], _ request: TextRequestPDU, sequence: SequenceNumbers)
        -> Action
    {
        let text = previous + request.data.readableBytesView
        if request.continue {
            guard text.count <= 64 * 1024 else { return .reject(.protocolError) }
            let ttt = allocateTag()
            state = .receiving(initiatorTaskTag: request.initiatorTaskTag, targetTransferTag: ttt, text: text)
            // An empty answer that asks for the rest of the text.
            return .sendResponse(
                TextResponsePDU(
                    final: false, initiatorTaskTag: request.initiatorTaskTag, targetTransferTag: ttt,
                    sequence: sequence, data: ByteBuffer()))
        }
        let pairs: [TextKeyValue]
        do {
            pairs = try TextParameters.parse(text)
        } catch {
            state = .idle
            return .reject(.protocolError)
        }
        let answer = TextParameters.encode(answers(to: pairs))
        let needsTag = answer.count > max(session.maxXmitDataSegmentLength, 512)
        return send(
            answer, initiatorTaskTag: request.initiatorTaskTag, targetTransferTag: needsTag ? allocateTag() : 0xFFFF_FFFF,
            sequence: sequence)
    }

    /// Sends the next part of an answer.
    private mutating func send(
        _ text: [UInt8], initiatorTaskTag: UInt32, targetTransferTag: UInt32, sequence: SequenceNumbers
    ) -> Action {
        let limit = max(session.maxXmitDataSegmentLength, 512)
        let part = Array(text.prefix(limit))
        let rest = Array(text.dropFirst(part.count))
        var data = ByteBuffer()
        data.writeBytes(part)
        if rest.isEmpty {
            state = .idle
            return .sendResponse(
                TextResponsePDU(
                    final: true, initiatorTaskTag: initiatorTaskTag, targetTransferTag: 0xFFFF_FFFF, sequence: sequence,
                    data: data))
        }
        state = .sending(initiatorTaskTag: initiatorTaskTag, targetTransferTag: targetTransferTag, remaining: rest)
        var pdu = TextResponsePDU(
            final: false, initiatorTaskTag: initiatorTaskTag, targetTransferTag: targetTransferTag, sequence: sequence,
            data: data)
        pdu.continue = true
        return .sendResponse(pdu)
    }

    /// A fresh Target Transfer Tag, never the reserved 0xffffffff.
    private mutating func allocateTag() -> UInt32 {
        let tag = nextTargetTransferTag
        nextTargetTransferTag = nextTargetTransferTag &+ 1
        if nextTargetTransferTag == 0xFFFF_FFFF { nextTargetTransferTag = 1 }
        return tag
    }

    /// Answers one text set.
    private func answers(to pairs: [TextKeyValue]) -> [TextKeyValue] {
        var out: [TextKeyValue] = []
        for pair in pairs {
            switch pair.key {
            case "SendTargets":
                out += sendTargets(pair.value)
            case "MaxRecvDataSegmentLength":
                // RFC 7143 §13.12 allows a declaration in FFP, but changing the send limit under a
                // running session is not supported here: answered as Reject.
                out.append(TextKeyValue(pair.key, "Reject"))
            case "InitiatorName", "TargetName", "SessionType", "AuthMethod", "MaxConnections", "InitialR2T",
                "ImmediateData", "MaxBurstLength", "FirstBurstLength", "DefaultTime2Wait", "DefaultTime2Retain",
                "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder", "ErrorRecoveryLevel", "HeaderDigest",
                "DataDigest", "TargetPortalGroupTag", "TargetAlias", "InitiatorAlias", "TargetAddress":
                // Leading-only or login-only keys (RFC 7143 §13 "Use: LO / IO"): irrelevant now.
                out.append(TextKeyValue(pair.key, "Irrelevant"))
            default:
                if pair.key.hasPrefix("CHAP_") {
                    out.append(TextKeyValue(pair.key, "Irrelevant"))
                } else {
                    out.append(TextKeyValue(pair.key, "NotUnderstood"))
                }
            }
        }
        return out
    }

    /// SendTargets (RFC 7143 Appendix C): `All` lists every visible target in a discovery session;
    /// in a normal session only the session's target is reported. A name reports that target; an
    /// empty value in a normal session reports the session's target.
    private func sendTargets(_ value: String) -> [TextKeyValue] {
        let visible: [DiscoveryTarget]
        switch (value, session.sessionType) {
        case ("All", .discovery):
            visible = targets.filter { $0.visible(to: session.initiatorName) }
        case ("All", .normal), ("", .normal):
            visible = targets.filter { $0.name == session.targetName }
        case ("", .discovery):
            return [TextKeyValue("SendTargets", "Reject")]
        default:
            visible = targets.filter { $0.name == value && $0.visible(to: session.initiatorName) }
                .filter { session.sessionType == .discovery || $0.name == session.targetName }
        }
        var out: [TextKeyValue] = []
        for target in visible {
            out.append(TextKeyValue("TargetName", target.name))
            for address in target.addresses { out.append(TextKeyValue("TargetAddress", address)) }
        }
        return out
    }
}
