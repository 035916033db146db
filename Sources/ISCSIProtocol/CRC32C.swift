import CCRC32C
import NIOCore

/// CRC32C, the iSCSI header and data digest (RFC 7143 §13.1, RFC 3720
/// Appendix B.4). Uses the CPU's crc32 instruction when it has one.
public enum CRC32C {
    /// Whether the hardware-accelerated path is in use.
    public static var isHardwareAccelerated: Bool { livemount_crc32c_hardware() != 0 }

    /// The digest of `bytes`.
    public static func checksum<Bytes: Collection>(_ bytes: Bytes) -> UInt32 where Bytes.Element == UInt8 {
        var crc: UInt32 = 0xFFFF_FFFF
        let done: Void? = bytes.withContiguousStorageIfAvailable { raw in
            crc = livemount_crc32c_update(crc, raw.baseAddress, raw.count)
        }
        if done == nil {
            let copy = Array(bytes)
            copy.withUnsafeBytes { crc = livemount_crc32c_update(crc, $0.baseAddress, $0.count) }
        }
        return ~crc
    }

    /// The digest of a buffer's readable bytes.
    public static func checksum(_ buffer: ByteBuffer) -> UInt32 {
        buffer.withUnsafeReadableBytes { ~livemount_crc32c_update(0xFFFF_FFFF, $0.baseAddress, $0.count) }
    }

    /// The digest of a buffer's readable bytes followed by `padding` zero bytes.
    public static func checksum(_ buffer: ByteBuffer, padding: Int) -> UInt32 {
        var crc = buffer.withUnsafeReadableBytes { livemount_crc32c_update(0xFFFF_FFFF, $0.baseAddress, $0.count) }
        if padding > 0 {
            let zeros: (UInt8, UInt8, UInt8) = (0, 0, 0)
            withUnsafeBytes(of: zeros) { crc = livemount_crc32c_update(crc, $0.baseAddress, padding) }
        }
        return ~crc
    }
}
