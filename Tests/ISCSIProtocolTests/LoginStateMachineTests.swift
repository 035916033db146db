import NIOCore
import Testing

@testable import ISCSIProtocol

@Suite("Login state machine (RFC 7143 §6.3, §11.12, §11.13)")
struct LoginStateMachineTests {
    typealias T = LoginTest

    private let operational: [(String, String)] = [
        ("HeaderDigest", "CRC32C,None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "65536"),
        ("InitialR2T", "No"), ("ImmediateData", "Yes"), ("MaxBurstLength", "262144"), ("FirstBurstLength", "65536"),
        ("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "0"), ("MaxOutstandingR2T", "1"),
        ("ErrorRecoveryLevel", "0"), ("InitiatorAlias", "client"),
    ]

    @Test("no authentication: security → operational → full feature phase")
    func plainLogin() throws {
        var m = T.machine()
        let first = m.receivedLoginRequest(T.request(T.normalLeading, csg: 0, nsg: 1, transit: true))
        guard case .sendResponse(let r1) = first else {
            Issue.record("expected a response, got \(first)")
            return
        }
        #expect(r1.status == .success)
        #expect(r1.transit && r1.currentStage == 0 && r1.nextStage == 1)
        #expect(r1.isid == T.isid && r1.tsih == 0 && r1.initiatorTaskTag == 0x1234)
        #expect(r1.sequence == SequenceNumbers(statSN: 100, expCmdSN: 10, maxCmdSN: 10 + 255))
        #expect(T.pairs(r1)["AuthMethod"] == "None")
        #expect(T.pairs(r1)["TargetPortalGroupTag"] == "1")

        let second = m.receivedLoginRequest(T.request(operational, csg: 1, nsg: 3, transit: true))
        guard case .loginComplete(let r2, let p) = second else {
            Issue.record("expected completion, got \(second)")
            return
        }
        #expect(r2.transit && r2.currentStage == 1 && r2.nextStage == 3)
        #expect(r2.tsih == 0x55)
        #expect(r2.sequence.statSN == 101)
        let answers = T.pairs(r2)
        #expect(answers["HeaderDigest"] == "CRC32C")
        #expect(answers["DataDigest"] == "None")
        #expect(answers["MaxRecvDataSegmentLength"] == "262144")
        #expect(answers["InitialR2T"] == "No")
        #expect(answers["MaxBurstLength"] == "262144")
        #expect(answers["DefaultTime2Retain"] == "0")
        #expect(answers["InitiatorAlias"] == nil)
        #expect(p.headerDigest && !p.dataDigest)
        #expect(p.maxXmitDataSegmentLength == 65536 && p.maxRecvDataSegmentLength == 262_144)
        #expect(p.sessionType == .normal && p.targetName == T.target && p.initiatorName == T.initiator)
        #expect(p.initiatorAlias == "client")
        #expect(p.isid == T.isid && p.tsih == 0x55 && p.cid == 1)
        #expect(!p.initialR2T && p.immediateData && p.defaultTime2Retain == 0)
        #expect(m.isFinished)
        // Anything after completion is refused.
        #expect(m.receivedLoginRequest(T.request([], csg: 1, nsg: 3, transit: true)).closes)
    }

    @Test("straight from security to full feature phase, with TargetAlias declared")
    func securityToFullFeature() {
        var m = T.machine(T.configuration(policy: TargetLoginPolicy(alias: "disk one")))
        let action = m.receivedLoginRequest(T.request(T.normalLeading + [("MaxRecvDataSegmentLength", "8192")], csg: 0, nsg: 3, transit: true))
        #expect(action.session != nil)
        #expect(action.response.currentStage == 0 && action.response.nextStage == 3)
        #expect(T.pairs(action.response)["TargetAlias"] == "disk one")
        #expect(T.pairs(action.response)["MaxRecvDataSegmentLength"] == "262144")
    }

    @Test("starting in the operational stage when no authentication is needed")
    func operationalFirst() {
        var m = T.machine()
        let pairs = T.normalLeading.filter { $0.0 != "AuthMethod" } + operational
        let action = m.receivedLoginRequest(T.request(pairs, csg: 1, nsg: 3, transit: true))
        #expect(action.session?.targetName == T.target)
    }

    @Test("initiator that does not set T waits in the stage")
    func noTransit() {
        var m = T.machine()
        let r = m.receivedLoginRequest(T.request(T.normalLeading, csg: 0, nsg: 1, transit: false)).response
        #expect(!r.transit && r.currentStage == 0)
        let r2 = m.receivedLoginRequest(T.request([], csg: 0, nsg: 1, transit: true)).response
        #expect(r2.transit && r2.nextStage == 1)
        #expect(T.pairs(r2)["TargetPortalGroupTag"] == nil)
    }

    @Test("missing InitiatorName → 02/07")
    func missingInitiatorName() {
        var m = T.machine()
        let a = m.receivedLoginRequest(T.request([("TargetName", T.target), ("AuthMethod", "None")], csg: 0, nsg: 1, transit: true))
        #expect(a.closes && a.response.status == .missingParameter)
    }

    @Test("missing TargetName for a normal session → 02/07; unknown target → 02/03")
    func targetName() {
        var m = T.machine()
        let a = m.receivedLoginRequest(T.request([("InitiatorName", T.initiator), ("AuthMethod", "None")], csg: 0, nsg: 1, transit: true))
        #expect(a.closes && a.response.status == .missingParameter)
        var m2 = T.machine()
        let b = m2.receivedLoginRequest(T.request([("InitiatorName", T.initiator), ("TargetName", "iqn.nope")], csg: 0, nsg: 1, transit: true))
        #expect(b.closes && b.response.status == .targetNotFound)
    }

    @Test("initiator not in the ACL → 02/02; listed initiator passes regardless of case")
    func acl() {
        let policy = TargetLoginPolicy(allowedInitiators: ["iqn.1994-05.com.redhat:other"])
        var m = T.machine(T.configuration(policy: policy))
        let a = m.receivedLoginRequest(T.request(T.normalLeading, csg: 0, nsg: 1, transit: true))
        #expect(a.closes && a.response.status == .authorizationFailure)
        var m2 = T.machine(T.configuration(policy: TargetLoginPolicy(allowedInitiators: [T.initiator.uppercased()])))
        #expect(!m2.receivedLoginRequest(T.request(T.normalLeading, csg: 0, nsg: 1, transit: true)).closes)
    }

    @Test("VersionMin above 0 → 02/05")
    func version() {
        var m = T.machine()
        var req = T.request(T.normalLeading, csg: 0, nsg: 1, transit: true)
        req.versionMax = 2
        req.versionMin = 1
        let a = m.receivedLoginRequest(req)
        #expect(a.closes && a.response.status == .unsupportedVersion)
    }

    @Test("invalid stage transitions → 02/00")
    func invalidTransitions() {
        for (csg, nsg) in [(UInt8(0), UInt8(2)), (1, 0), (1, 1), (2, 3), (3, 3), (0, 0)] {
            var m = T.machine()
            let a = m.receivedLoginRequest(T.request(T.normalLeading, csg: csg, nsg: nsg, transit: true))
            #expect(a.closes && a.response.status == .initiatorError, "CSG \(csg) NSG \(nsg)")
        }
        // Going back to the security stage after leaving it.
        var m = T.machine()
        _ = m.receivedLoginRequest(T.request(T.normalLeading, csg: 0, nsg: 1, transit: true))
        let back = m.receivedLoginRequest(T.request([], csg: 0, nsg: 1, transit: true))
        #expect(back.closes && back.response.status == .initiatorError)
        // C and T together.
        var m2 = T.machine()
        let ct = m2.receivedLoginRequest(T.request(T.normalLeading, csg: 0, nsg: 1, transit: true, continue: true))
        #expect(ct.closes && ct.response.status == .initiatorError)
    }

    @Test("TSIH in a leading login: existing session → 02/06, unknown → 02/0A")
    func tsih() {
        var m = T.machine(T.configuration(existingSessions: [9]))
        #expect(m.receivedLoginRequest(T.request(T.normalLeading, csg: 0, nsg: 1, transit: true, tsih: 9)).response.status
            == .tooManyConnections)
        var m2 = T.machine()
        #expect(m2.receivedLoginRequest(T.request(T.normalLeading, csg: 0, nsg: 1, transit: true, tsih: 9)).response.status
            == .sessionDoesNotExist)
    }

    @Test("ill-formed text → 02/00; unknown and X- keys → NotUnderstood; SendTargets → Irrelevant")
    func keys() {
        var m = T.machine()
        var bad = T.request([], csg: 0, nsg: 1, transit: true)
        bad.data = ByteBuffer(bytes: Array("InitiatorName\0".utf8))
        #expect(m.receivedLoginRequest(bad).response.status == .initiatorError)

        var m2 = T.machine()
        let a = m2.receivedLoginRequest(
            T.request(T.normalLeading + [("X-com.example.Foo", "1"), ("Frobnicate", "Yes"), ("SendTargets", "All")], csg: 0, nsg: 1, transit: true))
        let answers = T.pairs(a.response)
        #expect(answers["X-com.example.Foo"] == "NotUnderstood")
        #expect(answers["Frobnicate"] == "NotUnderstood")
        #expect(answers["SendTargets"] == "Irrelevant")
    }

    @Test("a key renegotiated in a later PDU → 02/00")
    func renegotiation() {
        var m = T.machine()
        _ = m.receivedLoginRequest(T.request(T.normalLeading, csg: 0, nsg: 1, transit: true))
        _ = m.receivedLoginRequest(T.request([("MaxBurstLength", "8192")], csg: 1, nsg: 3, transit: false))
        let a = m.receivedLoginRequest(T.request([("MaxBurstLength", "8192")], csg: 1, nsg: 3, transit: true))
        #expect(a.closes && a.response.status == .initiatorError)
    }

    @Test("CHAP required: initiator offering only None → 02/01")
    func chapRequiredNoneOffered() {
        var m = T.machine(T.configuration(policy: TargetLoginPolicy(chap: CHAPAccount(user: "alice", secret: "secretsecret12"))))
        let a = m.receivedLoginRequest(T.request(T.normalLeading, csg: 0, nsg: 1, transit: true))
        #expect(a.closes && a.response.status == .authenticationFailure)
        var m2 = T.machine(T.configuration(policy: TargetLoginPolicy(chap: CHAPAccount(user: "alice", secret: "secretsecret12"))))
        let skip = m2.receivedLoginRequest(T.request(T.normalLeading.filter { $0.0 != "AuthMethod" }, csg: 1, nsg: 3, transit: true))
        #expect(skip.closes && skip.response.status == .authenticationFailure)
    }

    @Test("no CHAP configured: AuthMethod=CHAP,None answers None; CHAP alone → 02/01")
    func noChapConfigured() {
        var m = T.machine()
        let leading = T.normalLeading.filter { $0.0 != "AuthMethod" }
        let a = m.receivedLoginRequest(T.request(leading + [("AuthMethod", "CHAP,None")], csg: 0, nsg: 1, transit: true))
        #expect(T.pairs(a.response)["AuthMethod"] == "None")
        #expect(a.response.transit)
        var m2 = T.machine()
        let b = m2.receivedLoginRequest(T.request(leading + [("AuthMethod", "CHAP")], csg: 0, nsg: 1, transit: true))
        #expect(b.closes && b.response.status == .authenticationFailure)
    }

    private func chapLogin(mutual: Bool, response: String) -> (LoginStateMachine.Action, [LoginResponsePDU]) {
        let policy = TargetLoginPolicy(
            chap: CHAPAccount(user: "alice", secret: "secretsecret12"),
            mutualChap: mutual ? CHAPAccount(user: "target-user", secret: "targetsecret34") : nil)
        var m = T.machine(T.configuration(policy: policy))
        let leading = T.normalLeading.filter { $0.0 != "AuthMethod" } + [("AuthMethod", "CHAP,None")]
        let r1 = m.receivedLoginRequest(T.request(leading, csg: 0, nsg: 1, transit: true)).response
        let r2 = m.receivedLoginRequest(T.request([("CHAP_A", "5")], csg: 0, nsg: 1, transit: true)).response
        var keys = [("CHAP_N", "alice"), ("CHAP_R", response)]
        if mutual { keys += [("CHAP_I", "42"), ("CHAP_C", "0x" + String(repeating: "AA", count: 16))] }
        let last = m.receivedLoginRequest(T.request(keys, csg: 0, nsg: 1, transit: true))
        return (last, [r1, r2])
    }

    @Test("one-way CHAP login")
    func chapLoginOneWay() {
        let (last, earlier) = chapLogin(mutual: false, response: "0x930acb1bb0b2e8445d41f99453ed21b1")
        #expect(T.pairs(earlier[0])["AuthMethod"] == "CHAP")
        #expect(!earlier[0].transit && !earlier[1].transit)
        #expect(T.pairs(earlier[1])["CHAP_C"] == "0x0102030405060708090A0B0C0D0E0F10")
        #expect(T.pairs(earlier[1])["CHAP_I"] == "7")
        guard case .sendResponse(let r) = last else {
            Issue.record("expected success, got \(last)")
            return
        }
        #expect(r.transit && r.nextStage == 1 && r.status == .success)
        #expect(r.sequence.statSN == 102)
    }

    @Test("mutual CHAP login returns the target's CHAP_N/CHAP_R")
    func chapLoginMutual() {
        let (last, _) = chapLogin(mutual: true, response: "0x930acb1bb0b2e8445d41f99453ed21b1")
        #expect(T.pairs(last.response)["CHAP_N"] == "target-user")
        #expect(T.pairs(last.response)["CHAP_R"] == "0x7928C613A6271F9958439528F48C9251")
        #expect(last.response.transit)
    }

    @Test("CHAP with the wrong secret → 02/01 and close")
    func chapWrongSecret() {
        let (last, _) = chapLogin(mutual: false, response: "0x00000000000000000000000000000000")
        #expect(last.closes && last.response.status == .authenticationFailure)
    }

    @Test("CHAP required but never completed: T=1 without CHAP keys → 02/01")
    func chapIncomplete() {
        var m = T.machine(T.configuration(policy: TargetLoginPolicy(chap: CHAPAccount(user: "a", secret: "b"))))
        let leading = T.normalLeading.filter { $0.0 != "AuthMethod" } + [("AuthMethod", "CHAP")]
        _ = m.receivedLoginRequest(T.request(leading, csg: 0, nsg: 1, transit: true))
        let a = m.receivedLoginRequest(T.request([], csg: 0, nsg: 1, transit: true))
        #expect(a.closes && a.response.status == .authenticationFailure)
    }

    @Test("discovery session: no TargetName needed, operational keys irrelevant, no TPGT")
    func discovery() {
        var m = T.machine()
        let leading = [("InitiatorName", T.initiator), ("SessionType", "Discovery"), ("AuthMethod", "None")]
        let r1 = m.receivedLoginRequest(T.request(leading, csg: 0, nsg: 1, transit: true)).response
        #expect(T.pairs(r1)["TargetPortalGroupTag"] == nil)
        let a = m.receivedLoginRequest(T.request([("MaxBurstLength", "8192"), ("HeaderDigest", "None")], csg: 1, nsg: 3, transit: true))
        #expect(T.pairs(a.response)["MaxBurstLength"] == "Irrelevant")
        #expect(a.session?.sessionType == .discovery)
        #expect(a.session?.targetName == nil)
    }

    @Test("discovery CHAP is enforced")
    func discoveryChap() {
        var m = T.machine(T.configuration(discoveryChap: CHAPAccount(user: "d", secret: "discoverysecret")))
        let leading = [("InitiatorName", T.initiator), ("SessionType", "Discovery"), ("AuthMethod", "None")]
        #expect(m.receivedLoginRequest(T.request(leading, csg: 0, nsg: 1, transit: true)).response.status
            == .authenticationFailure)
    }

    @Test("unsupported SessionType → 02/09")
    func sessionType() {
        var m = T.machine()
        let a = m.receivedLoginRequest(T.request([("InitiatorName", T.initiator), ("SessionType", "Weird")], csg: 0, nsg: 1, transit: true))
        #expect(a.response.status == .sessionTypeNotSupported)
    }

    @Test("request text split with C: empty answers until C=0, then one answer")
    func requestContinuation() {
        var m = T.machine()
        let bytes = TextParameters.encode(T.normalLeading.map { TextKeyValue($0.0, $0.1) })
        // Split in the middle of a key.
        let cut = 7
        var p1 = T.request([], csg: 0, nsg: 1, transit: false, continue: true)
        p1.data = ByteBuffer(bytes: bytes[..<cut])
        let r1 = m.receivedLoginRequest(p1)
        #expect(!r1.closes && r1.response.data.readableBytes == 0 && !r1.response.transit)
        var p2 = T.request([], csg: 0, nsg: 1, transit: true)
        p2.data = ByteBuffer(bytes: bytes[cut...])
        let r2 = m.receivedLoginRequest(p2).response
        #expect(r2.transit && T.pairs(r2)["AuthMethod"] == "None")
        #expect(r2.sequence.statSN == 101)
    }

    @Test("responses longer than 8192 bytes are split with C and resumed on empty requests")
    func responseContinuation() {
        var m = T.machine()
        // 200 unknown keys of ~60 bytes produce ~15 KB of NotUnderstood answers.
        let unknown = (0..<200).map { ("Unknown\(1000 + $0)" + String(repeating: "k", count: 50), "1") }
        _ = m.receivedLoginRequest(T.request(T.normalLeading, csg: 0, nsg: 1, transit: true))
        let a1 = m.receivedLoginRequest(T.request(unknown, csg: 1, nsg: 3, transit: true))
        #expect(a1.response.continue && !a1.response.transit)
        #expect(a1.response.data.readableBytes == 8192)
        let a2 = m.receivedLoginRequest(T.request([], csg: 1, nsg: 3, transit: true))
        guard case .loginComplete(let last, _) = a2 else {
            Issue.record("expected completion, got \(a2)")
            return
        }
        #expect(!last.continue && last.transit)
        var all = a1.response.data
        var tail = last.data
        all.writeBuffer(&tail)
        let answers = (try? TextParameters.parse(all)) ?? []
        #expect(answers.filter { $0.value == "NotUnderstood" }.count == 200)
    }

    @Test("we offer MaxBurstLength when our limit is below the default and wait for the answer")
    func targetOffers() {
        var m = T.machine(T.configuration(limits: TargetLimits(maxBurstLength: 16384, firstBurstLength: 16384)))
        _ = m.receivedLoginRequest(T.request(T.normalLeading, csg: 0, nsg: 1, transit: true))
        let a = m.receivedLoginRequest(T.request([("HeaderDigest", "None")], csg: 1, nsg: 3, transit: true))
        #expect(!a.response.transit)
        #expect(T.pairs(a.response)["MaxBurstLength"] == "16384")
        #expect(T.pairs(a.response)["FirstBurstLength"] == "16384")
        let b = m.receivedLoginRequest(T.request([("MaxBurstLength", "16384"), ("FirstBurstLength", "8192")], csg: 1, nsg: 3, transit: true))
        #expect(b.session?.maxBurstLength == 16384)
        #expect(b.session?.firstBurstLength == 8192)
    }

    @Test("StatSN counts up from the initial value; MaxCmdSN follows the window")
    func sequenceNumbers() {
        var limits = TargetLimits()
        limits.commandWindow = 32
        var m = T.machine(T.configuration(limits: limits))
        let r1 = m.receivedLoginRequest(T.request(T.normalLeading, csg: 0, nsg: 1, transit: true, cmdSN: 0xFFFF_FFF0)).response
        #expect(r1.sequence == SequenceNumbers(statSN: 100, expCmdSN: 0xFFFF_FFF0, maxCmdSN: 0xF))
        let r2 = m.receivedLoginRequest(T.request([], csg: 1, nsg: 3, transit: true, cmdSN: 0xFFFF_FFF0)).response
        #expect(r2.sequence.statSN == 101)
    }
}

@Suite("Login transcripts captured from libiscsi 1.19 (iscsi-ls, iscsi-inq)")
struct LibiscsiTranscriptTests {
    typealias T = LoginTest

    /// The operational keys libiscsi sends in its one and only login PDU when it needs no CHAP.
    static let libiscsiKeys: [(String, String)] = [
        ("HeaderDigest", "None,CRC32C"), ("DataDigest", "None"), ("InitialR2T", "No"), ("ImmediateData", "Yes"),
        ("MaxBurstLength", "262144"), ("FirstBurstLength", "262144"), ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"), ("MaxOutstandingR2T", "1"), ("ErrorRecoveryLevel", "0"), ("IFMarker", "No"),
        ("OFMarker", "No"), ("MaxConnections", "1"), ("MaxRecvDataSegmentLength", "262144"),
        ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes"),
    ]

    @Test("iscsi-ls discovery login: CSG=1 → FFP in one PDU")
    func discoveryLogin() {
        var m = T.machine()
        let leading = [("InitiatorName", "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-ls"), ("SessionType", "Discovery")]
        let a = m.receivedLoginRequest(T.request(leading + Self.libiscsiKeys, csg: 1, nsg: 3, transit: true))
        guard case .loginComplete(let r, let p) = a else {
            Issue.record("expected completion, got \(a)")
            return
        }
        let answers = T.pairs(r)
        #expect(answers["MaxBurstLength"] == "Irrelevant" && answers["InitialR2T"] == "Irrelevant")
        #expect(answers["HeaderDigest"] == "None" && answers["IFMarker"] == "No")
        #expect(answers["TargetPortalGroupTag"] == nil)
        #expect(p.sessionType == .discovery && p.maxXmitDataSegmentLength == 262_144)
    }

    @Test("iscsi-inq normal login: HeaderDigest=None,CRC32C picks None, TPGT in the response")
    func normalLogin() {
        var m = T.machine()
        let leading = [
            ("InitiatorName", "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-inq"), ("TargetName", T.target),
            ("SessionType", "Normal"),
        ]
        let a = m.receivedLoginRequest(T.request(leading + Self.libiscsiKeys, csg: 1, nsg: 3, transit: true))
        let answers = T.pairs(a.response)
        #expect(answers["TargetPortalGroupTag"] == "1")
        #expect(answers["HeaderDigest"] == "None")
        #expect(answers["FirstBurstLength"] == "262144" && answers["MaxBurstLength"] == "262144")
        #expect(a.session?.firstBurstLength == 262_144 && a.session?.initialR2T == false)
    }
}
