/// Little-endian field access on raw on-disk bytes. Every accessor is bounds-checked and reads zero outside the
/// buffer, so a hostile structure can give wrong values but never trap; callers validate what they use.
extension Array where Element == UInt8 {
    /// The byte at `offset`, or 0 outside the buffer.
    func u8(_ offset: Int) -> UInt8 {
        offset >= 0 && offset < count ? self[offset] : 0
    }

    /// The little-endian 16-bit value at `offset`, or 0 if it does not fit.
    func le16(_ offset: Int) -> UInt16 {
        guard offset >= 0, offset <= count - 2 else { return 0 }
        return UInt16(self[offset]) | UInt16(self[offset + 1]) << 8
    }

    /// The little-endian 32-bit value at `offset`, or 0 if it does not fit.
    func le32(_ offset: Int) -> UInt32 {
        guard offset >= 0, offset <= count - 4 else { return 0 }
        var value: UInt32 = 0
        for index in (0..<4).reversed() { value = value << 8 | UInt32(self[offset + index]) }
        return value
    }

    /// The little-endian 64-bit value at `offset`, or 0 if it does not fit.
    func le64(_ offset: Int) -> UInt64 {
        guard offset >= 0, offset <= count - 8 else { return 0 }
        return UInt64(le32(offset)) | UInt64(le32(offset + 4)) << 32
    }

    /// `length` bytes at `offset`, clamped to the buffer.
    func slice(_ offset: Int, _ length: Int) -> [UInt8] {
        let start = Swift.max(0, Swift.min(offset, count))
        let end = Swift.max(start, Swift.min(count, offset &+ Swift.max(0, length)))
        return Array(self[start..<end])
    }

    /// The bytes at `offset` up to the first NUL (or `length`), decoded as UTF-8 with replacement.
    func cString(_ offset: Int, _ length: Int) -> String {
        let field = slice(offset, length)
        let end = field.firstIndex(of: 0) ?? field.count
        return String(decoding: field[..<end], as: UTF8.self)
    }

    /// Whether the bytes at `offset` equal `ascii`.
    func matches(_ ascii: String, at offset: Int) -> Bool {
        let expected = Array(ascii.utf8)
        return slice(offset, expected.count) == expected
    }
}

/// Two lowercase hex digits, as MBR partition type codes are written (`0x83`).
func hexByte(_ value: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(value >> 4)], digits[Int(value & 0xF)]])
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) as the GPT header and entry array use
/// (UEFI 2.10 §5.3.2).
func crc32IEEE(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for byte in bytes {
        crc = crc32Table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8)
    }
    return crc ^ 0xFFFF_FFFF
}

private let crc32Table: [UInt32] = (0..<256).map { index in
    var value = UInt32(index)
    for _ in 0..<8 { value = value & 1 == 1 ? 0xEDB8_8320 ^ (value >> 1) : value >> 1 }
    return value
}
