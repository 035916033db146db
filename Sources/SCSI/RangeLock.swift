import Synchronization

/// An exclusive lock over LBA ranges of one logical unit, so that COMPARE AND
/// WRITE and ORWRITE read, compare and write atomically with respect to other
/// writes to the same blocks (SBC-4 §5.3, §5.14). Writes to disjoint ranges
/// never wait for each other; reads never take it. Waiters are served in
/// arrival order among overlapping ranges.
final class RangeLock: Sendable {
    private struct Held {
        var id: UInt64
        var lo: UInt64
        var hi: UInt64  // exclusive
    }
    private struct Waiter {
        var held: Held
        var continuation: CheckedContinuation<Void, Never>
    }
    private struct State {
        var held: [Held] = []
        var waiters: [Waiter] = []
        var nextID: UInt64 = 1

        func isFree(_ lo: UInt64, _ hi: UInt64, before waiterIndex: Int) -> Bool {
            for h in held where h.lo < hi && lo < h.hi { return false }
            for w in waiters.prefix(waiterIndex) where w.held.lo < hi && lo < w.held.hi { return false }
            return true
        }
    }

    private let state = Mutex(State())

    init() {}

    /// Takes the range [lba, lba + blocks) and returns a token for `unlock`.
    func lock(lba: UInt64, blocks: UInt64) async -> UInt64 {
        let lo = lba
        let hi = lba &+ Swift.max(blocks, 1)
        let fast: UInt64? = state.withLock { s in
            guard s.isFree(lo, hi, before: s.waiters.count) else { return nil }
            let id = s.nextID
            s.nextID += 1
            s.held.append(Held(id: id, lo: lo, hi: hi))
            return id
        }
        if let fast { return fast }
        let id: UInt64 = state.withLock { s in
            let id = s.nextID
            s.nextID += 1
            return id
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let grantedNow: Bool = state.withLock { s in
                if s.isFree(lo, hi, before: s.waiters.count) {
                    s.held.append(Held(id: id, lo: lo, hi: hi))
                    return true
                }
                s.waiters.append(Waiter(held: Held(id: id, lo: lo, hi: hi), continuation: continuation))
                return false
            }
            if grantedNow { continuation.resume() }
        }
        return id
    }

    /// Releases the range taken with `token` and wakes the waiters it blocked.
    func unlock(_ token: UInt64) {
        let wake: [CheckedContinuation<Void, Never>] = state.withLock { s in
            s.held.removeAll { $0.id == token }
            var granted: [CheckedContinuation<Void, Never>] = []
            var i = 0
            while i < s.waiters.count {
                let w = s.waiters[i]
                if s.isFree(w.held.lo, w.held.hi, before: i) {
                    s.held.append(w.held)
                    granted.append(w.continuation)
                    s.waiters.remove(at: i)
                } else {
                    i += 1
                }
            }
            return granted
        }
        for c in wake { c.resume() }
    }
}
