/// Serial number arithmetic on 32-bit sequence numbers (RFC 1982, as RFC 7143 §4.2.2.1 requires).
enum SerialNumber {
    /// `a < b` in serial arithmetic.
    static func lessThan(_ a: UInt32, _ b: UInt32) -> Bool {
        a != b && (b &- a) < 0x8000_0000
    }
    static func lessThanOrEqual(_ a: UInt32, _ b: UInt32) -> Bool { a == b || lessThan(a, b) }
}

/// Command numbering for one session (RFC 7143 §4.2.2.1): which commands are
/// in the window, the order they are delivered in, and the ExpCmdSN/MaxCmdSN
/// the target reports. Pure: it only counts.
///
/// MaxCmdSN = ExpCmdSN + (window - outstanding) - 1, so the window an initiator
/// sees shrinks while commands are executing and never moves backwards.
struct CommandWindow: Sendable {
    /// The next CmdSN the target expects.
    private(set) var expCmdSN: UInt32
    /// How many commands may be queued at once.
    let size: UInt32
    /// Non-immediate commands accepted and not yet completed.
    private(set) var outstanding: UInt32 = 0
    /// Commands that arrived ahead of a gap, keyed by CmdSN, delivered when it fills.
    private var held: Set<UInt32> = []
    /// The highest MaxCmdSN reported so far; reports never go backwards.
    private var reportedMax: UInt32

    init(initialCmdSN: UInt32, size: Int) {
        expCmdSN = initialCmdSN
        self.size = UInt32(max(1, size))
        reportedMax = initialCmdSN &+ self.size &- 1
    }

    /// MaxCmdSN to put in the next target PDU.
    var maxCmdSN: UInt32 {
        mutating get {
            let free = size > outstanding ? size - outstanding : 0
            let candidate = expCmdSN &+ free &- 1
            if SerialNumber.lessThan(reportedMax, candidate) { reportedMax = candidate }
            return reportedMax
        }
    }

    enum Verdict: Equatable {
        /// Deliver now.
        case deliver
        /// Ahead of ExpCmdSN but inside the window: hold until the gap fills.
        case hold
        /// Outside the window or a duplicate: silently ignore (RFC 7143 §4.2.2.1).
        case ignore
    }

    /// Classifies a command as it arrives. Immediate commands carry the next
    /// CmdSN without advancing it and are always delivered.
    mutating func received(cmdSN: UInt32, immediate: Bool) -> Verdict {
        if immediate { return .deliver }
        let max = maxCmdSN
        guard SerialNumber.lessThanOrEqual(expCmdSN, cmdSN), SerialNumber.lessThanOrEqual(cmdSN, max) else {
            return .ignore
        }
        if cmdSN == expCmdSN {
            expCmdSN &+= 1
            outstanding += 1
            return .deliver
        }
        return held.insert(cmdSN).inserted ? .hold : .ignore
    }

    /// After delivering a command, whether the held command with the new
    /// ExpCmdSN can go next; the caller loops while this returns a CmdSN.
    mutating func nextHeld() -> UInt32? {
        guard held.remove(expCmdSN) != nil else { return nil }
        let sn = expCmdSN
        expCmdSN &+= 1
        outstanding += 1
        return sn
    }

    /// A non-immediate command finished (or was aborted): its slot frees up.
    mutating func completed() {
        if outstanding > 0 { outstanding -= 1 }
    }
}
