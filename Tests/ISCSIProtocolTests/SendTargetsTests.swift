import NIOCore
import Testing

@testable import ISCSIProtocol

@Suite("Full-feature Text negotiation and SendTargets (RFC 7143 §11.10, Appendix C)")
struct SendTargetsTests {
    let targets = [
        DiscoveryTarget(name: "iqn.t:a", addresses: ["127.0.0.1:3260,1", "[::1]:3260,1"]),
        DiscoveryTarget(name: "iqn.t:b", addresses: ["127.0.0.1:3260,1"], allowedInitiators: ["iqn.i:other"]),
        DiscoveryTarget(name: "iqn.t:c", addresses: ["127.0.0.1:3261,2"]),
    ]
    let sequence = SequenceNumbers(statSN: 5, expCmdSN: 1, maxCmdSN: 64)

    private func session(_ type: SessionType, target: String? = nil, maxXmit: Int = 8192) -> SessionParameters {
        var p = SessionParameters()
        p.sessionType = type
        p.initiatorName = "iqn.i:me"
        p.targetName = target
        p.maxXmitDataSegmentLength = maxXmit
        return p
    }

    /// A Text Request PDU (TextRequestPDU has no builder, so the header is set by hand).
    private func request(
        _ text: String, itt: UInt32 = 9, ttt: UInt32 = 0xFFFF_FFFF, final: Bool = true, continue: Bool = false
    ) -> TextRequestPDU {
        var h = BasicHeaderSegment(opcode: .textRequest)
        h.flags = (final ? 0x80 : 0) | (`continue` ? 0x40 : 0)
        h.initiatorTaskTag = itt
        h.setUInt32(ttt, at: 20)
        h.setUInt32(1, at: 24)
        return TextRequestPDU(ISCSIPDU(header: h, data: ByteBuffer(bytes: Array(text.utf8))))
    }

    private func parse(_ action: TextNegotiator.Action) -> (TextResponsePDU?, [TextKeyValue]) {
        guard case .sendResponse(let r) = action else { return (nil, []) }
        return (r, (try? TextParameters.parse(r.data)) ?? [])
    }

    @Test("discovery SendTargets=All lists the targets this initiator may see")
    func all() {
        var n = TextNegotiator(session: session(.discovery), targets: targets)
        let (r, pairs) = parse(n.receivedTextRequest(request("SendTargets=All\0"), sequence: sequence))
        #expect(r?.final == true && r?.continue == false && r?.targetTransferTag == 0xFFFF_FFFF)
        #expect(r?.initiatorTaskTag == 9 && r?.sequence == sequence)
        #expect(pairs == [
            TextKeyValue("TargetName", "iqn.t:a"), TextKeyValue("TargetAddress", "127.0.0.1:3260,1"),
            TextKeyValue("TargetAddress", "[::1]:3260,1"),
            TextKeyValue("TargetName", "iqn.t:c"), TextKeyValue("TargetAddress", "127.0.0.1:3261,2"),
        ])
    }

    @Test("SendTargets=<name> reports that target only, hidden targets not at all")
    func named() {
        var n = TextNegotiator(session: session(.discovery), targets: targets)
        #expect(parse(n.receivedTextRequest(request("SendTargets=iqn.t:c\0"), sequence: sequence)).1.map(\.value)
            == ["iqn.t:c", "127.0.0.1:3261,2"])
        #expect(parse(n.receivedTextRequest(request("SendTargets=iqn.t:b\0"), sequence: sequence)).1.isEmpty)
    }

    @Test("normal session: All and empty value report only the session's target")
    func normalSession() {
        var n = TextNegotiator(session: session(.normal, target: "iqn.t:c"), targets: targets)
        #expect(parse(n.receivedTextRequest(request("SendTargets=All\0"), sequence: sequence)).1.first
            == TextKeyValue("TargetName", "iqn.t:c"))
        #expect(parse(n.receivedTextRequest(request("SendTargets=\0"), sequence: sequence)).1.count == 2)
        #expect(parse(n.receivedTextRequest(request("SendTargets=iqn.t:a\0"), sequence: sequence)).1.isEmpty)
    }

    @Test("other keys in the full feature phase")
    func otherKeys() {
        var n = TextNegotiator(session: session(.normal, target: "iqn.t:a"), targets: targets)
        let pairs = parse(n.receivedTextRequest(request("MaxBurstLength=512\0X-foo=1\0MaxRecvDataSegmentLength=4096\0"), sequence: sequence)).1
        #expect(pairs == [
            TextKeyValue("MaxBurstLength", "Irrelevant"), TextKeyValue("X-foo", "NotUnderstood"),
            TextKeyValue("MaxRecvDataSegmentLength", "Reject"),
        ])
    }

    @Test("long answers are split with C and a Target Transfer Tag, continued on empty requests")
    func responseContinuation() {
        let many = (0..<40).map { DiscoveryTarget(name: "iqn.2026-01.io.livemount:target-\($0)", addresses: ["127.0.0.1:3260,1"]) }
        var n = TextNegotiator(session: session(.discovery, maxXmit: 512), targets: many)
        var collected = ByteBuffer()
        var action = n.receivedTextRequest(request("SendTargets=All\0"), sequence: sequence)
        var parts = 0
        while case .sendResponse(var r) = action {
            parts += 1
            #expect(r.data.readableBytes <= 512)
            collected.writeBuffer(&r.data)
            if r.final {
                #expect(!r.continue && r.targetTransferTag == 0xFFFF_FFFF)
                break
            }
            #expect(r.continue && r.targetTransferTag != 0xFFFF_FFFF)
            action = n.receivedTextRequest(request("", ttt: r.targetTransferTag), sequence: sequence)
            if parts > 100 { break }
        }
        #expect(parts > 1)
        let pairs = (try? TextParameters.parse(collected)) ?? []
        #expect(pairs.filter { $0.key == "TargetName" }.count == 40)
        // A wrong TTT is a protocol error; a fresh request starts over.
        var m = TextNegotiator(session: session(.discovery, maxXmit: 512), targets: many)
        _ = m.receivedTextRequest(request("SendTargets=All\0"), sequence: sequence)
        guard case .reject = m.receivedTextRequest(request("", ttt: 0x7777), sequence: sequence) else {
            Issue.record("expected reject")
            return
        }
        #expect(parse(m.receivedTextRequest(request("SendTargets=iqn.2026-01.io.livemount:target-3\0"), sequence: sequence)).1.count == 2)
    }

    @Test("request text split with C is reassembled")
    func requestContinuation() {
        var n = TextNegotiator(session: session(.discovery), targets: targets)
        let (r1, p1) = parse(n.receivedTextRequest(request("SendTar", final: false, continue: true), sequence: sequence))
        #expect(r1?.final == false && p1.isEmpty)
        let ttt = r1?.targetTransferTag ?? 0xFFFF_FFFF
        #expect(ttt != 0xFFFF_FFFF)
        let (r2, p2) = parse(n.receivedTextRequest(request("gets=iqn.t:c\0", ttt: ttt), sequence: sequence))
        #expect(r2?.final == true)
        #expect(p2.first == TextKeyValue("TargetName", "iqn.t:c"))
    }

    @Test("C and F together, or a TTT never issued, are rejected")
    func protocolErrors() {
        var n = TextNegotiator(session: session(.discovery), targets: targets)
        guard case .reject(.protocolError) = n.receivedTextRequest(request("A=1\0", final: true, continue: true), sequence: sequence)
        else {
            Issue.record("expected reject")
            return
        }
        guard case .reject(.invalidPDUField) = n.receivedTextRequest(request("", ttt: 3), sequence: sequence) else {
            Issue.record("expected reject")
            return
        }
    }
}
