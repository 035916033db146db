import ISCSIProtocol
import NIOCore

/// What the PDU fuzzer (`tools/fuzz/run.sh`, libFuzzer) and its regression
/// tests feed arbitrary bytes through: the framing parser with the digest and
/// length settings taken from the first byte, every typed decoder, and the
/// login state machine for Login Requests. Any crash, trap or hang here is a
/// bug: bad input must come back as a value or an error.
public enum PDUFuzzHarness {
    public static func run(_ bytes: [UInt8]) {
        guard let control = bytes.first else { return }
        var parser = PDUParser()
        parser.headerDigest = control & 0x01 != 0
        parser.dataDigest = control & 0x02 != 0
        parser.maxRecvDataSegmentLength = control & 0x04 != 0 ? 512 : 262_144
        var buffer = ByteBuffer(bytes: bytes.dropFirst())
        var login = LoginStateMachine(
            configuration: LoginConfiguration(
                targets: [
                    "iqn.2026-11.org.livemount:fuzz": TargetLoginPolicy(
                        chap: control & 0x08 != 0 ? CHAPAccount(user: "u", secret: "secret-secret") : nil)
                ], newTSIH: 1, initialStatSN: 1),
            randomBytes: { Array(repeating: 0x42, count: $0) })
        var rounds = 0
        while rounds < 10_000 {
            rounds += 1
            let outcome: PDUParser.Outcome?
            do {
                outcome = try parser.parse(&buffer)
            } catch {
                return
            }
            guard case .pdu(let pdu) = outcome else { return }
            decode(pdu, login: &login)
        }
    }

    private static func decode(_ pdu: ISCSIPDU, login: inout LoginStateMachine) {
        switch pdu.opcode {
        case .scsiCommand: _ = try? SCSICommandPDU(pdu)
        case .dataOut: _ = DataOutPDU(pdu)
        case .nopOut: _ = NOPOutPDU(pdu)
        case .textRequest: _ = TextRequestPDU(pdu)
        case .logoutRequest: _ = LogoutRequestPDU(pdu)
        case .taskManagementRequest: _ = TaskManagementRequestPDU(pdu)
        case .loginRequest:
            if !login.isFinished { _ = login.receivedLoginRequest(LoginRequestPDU(pdu)) }
        case .loginResponse: _ = LoginResponsePDU(pdu)
        default: break
        }
        _ = try? TextParameters.parse(pdu.data)
    }
}
