import ISCSIProtocol
import NIOCore

/// Connects a connection's login phase to the login state machine.
/// INTERIM: minimal negotiation without CHAP, replaced by LoginStateMachine.
struct LoginDriver {
    enum Outcome {
        case respond(LoginResponsePDU)
        case fail(LoginResponsePDU, String)
        case complete(LoginResponsePDU, Completed)
    }

    struct Completed {
        var parameters: ConnectionParameters
        var nextStatSN: UInt32
        var expCmdSN: UInt32
    }

    private let server: ServerContext
    private var keys: [String: String] = [:]
    private var statSN: UInt32 = 1
    private var tsih: UInt16 = 0

    init(server: ServerContext) {
        self.server = server
    }

    func invalidDuringLogin(_ pdu: ISCSIPDU) -> LoginResponsePDU {
        LoginResponsePDU(
            transit: false, currentStage: 0, nextStage: 0, isid: 0, tsih: 0,
            initiatorTaskTag: pdu.header.initiatorTaskTag,
            sequence: SequenceNumbers(statSN: 0, expCmdSN: 0, maxCmdSN: 0), status: .invalidDuringLogin)
    }

    mutating func received(_ request: LoginRequestPDU) -> Outcome {
        var data = request.data
        let text = data.readString(length: data.readableBytes) ?? ""
        var answer: [(String, String)] = []
        for pair in text.split(separator: "\0") {
            guard let eq = pair.firstIndex(of: "=") else { continue }
            let key = String(pair[..<eq])
            let value = String(pair[pair.index(after: eq)...])
            keys[key] = value
            switch key {
            case "AuthMethod": answer.append((key, "None"))
            case "HeaderDigest", "DataDigest": answer.append((key, value.hasPrefix("CRC32C") ? "CRC32C" : "None"))
            case "MaxRecvDataSegmentLength": break
            case "InitiatorName", "TargetName", "SessionType", "InitiatorAlias": break
            case "InitialR2T": answer.append((key, "No"))
            case "ImmediateData": answer.append((key, "Yes"))
            case "MaxBurstLength": answer.append((key, String(min(Int(value) ?? 262144, 1_048_576))))
            case "FirstBurstLength": answer.append((key, String(min(Int(value) ?? 65536, 262_144))))
            case "MaxConnections", "MaxOutstandingR2T": answer.append((key, "1"))
            case "ErrorRecoveryLevel": answer.append((key, "0"))
            case "DataPDUInOrder", "DataSequenceInOrder": answer.append((key, "Yes"))
            case "DefaultTime2Wait", "DefaultTime2Retain": answer.append((key, "0"))
            default: answer.append((key, "NotUnderstood"))
            }
        }
        if tsih == 0 { tsih = server.registry.allocateTSIH() }
        let transit = request.transit
        let next = request.nextStage
        if transit && next == 3 {
            answer.append(("MaxRecvDataSegmentLength", String(server.configuration.limits.maxRecvDataSegmentLength)))
            answer.append(("TargetPortalGroupTag", "1"))
        }
        var out = ByteBuffer()
        for (k, v) in answer { out.writeString("\(k)=\(v)\0") }
        let sequence = SequenceNumbers(statSN: statSN, expCmdSN: request.cmdSN, maxCmdSN: request.cmdSN &+ 64)
        statSN &+= 1
        let response = LoginResponsePDU(
            transit: transit, currentStage: request.currentStage, nextStage: transit ? next : 0, isid: request.isid,
            tsih: transit && next == 3 ? tsih : 0, initiatorTaskTag: request.initiatorTaskTag, sequence: sequence,
            status: .success, data: out)
        if transit && next == 3 {
            let discovery = keys["SessionType"] == "Discovery"
            if !discovery && server.targets[keys["TargetName"] ?? ""] == nil {
                var r = response
                r.status = .targetNotFound
                r.transit = false
                r.data = ByteBuffer()
                return .fail(r, "unknown target")
            }
            let p = ConnectionParameters(
                maxRecvDataSegmentLength: server.configuration.limits.maxRecvDataSegmentLength,
                maxXmitDataSegmentLength: Int(keys["MaxRecvDataSegmentLength"] ?? "8192") ?? 8192,
                maxBurstLength: min(Int(keys["MaxBurstLength"] ?? "262144") ?? 262144, 1_048_576),
                firstBurstLength: min(Int(keys["FirstBurstLength"] ?? "65536") ?? 65536, 262_144),
                initialR2T: false, immediateData: keys["ImmediateData"] != "No", maxOutstandingR2T: 1,
                dataPDUInOrder: true, headerDigest: (keys["HeaderDigest"] ?? "").hasPrefix("CRC32C"),
                dataDigest: (keys["DataDigest"] ?? "").hasPrefix("CRC32C"), isDiscovery: discovery,
                initiatorName: keys["InitiatorName"] ?? "", targetName: discovery ? nil : keys["TargetName"],
                isid: request.isid, tsih: tsih)
            return .complete(response, Completed(parameters: p, nextStatSN: statSN, expCmdSN: request.cmdSN))
        }
        return .respond(response)
    }
}

/// Text Request handling in the full-feature phase.
/// INTERIM: SendTargets only, without continuation; replaced by TextNegotiator.
struct TextContinuation {
    enum Answer {
        case respond(final: Bool, targetTransferTag: UInt32, data: ByteBuffer)
        case reject
    }

    mutating func received(
        _ request: TextRequestPDU, server: ServerContext, parameters: ConnectionParameters, allowedTarget: String?
    ) -> Answer {
        var data = request.data
        let text = data.readString(length: data.readableBytes) ?? ""
        var out = ByteBuffer()
        if text.hasPrefix("SendTargets=") {
            for name in server.targets.keys.sorted() where allowedTarget == nil || allowedTarget == name {
                out.writeString("TargetName=\(name)\0")
                for address in server.portalAddresses { out.writeString("TargetAddress=\(address)\0") }
            }
        }
        return .respond(final: true, targetTransferTag: 0xFFFF_FFFF, data: out)
    }
}
