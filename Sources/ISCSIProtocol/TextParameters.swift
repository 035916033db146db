import NIOCore

// MARK: - Text keys (RFC 7143 §6.1)

/// One `key=value` pair of an iSCSI text data segment (RFC 7143 §6.1).
public struct TextKeyValue: Sendable, Equatable, CustomStringConvertible {
    public var key: String
    public var value: String

    public init(_ key: String, _ value: String) {
        self.key = key
        self.value = value
    }

    /// The comma-separated values of a list key (RFC 7143 §6.1 "list-of-values").
    public var values: [String] { value.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }

    /// Whether the value exceeds the length RFC 7143 §6.1 allows for this key: 255 bytes for a simple
    /// value, 8192 for the large binary CHAP values (RFC 7143 §12.1.3, §6.1 "large-binary-value").
    public var valueTooLong: Bool {
        let limit = TextParameters.longValueKeys.contains(key) ? TextParameters.maxLongValueLength : TextParameters.maxValueLength
        return value.utf8.count > limit
    }

    public var description: String { "\(key)=\(value)" }
}

/// Why a text data segment could not be parsed. Any of these makes the whole segment unusable,
/// so during login the target answers with an initiator error (RFC 7143 §11.13.5, 02/00).
public enum TextParameterError: Error, Sendable, Equatable {
    /// A pair without `=` (RFC 7143 §6.1: every pair is `key=value`).
    case missingEquals(String)
    /// `=value` with nothing before it.
    case emptyKey
    /// A key longer than 63 bytes (RFC 7143 §6.1).
    case keyTooLong(String)
    /// A key with a character outside `a-zA-Z0-9.-+@_` (RFC 7143 §6.1 "key-name").
    case invalidKeyCharacter(String)
    /// Bytes that are not UTF-8 (RFC 7143 §6.1: text is UTF-8).
    case invalidUTF8
    /// The same key twice in one text exchange (RFC 7143 §6.2: a key is declared or negotiated once).
    case duplicateKey(String)
}

/// Parsing and serialising iSCSI text data segments: NUL-terminated `key=value` pairs (RFC 7143 §6.1).
public enum TextParameters {
    /// RFC 7143 §6.1: "A key-name ... MUST NOT exceed 63 bytes."
    public static let maxKeyLength = 63
    /// RFC 7143 §6.1: simple values up to 255 bytes.
    public static let maxValueLength = 255
    /// Large binary values (CHAP challenge/response) may be longer; RFC 7143 §6.1 and §12.1.3.
    public static let maxLongValueLength = 8192
    /// Keys whose values may be long binary strings.
    public static let longValueKeys: Set<String> = ["CHAP_C", "CHAP_R"]
    /// Keys a single text exchange may legitimately repeat (SendTargets responses, RFC 7143 Appendix C).
    public static let repeatableKeys: Set<String> = ["TargetName", "TargetAddress"]

    /// Parses a complete (already reassembled) text data segment. Empty strings between NULs (padding,
    /// a trailing NUL) are skipped; a final pair without its NUL is accepted.
    /// - Parameter allowDuplicates: accept any key more than once (only for parsing target answers).
    public static func parse(_ bytes: some Collection<UInt8>, allowDuplicates: Bool = false) throws(TextParameterError)
        -> [TextKeyValue]
    {
        var pairs: [TextKeyValue] = []
        var seen: Set<String> = []
        for chunk in bytes.split(separator: 0, omittingEmptySubsequences: true) {
            guard let text = String(validating: chunk, as: UTF8.self) else { throw .invalidUTF8 }
            guard let equals = text.firstIndex(of: "=") else { throw .missingEquals(text) }
            let key = String(text[..<equals])
            let value = String(text[text.index(after: equals)...])
            guard !key.isEmpty else { throw .emptyKey }
            guard key.utf8.count <= maxKeyLength else { throw .keyTooLong(key) }
            guard key.utf8.allSatisfy(isKeyCharacter) else { throw .invalidKeyCharacter(key) }
            if !allowDuplicates && !repeatableKeys.contains(key) {
                guard seen.insert(key).inserted else { throw .duplicateKey(key) }
            }
            pairs.append(TextKeyValue(key, value))
        }
        return pairs
    }

    /// Parses the readable bytes of `buffer` (see `parse(_:allowDuplicates:)`).
    public static func parse(_ buffer: ByteBuffer, allowDuplicates: Bool = false) throws(TextParameterError)
        -> [TextKeyValue]
    {
        try parse(buffer.readableBytesView, allowDuplicates: allowDuplicates)
    }

    /// Serialises pairs, each followed by one NUL (RFC 7143 §6.1).
    public static func encode(_ pairs: [TextKeyValue]) -> [UInt8] {
        var out: [UInt8] = []
        for pair in pairs {
            out += Array(pair.key.utf8)
            out.append(UInt8(ascii: "="))
            out += Array(pair.value.utf8)
            out.append(0)
        }
        return out
    }

    /// RFC 7143 §6.1: key-name characters are letters, digits, '.', '-', '+', '@', '_'.
    static func isKeyCharacter(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        case UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "+"), UInt8(ascii: "@"), UInt8(ascii: "_"):
            return true
        default:
            return false
        }
    }

    /// Parses a numerical value: decimal, or hex with `0x`/`0X` (RFC 7143 §6.1 "numerical-value",
    /// "hex-constant"). Returns nil for anything else or for values above 2^64-1.
    public static func number(_ text: String) -> UInt64? {
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            let digits = text.dropFirst(2)
            guard !digits.isEmpty else { return nil }
            return UInt64(digits, radix: 16)
        }
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            return nil
        }
        return UInt64(text)
    }

    /// Parses a boolean value (RFC 7143 §6.1 "boolean-value": `Yes` or `No`).
    public static func boolean(_ text: String) -> Bool? {
        switch text {
        case "Yes": return true
        case "No": return false
        default: return nil
        }
    }

    /// Decodes a binary value: `0x`/`0X` hex or `0b`/`0B` base64 (RFC 7143 §6.1 "binary-value").
    public static func binary(_ text: String) -> [UInt8]? {
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            var digits = Array(text.utf8.dropFirst(2))
            guard !digits.isEmpty else { return nil }
            // RFC 7143 §6.1: an odd number of hex digits has an implied leading zero.
            if digits.count % 2 == 1 { digits.insert(UInt8(ascii: "0"), at: 0) }
            var out: [UInt8] = []
            out.reserveCapacity(digits.count / 2)
            var i = 0
            while i < digits.count {
                guard let hi = hexValue(digits[i]), let lo = hexValue(digits[i + 1]) else { return nil }
                out.append(hi << 4 | lo)
                i += 2
            }
            return out
        }
        if text.hasPrefix("0b") || text.hasPrefix("0B") {
            return base64Decode(Array(text.utf8.dropFirst(2)))
        }
        return nil
    }

    /// Encodes bytes as an upper-case `0x` hex binary value.
    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = Array("0x".utf8)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    /// Standard base64 (RFC 4648 §4) with `=` padding, as RFC 7143 §6.1 requires.
    private static func base64Decode(_ chars: [UInt8]) -> [UInt8]? {
        guard !chars.isEmpty, chars.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        var accumulator: UInt32 = 0
        var bits = 0
        var padding = 0
        for (i, c) in chars.enumerated() {
            let v: UInt32
            switch c {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): v = UInt32(c - UInt8(ascii: "A"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): v = UInt32(c - UInt8(ascii: "a") + 26)
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = UInt32(c - UInt8(ascii: "0") + 52)
            case UInt8(ascii: "+"): v = 62
            case UInt8(ascii: "/"): v = 63
            case UInt8(ascii: "="):
                // Padding only in the last two positions.
                guard i >= chars.count - 2 else { return nil }
                padding += 1
                continue
            default: return nil
            }
            guard padding == 0 else { return nil }
            accumulator = accumulator << 6 | v
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8((accumulator >> UInt32(bits)) & 0xFF))
            }
        }
        return out
    }
}
