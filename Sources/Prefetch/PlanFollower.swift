// Following a prefetch plan while the guest boots (issue 4, Prefetching): a pure state machine in the style of
// swift-nio-ssh's: events in (guest reads, stage completions), actions out (stage this entry, release that
// one). The runtime that turns actions into cache fetches lives in the LiveMount module.

/// Tracks where a booting guest is in its profile's plan and decides what to stage next.
///
/// - **Position.** The plan is ordered by expected first access. The guest's position is the furthest plan
///   entry it has read, so entries it skipped fall behind and are not staged any more. A read far ahead of the
///   position (more than `jumpEntries`) moves the position only once a second read lands near it, so one stray
///   read of a late entry does not drag the window forward.
/// - **Lead window.** Entries ahead of the position are staged in plan order while the bytes staged (or being
///   staged) and not yet read stay under `leadBytes`, their expected time is within `leadTime` of the
///   position's, and at most `maxInFlight` stages run at once. Entries the guest already read are skipped.
/// - **Divergence.** Of the last `divergenceWindow` guest reads, if none touched the plan and at least
///   `divergenceMisses` did not, the guest has left the plan: staging stops and pinned entries are released,
///   until a read lands in the plan again.
public struct PlanFollower: Sendable {
    /// Tuning; the defaults suit boots of a few hundred MiB from 1 MiB-chunk backups.
    public struct Configuration: Sendable, Equatable {
        /// Bytes staged ahead of the guest and not yet read, at most.
        public var leadBytes: UInt64
        /// How far ahead of the position, in the plan's expected time (µs), entries are staged.
        public var leadTime: UInt64
        /// Stages running at once, at most.
        public var maxInFlight: Int
        /// Reads a jump ahead must be confirmed by (see the type's notes), in plan entries.
        public var jumpEntries: Int
        /// Guest reads looked at to decide the guest has left the plan.
        public var divergenceWindow: Int
        /// Misses among them (with no hit) that mean it has.
        public var divergenceMisses: Int

        public init(
            leadBytes: UInt64 = 256 << 20, leadTime: UInt64 = 30_000_000, maxInFlight: Int = 8,
            jumpEntries: Int = 64, divergenceWindow: Int = 64, divergenceMisses: Int = 48
        ) {
            self.leadBytes = leadBytes
            self.leadTime = leadTime
            self.maxInFlight = max(1, maxInFlight)
            self.jumpEntries = max(1, jumpEntries)
            self.divergenceWindow = max(1, divergenceWindow)
            self.divergenceMisses = max(1, min(divergenceMisses, divergenceWindow))
        }
    }

    /// What the runtime must do.
    public enum Action: Sendable, Equatable {
        /// Stage plan entry `index` (fetch its chunks into the cache, pinned); report with `stageCompleted`.
        case stage(Int)
        /// Entry `index` was staged but the guest moved past it or left the plan: unpin it (it stays cached).
        case release(Int)
    }

    /// Where following stands.
    public enum Phase: Sendable, Equatable {
        /// Staging ahead of the guest.
        case following
        /// The guest's recent reads are outside the plan: nothing is staged.
        case diverged
        /// Every entry was read, staged or left behind.
        case finished
    }

    /// The life of one plan entry.
    public enum EntryState: Sendable, Equatable {
        case pending
        case inFlight
        /// Staged and not yet read by the guest (pinned by the runtime).
        case staged
        /// Staged, then released unread.
        case released
        /// The guest read it (whether or not it was staged first).
        case read
    }

    public let entries: [PlanEntry]
    public let configuration: Configuration
    public private(set) var states: [EntryState]
    public private(set) var phase: Phase = .following
    /// Index of the furthest entry the guest has read (−1 before its first plan read).
    public private(set) var position = -1
    /// The next entry the window may stage (everything before it is not pending or behind the position).
    private var cursor = 0
    private var inFlight = 0
    /// Bytes of entries staged or in flight and not yet read.
    public private(set) var leadingBytes: UInt64 = 0
    /// A far read waiting for confirmation.
    private var pendingJump: Int?
    /// Entry indices sorted by offset, for mapping a read to entries.
    private let byOffset: [Int]
    /// Recent guest reads: true = touched the plan.
    private var recent: [Bool] = []
    private var recentNext = 0

    public init(entries: [PlanEntry], configuration: Configuration = Configuration()) {
        self.entries = entries
        self.configuration = configuration
        self.states = Array(repeating: .pending, count: entries.count)
        self.byOffset = entries.indices.sorted { entries[$0].offset < entries[$1].offset }
        if entries.isEmpty { phase = .finished }
    }

    // MARK: - Events

    /// Starts following: the first window.
    public mutating func start() -> [Action] {
        fill()
    }

    /// Entries the runtime stages on its own (the pre-staged set, before the LUN goes live): they count as in
    /// flight, and their completions come back through `stageCompleted` like the window's own.
    public mutating func stagingExternally(_ indices: some Sequence<Int>) {
        for index in indices where states.indices.contains(index) && states[index] == .pending {
            states[index] = .inFlight
            inFlight += 1
            leadingBytes += entries[index].length
        }
    }

    /// A stage the runtime ran for `index` finished (successfully or not).
    public mutating func stageCompleted(_ index: Int, success: Bool = true) -> [Action] {
        guard states.indices.contains(index), states[index] == .inFlight else { return fill() }
        inFlight -= 1
        if success {
            // Passed while in flight: release at once.
            if index < position || phase == .diverged {
                states[index] = .released
                leadingBytes -= entries[index].length
                return [.release(index)] + fill()
            }
            states[index] = .staged
        } else {
            states[index] = .released
            leadingBytes -= entries[index].length
        }
        return fill()
    }

    /// The guest read bytes `offset ..< offset + length` of the disk. Returns the plan entries it touched
    /// (for the runtime's precision and recall accounting) and what to do.
    public mutating func guestRead(offset: UInt64, length: UInt64) -> (touched: [Int], actions: [Action]) {
        let touched = entriesOverlapping(offset: offset, length: length)
        var actions: [Action] = []
        noteRecent(hit: !touched.isEmpty)
        for index in touched {
            switch states[index] {
            case .staged:
                leadingBytes -= entries[index].length
            case .inFlight:
                // The guest got there first; the stage still completes, but no longer counts as ahead.
                leadingBytes -= entries[index].length
                inFlight -= 1
            case .pending, .released, .read:
                break
            }
            states[index] = .read
        }
        if let furthest = touched.max(), furthest > position {
            if furthest <= position + configuration.jumpEntries {
                advance(to: furthest, &actions)
                pendingJump = nil
            } else if let jump = pendingJump, abs(furthest - jump) <= configuration.jumpEntries {
                advance(to: furthest, &actions)
                pendingJump = nil
            } else {
                pendingJump = furthest
            }
        }
        if phase == .diverged, !touched.isEmpty {
            phase = .following
            recent = []
            recentNext = 0
        } else if phase == .following, isDiverged {
            phase = .diverged
            for index in states.indices where states[index] == .staged {
                states[index] = .released
                leadingBytes -= entries[index].length
                actions.append(.release(index))
            }
        }
        actions += fill()
        return (touched, actions)
    }

    // MARK: - Internals

    /// Moves the position to `index`, releasing staged entries left behind.
    private mutating func advance(to index: Int, _ actions: inout [Action]) {
        let old = max(position, 0)
        position = index
        for behind in old..<index where states[behind] == .staged {
            states[behind] = .released
            leadingBytes -= entries[behind].length
            actions.append(.release(behind))
        }
        cursor = max(cursor, index + 1)
    }

    /// Stages entries ahead of the position while the window has room.
    private mutating func fill() -> [Action] {
        guard phase == .following else { return [] }
        var actions: [Action] = []
        let base = position >= 0 ? entries[position].expectedTime : 0
        let horizon = base &+ configuration.leadTime
        while cursor < entries.count, inFlight < configuration.maxInFlight {
            let index = cursor
            guard states[index] == .pending else {
                cursor += 1
                continue
            }
            let entry = entries[index]
            guard entry.expectedTime <= horizon else { break }
            // Always allow one entry, so an entry larger than the window is still staged.
            guard leadingBytes == 0 || leadingBytes + entry.length <= configuration.leadBytes else { break }
            states[index] = .inFlight
            inFlight += 1
            leadingBytes += entry.length
            cursor += 1
            actions.append(.stage(index))
        }
        if cursor >= entries.count, inFlight == 0 { phase = .finished }
        return actions
    }

    private var isDiverged: Bool {
        guard recent.count >= configuration.divergenceWindow else { return false }
        let hits = recent.filter { $0 }.count
        return hits == 0 && recent.count - hits >= configuration.divergenceMisses
    }

    private mutating func noteRecent(hit: Bool) {
        if recent.count < configuration.divergenceWindow {
            recent.append(hit)
        } else {
            recent[recentNext] = hit
            recentNext = (recentNext + 1) % configuration.divergenceWindow
        }
    }

    /// Entries whose byte range overlaps the read, in plan order.
    public func entriesOverlapping(offset: UInt64, length: UInt64) -> [Int] {
        guard length > 0, !byOffset.isEmpty else { return [] }
        let end = offset + length
        // The first entry (by offset) whose start is >= offset, then step back over entries that begin before.
        var low = 0
        var high = byOffset.count
        while low < high {
            let mid = (low + high) / 2
            if entries[byOffset[mid]].offset < offset { low = mid + 1 } else { high = mid }
        }
        var result: [Int] = []
        var back = low - 1
        while back >= 0 {
            let entry = entries[byOffset[back]]
            if entry.offset + entry.length > offset { result.append(byOffset[back]) }
            // Entries do not overlap each other, so only the nearest earlier one can reach the read.
            if entry.offset + entry.length <= offset { break }
            back -= 1
        }
        var forward = low
        while forward < byOffset.count, entries[byOffset[forward]].offset < end {
            result.append(byOffset[forward])
            forward += 1
        }
        return result.sorted()
    }
}
