import NIOCore
import Synchronization

/// Slow backup storage, on purpose: the latency every chunk read waits and an optional cap on the total
/// read rate. Benchmarks and tests use it to stand in for an object store or a busy NAS
/// (DESIGN.md, Performance: "latency injected per chunk read").
public struct ReadThrottle: Sendable, Equatable {
    /// Added to every chunk read.
    public var latency: Duration
    /// Cap on the plaintext bytes per second of all reads together; nil for no cap.
    public var bandwidthBytesPerSecond: Int?

    public init(latency: Duration = .zero, bandwidthBytesPerSecond: Int? = nil) {
        self.latency = latency
        self.bandwidthBytesPerSecond = bandwidthBytesPerSecond
    }
}

/// A token bucket on bytes, driven by the caller's clock (seconds as a `Double`) so it can be tested with a
/// fake one.
///
/// Reservations may run the bucket into debt: each caller is told how long to wait before its bytes may
/// flow, so concurrent callers queue in order of arrival and, over any window of `w` seconds, at most
/// `burst + rate * w` bytes are released.
public struct TokenBucket: Sendable {
    /// Refill rate, bytes per second.
    public let rate: Double
    /// Bucket size: the most bytes released at once after an idle period.
    public let burst: Double
    private var tokens: Double
    private var last: Double

    public init(bytesPerSecond: Int, burstBytes: Int, now: Double = 0) {
        precondition(bytesPerSecond > 0, "token bucket rate must be positive")
        rate = Double(bytesPerSecond)
        burst = Double(max(1, burstBytes))
        tokens = burst
        last = now
    }

    /// Takes `bytes` from the bucket at time `now`; returns how many seconds the caller must wait before
    /// transferring them (0 when the bucket had them).
    public mutating func reserve(_ bytes: Int, now: Double) -> Double {
        if now > last {
            tokens = min(burst, tokens + (now - last) * rate)
            last = now
        }
        tokens -= Double(bytes)
        return tokens >= 0 ? 0 : -tokens / rate
    }
}

/// A `ChunkSource` that makes another one slow: every read first waits `throttle.latency` plus its turn in a
/// token bucket on plaintext bytes (the `length` each read asks for), then reads from `base`.
///
/// Waiting is `Task.sleep`, never a blocked thread, so many reads wait at once and overlap just as requests
/// to a real high-latency store do.
public final class ThrottledChunkSource: ChunkSource {
    public let base: any ChunkSource
    public let throttle: ReadThrottle
    private let clock = ContinuousClock()
    private let start: ContinuousClock.Instant
    private let state: Mutex<State>

    private struct State {
        var bucket: TokenBucket?
        var waiting = 0
        var mostWaiting = 0
    }

    public init(base: any ChunkSource, throttle: ReadThrottle) {
        self.base = base
        self.throttle = throttle
        start = clock.now
        // Burst: a tenth of a second's worth of bytes, so the cap holds over short windows too.
        let bucket = throttle.bandwidthBytesPerSecond.map { rate in
            TokenBucket(bytesPerSecond: max(1, rate), burstBytes: max(1, rate / 10))
        }
        state = Mutex(State(bucket: bucket))
    }

    /// The most reads that were waiting (latency or bandwidth) at the same time so far.
    public var mostConcurrentWaits: Int { state.withLock { $0.mostWaiting } }

    public func readChunk(_ id: ChunkID, length: Int) async throws(ChunkReadError) -> ByteBuffer {
        let now = (clock.now - start) / .seconds(1)
        let bandwidthDelay = state.withLock { state -> Double in
            state.waiting += 1
            state.mostWaiting = max(state.mostWaiting, state.waiting)
            return state.bucket?.reserve(length, now: now) ?? 0
        }
        let wait = throttle.latency + .seconds(bandwidthDelay)
        if wait > .zero {
            // Cancellation cuts the wait short; the read itself still runs so the caller gets an answer.
            try? await Task.sleep(for: wait)
        }
        state.withLock { $0.waiting -= 1 }
        return try await base.readChunk(id, length: length)
    }
}
