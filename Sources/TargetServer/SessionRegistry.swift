import Synchronization

/// The sessions alive in the target, shared by every connection: TSIH
/// allocation (RFC 7143 §11.12.6), session reinstatement when an initiator
/// logs in again with the same ISID (RFC 7143 §6.3.5), and counts for status.
final class SessionRegistry: Sendable {
    /// A session is identified by initiator name, ISID and target (RFC 7143 §4.4.3, the SSID).
    struct Key: Hashable, Sendable {
        var initiatorName: String
        var isid: UInt64
        var targetName: String
    }

    private struct Entry {
        var tsih: UInt16
        var close: @Sendable () -> Void
    }

    private struct State {
        var nextTSIH: UInt16 = 1
        var sessions: [Key: Entry] = [:]
    }

    private let state = Mutex(State())

    init() {}

    /// A TSIH not in use (never 0, RFC 7143 §11.12.6).
    func allocateTSIH() -> UInt16 {
        state.withLock { s in
            while true {
                let candidate = s.nextTSIH
                s.nextTSIH = s.nextTSIH == UInt16.max ? 1 : s.nextTSIH + 1
                if !s.sessions.values.contains(where: { $0.tsih == candidate }) { return candidate }
            }
        }
    }

    /// Registers a new session; an older session with the same key is
    /// reinstated away: its connection is closed (RFC 7143 §6.3.5). Returns
    /// whether that happened, so the caller ends the old I_T nexus first.
    @discardableResult
    func register(_ key: Key, tsih: UInt16, close: @escaping @Sendable () -> Void) -> Bool {
        let previous = state.withLock { s in
            let old = s.sessions[key]
            s.sessions[key] = Entry(tsih: tsih, close: close)
            return old
        }
        previous?.close()
        return previous != nil
    }

    /// Forgets a session if it is still the registered one; false when a
    /// newer session has reinstated it (the nexus then belongs to that one).
    @discardableResult
    func unregister(_ key: Key, tsih: UInt16) -> Bool {
        state.withLock { s in
            guard s.sessions[key]?.tsih == tsih else { return false }
            s.sessions[key] = nil
            return true
        }
    }

    /// Number of live normal sessions.
    var count: Int { state.withLock { $0.sessions.count } }

    /// Number of live normal sessions logged in to `targetName`.
    func count(targetName: String) -> Int {
        state.withLock { $0.sessions.keys.reduce(0) { $0 + ($1.targetName == targetName ? 1 : 0) } }
    }

    /// Closes every session (shutdown, target cold reset).
    func closeAll(targetName: String? = nil) {
        let closers = state.withLock { s in
            s.sessions.filter { targetName == nil || $0.key.targetName == targetName }.map(\.value.close)
        }
        for close in closers { close() }
    }
}
