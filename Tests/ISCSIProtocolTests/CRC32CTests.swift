import CCRC32C
import ISCSIProtocol
import Testing

/// The SSE4.2 path runs three interleaved streams over 3 x 8 KiB and 3 x 256-byte blocks and joins them with
/// shift tables; it must equal the portable table code for every length and alignment.
@Suite("CRC32C: hardware and portable paths agree")
struct CRC32CTests {
    private static func bytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed | 1
        return (0..<count).map { _ in
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return UInt8(truncatingIfNeeded: state)
        }
    }

    @Test(
        "lengths around the block sizes, at every alignment",
        arguments: [0, 1, 7, 8, 255, 767, 768, 769, 1000, 24_575, 24_576, 24_577, 25_344, 49_152 + 768 + 13, 1 << 20]
    )
    func agree(length: Int) {
        let data = Self.bytes(length + 8, seed: UInt64(length) &* 0x9E37_79B9)
        data.withUnsafeBytes { raw in
            for start in 0..<8 {
                let slice = UnsafeRawBufferPointer(rebasing: raw[start..<(start + length)])
                for initial: UInt32 in [0, 0xFFFF_FFFF, 0x1234_5678] {
                    let hardware = livemount_crc32c_update(initial, slice.baseAddress, slice.count)
                    let portable = livemount_crc32c_update_portable(initial, slice.baseAddress, slice.count)
                    #expect(hardware == portable, "length \(length), offset \(start), initial \(initial)")
                }
            }
        }
    }

    @Test("a CRC over pieces equals the CRC over the whole, and a megabyte of known data has a known CRC")
    func pieces() {
        let data = Self.bytes(3 << 20, seed: 5)
        let whole = data.withUnsafeBytes { livemount_crc32c_update(0xFFFF_FFFF, $0.baseAddress, $0.count) }
        var running: UInt32 = 0xFFFF_FFFF
        var offset = 0
        for size in [1, 100, 24_576, 777, 1 << 20, 30_000] where offset < data.count {
            data[offset..<min(data.count, offset + size)].withUnsafeBytes {
                running = livemount_crc32c_update(running, $0.baseAddress, $0.count)
            }
            offset += size
        }
        data[offset...].withUnsafeBytes { running = livemount_crc32c_update(running, $0.baseAddress, $0.count) }
        #expect(running == whole)
        // 1 MiB of 0x00 through the public digest (checked against the portable path, and against
        // Python's crc32c of b"\0" * 2**20).
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 1 << 20)) == 0x14298C12)
    }
}
