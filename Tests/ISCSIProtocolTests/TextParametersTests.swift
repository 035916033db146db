import NIOCore
import Testing

@testable import ISCSIProtocol

@Suite("Text keys (RFC 7143 §6.1)")
struct TextParametersTests {
    @Test("parses NUL-separated pairs in order and round-trips")
    func roundTrip() throws {
        let pairs = [TextKeyValue("InitiatorName", "iqn.x"), TextKeyValue("HeaderDigest", "CRC32C,None")]
        let bytes = TextParameters.encode(pairs)
        #expect(bytes.last == 0)
        #expect(bytes.filter { $0 == 0 }.count == 2)
        #expect(try TextParameters.parse(bytes) == pairs)
        #expect(try TextParameters.parse(bytes)[1].values == ["CRC32C", "None"])
    }

    @Test("accepts padding NULs and a last pair without NUL")
    func padding() throws {
        let bytes = Array("A=1\0\0\0B=2".utf8)
        #expect(try TextParameters.parse(bytes) == [TextKeyValue("A", "1"), TextKeyValue("B", "2")])
    }

    @Test("empty value and '=' inside the value")
    func emptyValue() throws {
        let pairs = try TextParameters.parse(Array("SendTargets=\0X-a=b=c\0".utf8))
        #expect(pairs == [TextKeyValue("SendTargets", ""), TextKeyValue("X-a", "b=c")])
    }

    @Test("missing '=' is an error")
    func missingEquals() {
        #expect(throws: TextParameterError.missingEquals("InitiatorName")) {
            try TextParameters.parse(Array("InitiatorName\0".utf8))
        }
    }

    @Test("empty key is an error")
    func emptyKey() {
        #expect(throws: TextParameterError.emptyKey) { try TextParameters.parse(Array("=x\0".utf8)) }
    }

    @Test("a 64-byte key is too long, 63 is fine")
    func keyLength() throws {
        let ok = String(repeating: "k", count: 63)
        #expect(try TextParameters.parse(Array("\(ok)=1\0".utf8)).count == 1)
        let long = String(repeating: "k", count: 64)
        #expect(throws: TextParameterError.keyTooLong(long)) { try TextParameters.parse(Array("\(long)=1\0".utf8)) }
    }

    @Test("key characters outside the RFC set are rejected")
    func keyCharacters() {
        #expect(throws: TextParameterError.invalidKeyCharacter("Bad Key")) {
            try TextParameters.parse(Array("Bad Key=1\0".utf8))
        }
    }

    @Test("duplicate keys are an error except TargetName/TargetAddress")
    func duplicates() throws {
        #expect(throws: TextParameterError.duplicateKey("MaxBurstLength")) {
            try TextParameters.parse(Array("MaxBurstLength=512\0MaxBurstLength=1024\0".utf8))
        }
        let st = "TargetName=a\0TargetAddress=1.2.3.4:3260,1\0TargetAddress=5.6.7.8:3260,1\0TargetName=b\0"
        #expect(try TextParameters.parse(Array(st.utf8)).count == 4)
        #expect(try TextParameters.parse(Array("A=1\0A=2\0".utf8), allowDuplicates: true).count == 2)
    }

    @Test("non-UTF-8 bytes are an error")
    func nonUTF8() {
        #expect(throws: TextParameterError.invalidUTF8) { try TextParameters.parse([0x41, 0x3D, 0xFF, 0xFE, 0x00]) }
    }

    @Test("value length limits: 255 for simple values, 8192 for CHAP binary values")
    func valueLength() {
        #expect(!TextKeyValue("TargetAlias", String(repeating: "a", count: 255)).valueTooLong)
        #expect(TextKeyValue("TargetAlias", String(repeating: "a", count: 256)).valueTooLong)
        #expect(!TextKeyValue("CHAP_R", String(repeating: "a", count: 4000)).valueTooLong)
        #expect(TextKeyValue("CHAP_R", String(repeating: "a", count: 8193)).valueTooLong)
    }

    @Test("numbers: decimal and hex, junk rejected")
    func numbers() {
        #expect(TextParameters.number("8192") == 8192)
        #expect(TextParameters.number("0x2000") == 8192)
        #expect(TextParameters.number("0X2000") == 8192)
        #expect(TextParameters.number("") == nil)
        #expect(TextParameters.number("0x") == nil)
        #expect(TextParameters.number("-1") == nil)
        #expect(TextParameters.number("12a") == nil)
        #expect(TextParameters.number("99999999999999999999999") == nil)
    }

    @Test("booleans are exactly Yes or No")
    func booleans() {
        #expect(TextParameters.boolean("Yes") == true)
        #expect(TextParameters.boolean("No") == false)
        #expect(TextParameters.boolean("yes") == nil)
    }

    @Test("binary values: hex (odd length too) and base64")
    func binary() {
        #expect(TextParameters.binary("0x0aFF") == [0x0A, 0xFF])
        #expect(TextParameters.binary("0xabc") == [0x0A, 0xBC])
        #expect(TextParameters.binary("0xzz") == nil)
        #expect(TextParameters.binary("0bAAEC") == [0x00, 0x01, 0x02])
        #expect(TextParameters.binary("0bAAE=") == [0x00, 0x01])
        #expect(TextParameters.binary("0bAA==") == [0x00])
        #expect(TextParameters.binary("0bA=AA") == nil)
        #expect(TextParameters.binary("0bAAE") == nil)
        #expect(TextParameters.binary("1234") == nil)
        #expect(TextParameters.hex([0x00, 0xAB]) == "0x00AB")
    }
}
