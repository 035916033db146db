import Dispatch
import Logging
import Prefetch
import Synchronization

/// Records the reads one mount serves into the trace store (issue 4, Recording).
///
/// Time zero is the first read it sees. Reads are buffered and written in batches on a serial queue of their
/// own (SQLite never runs on an event loop), at most a second apart, so a crash loses at most the last second.
/// A read is written once no read issued before it can still be in flight (two seconds later), so the stored
/// trace is in issue order even though reads complete out of order.
final class TraceRecorder: Sendable {
    let info: TraceInfo
    private let store: TraceStore
    /// Stop by itself after this long (µs since time zero); nil: until stopped.
    private let limit: UInt64?
    private let logger: Logger
    private let queue = DispatchQueue(label: "livemount.trace-recorder")
    private let state = Mutex(State())

    private struct State {
        var zero: UInt64?
        var buffer: [TraceRead] = []
        var recorded = 0
        var stopped = false
        /// The trace's row, made by the first write (on the queue, never on an I/O path).
        var id: Int64?
        var failed = false
    }

    /// Holdback before a read is written (ns): longer than any read stays in flight.
    private static let holdback: UInt64 = 2_000_000_000

    init(store: TraceStore, info: TraceInfo, limitSeconds: Int?, logger: Logger) {
        self.store = store
        self.info = info
        self.limit = limitSeconds.map { UInt64($0) * 1_000_000 }
        self.logger = logger
        scheduleFlush()
    }

    /// Flushes once a second until stopped.
    private func scheduleFlush() {
        queue.asyncAfter(deadline: .now() + 1) { [weak self] in
            guard let self, !self.isStopped else { return }
            self.flush(all: false)
            self.scheduleFlush()
        }
    }

    /// Whether it stopped (by hand or at its time limit).
    var isStopped: Bool { state.withLock { $0.stopped } }

    /// Reads recorded so far.
    var count: Int { state.withLock { $0.recorded } }

    /// Adds one read (times in nanoseconds of `DispatchTime.now().uptimeNanoseconds`). Returns false once the
    /// recording has reached its time limit (and stopped).
    @discardableResult
    func record(issued: UInt64, completed: UInt64, lba: UInt64, blocks: UInt32, source: ReadSource, prefetched: Bool)
        -> Bool
    {
        let reachedLimit = state.withLock { state -> Bool? in
            guard !state.stopped else { return nil }
            let zero = state.zero ?? issued
            state.zero = zero
            guard issued >= zero else { return false }
            let at = (issued - zero) / 1000
            if let limit, at > limit { return true }
            state.buffer.append(
                TraceRead(
                    issued: at, completed: (max(completed, issued) - zero) / 1000, lba: lba, blocks: blocks,
                    source: source, prefetched: prefetched))
            state.recorded += 1
            return false
        }
        switch reachedLimit {
        case nil: return false
        case true?:
            stopInBackground()
            return false
        case false?: return true
        }
    }

    /// Stops recording and writes what is buffered (on the recorder's queue); returns the trace id.
    @discardableResult
    func stop() async -> Int64? {
        if markStopped() {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                queue.async {
                    self.finish()
                    done.resume()
                }
            }
        }
        return state.withLock { $0.id }
    }

    /// The trace's id in the store, once its first reads were written.
    var id: Int64? { state.withLock { $0.id } }

    /// The time limit was reached on an I/O path: stop without waiting for the write.
    private func stopInBackground() {
        if markStopped() { queue.async { self.finish() } }
    }

    private func markStopped() -> Bool {
        state.withLock { state -> Bool in
            defer { state.stopped = true }
            return !state.stopped
        }
    }

    private func finish() {
        flush(all: true)
        logger.info("trace recorded", metadata: ["trace": "\(id.map(String.init) ?? "none")", "profile": "\(info.profile)", "reads": "\(count)"])
    }

    /// Writes buffered reads issued more than the holdback ago (all of them when `all`), in issue order.
    private func flush(all: Bool) {
        let now = DispatchTime.now().uptimeNanoseconds
        let batch = state.withLock { state -> [TraceRead] in
            guard let zero = state.zero, !state.buffer.isEmpty else { return [] }
            state.buffer.sort { ($0.issued, $0.lba) < ($1.issued, $1.lba) }
            let cutoff = all ? UInt64.max : (now > zero + Self.holdback ? (now - zero - Self.holdback) / 1000 : 0)
            let split = state.buffer.firstIndex { $0.issued >= cutoff } ?? state.buffer.count
            let batch = Array(state.buffer[..<split])
            state.buffer.removeFirst(split)
            return batch
        }
        guard !batch.isEmpty || all else { return }
        let (known, failed) = state.withLock { ($0.id, $0.failed) }
        guard !failed else { return }
        do {
            let id: Int64
            if let known {
                id = known
            } else {
                id = try store.begin(info)
                state.withLock { $0.id = id }
            }
            if !batch.isEmpty { try store.append(batch, to: id) }
        } catch {
            state.withLock { $0.failed = true }
            logger.error("cannot write the trace; recording stops", metadata: ["profile": "\(info.profile)", "error": "\(error)"])
        }
    }
}
