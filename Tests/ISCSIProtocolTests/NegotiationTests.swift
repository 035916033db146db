import Testing

@testable import ISCSIProtocol

@Suite("Operational key negotiation (RFC 7143 §6.2, §13)")
struct NegotiationTests {
    private func answer(
        _ key: String, _ value: String, limits: TargetLimits = TargetLimits(), session: SessionType = .normal
    ) -> (OperationalNegotiation.Outcome, SessionParameters) {
        var n = OperationalNegotiation(limits: limits)
        let outcome = n.handle(TextKeyValue(key, value), sessionType: session)
        return (outcome, n.parameters)
    }

    @Test("digests: list negotiation picks the first supported value")
    func digests() {
        #expect(answer("HeaderDigest", "CRC32C,None").0 == .answer(TextKeyValue("HeaderDigest", "CRC32C")))
        #expect(answer("HeaderDigest", "CRC32C,None").1.headerDigest)
        #expect(answer("DataDigest", "None,CRC32C").0 == .answer(TextKeyValue("DataDigest", "None")))
        #expect(!answer("DataDigest", "None,CRC32C").1.dataDigest)
        #expect(answer("DataDigest", "FOO,CRC32C").1.dataDigest)
        let noDigests = TargetLimits(digestsAllowed: false)
        #expect(answer("HeaderDigest", "CRC32C,None", limits: noDigests).0 == .answer(TextKeyValue("HeaderDigest", "None")))
        #expect(answer("HeaderDigest", "CRC32C", limits: noDigests).0 == .answer(TextKeyValue("HeaderDigest", "Reject")))
    }

    @Test("numerical min keys answer the smaller value")
    func minimumKeys() {
        let limits = TargetLimits(maxBurstLength: 65536, firstBurstLength: 16384, maxOutstandingR2T: 4, defaultTime2Retain: 20)
        #expect(answer("MaxBurstLength", "262144", limits: limits).0 == .answer(TextKeyValue("MaxBurstLength", "65536")))
        #expect(answer("MaxBurstLength", "4096", limits: limits).1.maxBurstLength == 4096)
        #expect(answer("FirstBurstLength", "65536", limits: limits).0 == .answer(TextKeyValue("FirstBurstLength", "16384")))
        #expect(answer("MaxOutstandingR2T", "8", limits: limits).0 == .answer(TextKeyValue("MaxOutstandingR2T", "4")))
        #expect(answer("MaxOutstandingR2T", "2", limits: limits).1.maxOutstandingR2T == 2)
        #expect(answer("MaxConnections", "8").0 == .answer(TextKeyValue("MaxConnections", "1")))
        #expect(answer("DefaultTime2Retain", "0").0 == .answer(TextKeyValue("DefaultTime2Retain", "0")))
        #expect(answer("DefaultTime2Retain", "3600", limits: limits).1.defaultTime2Retain == 20)
        #expect(answer("ErrorRecoveryLevel", "2").0 == .answer(TextKeyValue("ErrorRecoveryLevel", "0")))
    }

    @Test("DefaultTime2Wait is numerical max")
    func time2Wait() {
        #expect(answer("DefaultTime2Wait", "0").0 == .answer(TextKeyValue("DefaultTime2Wait", "2")))
        #expect(answer("DefaultTime2Wait", "10").1.defaultTime2Wait == 10)
    }

    @Test("FirstBurstLength never exceeds the negotiated MaxBurstLength")
    func firstBurstBound() {
        var n = OperationalNegotiation(limits: TargetLimits(maxBurstLength: 1_048_576, firstBurstLength: 262_144))
        _ = n.handle(TextKeyValue("MaxBurstLength", "16384"), sessionType: .normal)
        let outcome = n.handle(TextKeyValue("FirstBurstLength", "65536"), sessionType: .normal)
        #expect(outcome == .answer(TextKeyValue("FirstBurstLength", "16384")))
        #expect(n.parameters.firstBurstLength <= n.parameters.maxBurstLength)
    }

    @Test("booleans: ImmediateData AND, InitialR2T OR, in-order keys OR with our Yes")
    func booleans() {
        #expect(answer("ImmediateData", "Yes").0 == .answer(TextKeyValue("ImmediateData", "Yes")))
        #expect(answer("ImmediateData", "Yes", limits: TargetLimits(immediateData: false)).0
            == .answer(TextKeyValue("ImmediateData", "No")))
        #expect(!answer("ImmediateData", "No").1.immediateData)
        #expect(answer("InitialR2T", "No").0 == .answer(TextKeyValue("InitialR2T", "No")))
        #expect(answer("InitialR2T", "No", limits: TargetLimits(initialR2T: true)).0
            == .answer(TextKeyValue("InitialR2T", "Yes")))
        #expect(answer("InitialR2T", "Yes").1.initialR2T)
        #expect(answer("DataPDUInOrder", "No").0 == .answer(TextKeyValue("DataPDUInOrder", "Yes")))
        #expect(answer("DataSequenceInOrder", "No").0 == .answer(TextKeyValue("DataSequenceInOrder", "Yes")))
        #expect(answer("ImmediateData", "maybe").0 == .answer(TextKeyValue("ImmediateData", "Reject")))
    }

    @Test("MaxRecvDataSegmentLength is a declaration bounded to 512...2^24-1")
    func maxRecv() {
        let (outcome, p) = answer("MaxRecvDataSegmentLength", "65536")
        #expect(outcome == .noAnswer)
        #expect(p.maxXmitDataSegmentLength == 65536)
        #expect(p.maxRecvDataSegmentLength == 262_144)
        #expect(answer("MaxRecvDataSegmentLength", "511").0 == .answer(TextKeyValue("MaxRecvDataSegmentLength", "Reject")))
        #expect(answer("MaxRecvDataSegmentLength", "16777216").0
            == .answer(TextKeyValue("MaxRecvDataSegmentLength", "Reject")))
        #expect(answer("MaxRecvDataSegmentLength", "16777215").1.maxXmitDataSegmentLength == 16_777_215)
    }

    @Test("out-of-range and ill-formed numbers are answered Reject")
    func rejects() {
        #expect(answer("MaxBurstLength", "100").0 == .answer(TextKeyValue("MaxBurstLength", "Reject")))
        #expect(answer("MaxConnections", "0").0 == .answer(TextKeyValue("MaxConnections", "Reject")))
        #expect(answer("DefaultTime2Wait", "3601").0 == .answer(TextKeyValue("DefaultTime2Wait", "Reject")))
        #expect(answer("ErrorRecoveryLevel", "3").0 == .answer(TextKeyValue("ErrorRecoveryLevel", "Reject")))
        #expect(answer("MaxBurstLength", "lots").0 == .answer(TextKeyValue("MaxBurstLength", "Reject")))
    }

    @Test("unknown keys are NotUnderstood; discovery-irrelevant keys are Irrelevant")
    func unknownAndIrrelevant() {
        #expect(answer("FooBar", "1").0 == .answer(TextKeyValue("FooBar", "NotUnderstood")))
        #expect(answer("MaxBurstLength", "512", session: .discovery).0
            == .answer(TextKeyValue("MaxBurstLength", "Irrelevant")))
        #expect(answer("HeaderDigest", "None", session: .discovery).0 == .answer(TextKeyValue("HeaderDigest", "None")))
        #expect(answer("IFMarker", "Yes").0 == .answer(TextKeyValue("IFMarker", "No")))
    }

    @Test("a key offered twice in one login fails with 02/00")
    func renegotiation() {
        var n = OperationalNegotiation(limits: TargetLimits())
        _ = n.handle(TextKeyValue("MaxBurstLength", "8192"), sessionType: .normal)
        #expect(n.handle(TextKeyValue("MaxBurstLength", "8192"), sessionType: .normal) == .fail(.initiatorError))
    }

    @Test("defaults are RFC 7143 §13 values")
    func defaults() {
        let p = SessionParameters()
        #expect(p.maxXmitDataSegmentLength == 8192)
        #expect(p.maxBurstLength == 262_144)
        #expect(p.firstBurstLength == 65536)
        #expect(p.initialR2T && p.immediateData && p.dataPDUInOrder && p.dataSequenceInOrder)
        #expect(p.defaultTime2Wait == 2 && p.defaultTime2Retain == 20)
        #expect(!p.headerDigest && !p.dataDigest)
    }

    @Test("offers keys whose defaults exceed our limits and checks the answers")
    func offers() {
        var n = OperationalNegotiation(limits: TargetLimits(maxBurstLength: 16384, firstBurstLength: 8192, immediateData: false))
        let offers = n.neededOffers(sessionType: .normal)
        #expect(offers == [
            TextKeyValue("MaxBurstLength", "16384"), TextKeyValue("FirstBurstLength", "8192"),
            TextKeyValue("ImmediateData", "No"),
        ])
        #expect(n.awaitingAnswers)
        #expect(n.handle(TextKeyValue("MaxBurstLength", "8192"), sessionType: .normal) == .noAnswer)
        #expect(n.handle(TextKeyValue("FirstBurstLength", "8192"), sessionType: .normal) == .noAnswer)
        #expect(n.handle(TextKeyValue("ImmediateData", "Yes"), sessionType: .normal) == .fail(.initiatorError))
        #expect(n.parameters.maxBurstLength == 8192)
        #expect(!n.awaitingAnswers)
        #expect(OperationalNegotiation(limits: TargetLimits()).neededOffersIsEmpty)
    }
}

extension OperationalNegotiation {
    fileprivate var neededOffersIsEmpty: Bool {
        var copy = self
        return copy.neededOffers(sessionType: .normal).isEmpty
    }
}
