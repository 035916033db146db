import Repository
import Testing

@Suite("ChunkID")
struct ChunkIDTests {
    @Test("hex round trip keeps every byte, and ordering follows the bytes")
    func hexRoundTrip() throws {
        let bytes = (0..<32).map { UInt8($0 * 7 + 1) }
        let id = try #require(ChunkID(digest: bytes))
        #expect(id.bytes == bytes)
        #expect(ChunkID(hex: id.hex) == id)
        #expect(ChunkID(hex: id.hex.uppercased()) == id)
        #expect(ChunkID(hex: "zz" + id.hex.dropFirst(2)) == nil)
        #expect(ChunkID(digest: bytes.dropLast()) == nil)
        var larger = bytes
        larger[31] += 1
        #expect(try #require(ChunkID(digest: larger)) > id)
    }
}
