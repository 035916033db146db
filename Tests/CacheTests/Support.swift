import Foundation
import Logging
import NIOCore
import Repository
import Synchronization
import Testing

@testable import Cache

/// A fresh directory under the temporary directory, removed by `remove()`.
struct ScratchDirectory {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("cache-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func path(_ name: String) -> String { url.appendingPathComponent(name).path }

    func remove() { try? FileManager.default.removeItem(at: url) }
}

/// A chunk ID built from a number (the cache never re-hashes, so any 32 distinct bytes do).
func chunkID(_ n: Int) -> ChunkID {
    var bytes = [UInt8](repeating: 0xA5, count: 24)
    withUnsafeBytes(of: UInt64(n).bigEndian) { bytes.append(contentsOf: $0) }
    guard let id = ChunkID(digest: bytes) else { fatalError("32 bytes make an ID") }
    return id
}

/// Deterministic plaintext for chunk `n`.
func chunkBytes(_ n: Int, length: Int) -> [UInt8] {
    (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ n &* 131 &+ ($0 >> 9) &+ 7) }
}

let testLogger = Logger(label: "cache-tests")

/// A `ChunkSource` over generated chunks that counts reads, can fail chosen chunks, and with `gated` holds
/// every read until the test releases it (so in-flight fetches can be counted without timing).
final class FakeSource: ChunkSource {
    private struct State {
        var reads: [ChunkID: Int] = [:]
        var failing: Set<ChunkID> = []
        var started: [ChunkID] = []
        var inFlight = 0
        var maxInFlight = 0
        var gates: [ChunkID: [CheckedContinuation<Void, Never>]] = [:]
        var released: Set<ChunkID> = []
    }
    private let state = Mutex(State())
    let length: Int
    let gated: Bool
    private let numbers: Mutex<[ChunkID: Int]>

    init(length: Int, gated: Bool = false, chunks: Range<Int> = 0..<1000) {
        self.length = length
        self.gated = gated
        var numbers: [ChunkID: Int] = [:]
        for n in chunks { numbers[chunkID(n)] = n }
        self.numbers = Mutex(numbers)
    }

    func readChunk(_ id: ChunkID, length: Int) async throws(ChunkReadError) -> ByteBuffer {
        state.withLock { state in
            state.reads[id, default: 0] += 1
            state.started.append(id)
            state.inFlight += 1
            state.maxInFlight = max(state.maxInFlight, state.inFlight)
        }
        if gated {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let go = state.withLock { state -> Bool in
                    if state.released.contains(id) { return true }
                    state.gates[id, default: []].append(continuation)
                    return false
                }
                if go { continuation.resume() }
            }
        }
        let failing = state.withLock { state -> Bool in
            state.inFlight -= 1
            return state.failing.contains(id)
        }
        if failing { throw ChunkReadError(.missing, chunk: id, "test says so") }
        guard let n = numbers.withLock({ $0[id] }) else { throw ChunkReadError(.missing, chunk: id, "unknown") }
        return ByteBuffer(bytes: chunkBytes(n, length: length))
    }

    /// Lets reads of `id` (present and future) complete.
    func release(_ id: ChunkID) {
        let waiters = state.withLock { state in
            state.released.insert(id)
            return state.gates.removeValue(forKey: id) ?? []
        }
        for waiter in waiters { waiter.resume() }
    }

    func fail(_ id: ChunkID) { state.withLock { _ = $0.failing.insert(id) } }
    func reads(_ id: ChunkID) -> Int { state.withLock { $0.reads[id] ?? 0 } }
    var totalReads: Int { state.withLock { $0.reads.values.reduce(0, +) } }
    var started: [ChunkID] { state.withLock { $0.started } }
    var inFlight: Int { state.withLock { $0.inFlight } }
    var maxInFlight: Int { state.withLock { $0.maxInFlight } }
}

/// Yields until `condition` holds (no clock involved); records an issue if it never does.
func eventually(_ what: String, _ condition: () -> Bool) async {
    for _ in 0..<2_000_000 {
        if condition() { return }
        await Task.yield()
    }
    Issue.record("never happened: \(what)")
}

extension ByteBuffer {
    var bytes: [UInt8] { getBytes(at: readerIndex, length: readableBytes) ?? [] }
}
