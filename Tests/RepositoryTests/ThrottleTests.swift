import NIOCore
import Repository
import Synchronization
import Testing

/// A chunk source that answers at once with `length` bytes of `id`'s first byte, counting calls.
final class InstantSource: ChunkSource {
    let calls = Atomic<Int>(0)

    func readChunk(_ id: ChunkID, length: Int) async throws(ChunkReadError) -> ByteBuffer {
        calls.add(1, ordering: .relaxed)
        return ByteBuffer(bytes: [UInt8](repeating: id.bytes[0], count: length))
    }
}

@Suite("Read throttle")
struct ThrottleTests {
    @Test("the token bucket releases at most burst + rate × window bytes, queueing the rest in order")
    func tokenBucket() {
        var bucket = TokenBucket(bytesPerSecond: 1000, burstBytes: 100, now: 0)
        // 50 reservations of 100 bytes at the same instant: the first is free, each next waits 0.1 s more.
        let delays = (0..<50).map { _ in bucket.reserve(100, now: 0) }
        #expect(delays[0] == 0)
        for index in 1..<50 { #expect(abs(delays[index] - Double(index) * 0.1) < 1e-9) }
        for window in [0.0, 0.5, 1.0, 2.5] {
            let released = delays.filter { $0 <= window + 1e-9 }.count * 100
            #expect(Double(released) <= 100 + 1000 * window + 1e-6)
        }
        // After a long idle period the bucket holds only its burst, not the idle time's worth.
        var idle = TokenBucket(bytesPerSecond: 1000, burstBytes: 100, now: 0)
        #expect(idle.reserve(100, now: 0) == 0)
        #expect(abs(idle.reserve(500, now: 100) - 0.4) < 1e-9)
    }

    @Test("throttled reads wait side by side, not one after another")
    func overlappingReads() async throws {
        let base = InstantSource()
        let throttled = ThrottledChunkSource(base: base, throttle: ReadThrottle(latency: .seconds(1)))
        let count = 16
        let ids = try (0..<count).map { index in
            try #require(ChunkID(digest: [UInt8](repeating: UInt8(index), count: 32)))
        }
        let results = try await withThrowingTaskGroup(of: (Int, [UInt8]).self) { group in
            for (index, id) in ids.enumerated() {
                group.addTask { (index, Array(try await throttled.readChunk(id, length: 10).readableBytesView)) }
            }
            var results: [Int: [UInt8]] = [:]
            for try await (index, bytes) in group { results[index] = bytes }
            return results
        }
        #expect(base.calls.load(ordering: .relaxed) == count)
        for index in 0..<count { #expect(results[index] == [UInt8](repeating: UInt8(index), count: 10)) }
        #expect(throttled.mostConcurrentWaits == count)
    }
}
