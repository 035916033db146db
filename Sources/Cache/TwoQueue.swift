import NIOCore
import Repository

/// The 2Q queue a resident slot is on (Johnson & Shasha, "2Q: A Low Overhead High Performance Buffer
/// Management Replacement Algorithm", VLDB 1994, §2 "full version").
enum SlotQueue: Int, Sendable {
    /// First-time residents, evicted first-in first-out.
    case a1in = 0
    /// Residents referenced again (or readmitted from the A1out ghost list), evicted least recently used.
    case am = 1
}

/// Which parts of a resident chunk have been read since it was admitted, at 4 KiB granularity or coarser
/// (at most 256 granules a chunk).
///
/// 2Q does not promote a page on a *correlated* reference (one that follows its first reference closely, as
/// part of the same burst; VLDB 1994 §2.1). Here the burst is a guest reading a chunk piece by piece: a
/// sequential scan reads each 4 KiB of a 1 MiB chunk once, in 256 separate reads. So a read counts as a
/// re-reference only when every granule it covers was read before: the guest came back for the same bytes.
struct TouchMap: Sendable {
    private var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    private let granule: Int

    init(chunkLength: Int) {
        granule = max(4096, (chunkLength + 255) / 256)
    }

    /// Marks the granules `range` covers; true when all of them had been marked already.
    mutating func touch(_ range: Range<Int>) -> Bool {
        guard !range.isEmpty else { return false }
        let first = range.lowerBound / granule
        let last = min(255, (range.upperBound - 1) / granule)
        var seen = true
        for bit in first...last {
            let mask = UInt64(1) << UInt64(bit & 63)
            switch bit >> 6 {
            case 0:
                if words.0 & mask == 0 { seen = false }
                words.0 |= mask
            case 1:
                if words.1 & mask == 0 { seen = false }
                words.1 |= mask
            case 2:
                if words.2 & mask == 0 { seen = false }
                words.2 |= mask
            default:
                if words.3 & mask == 0 { seen = false }
                words.3 |= mask
            }
        }
        return seen
    }
}

/// The replacement policy: 2Q over the cache's slots.
///
/// Why 2Q and not plain LRU: a sequential scan (a relocation pump, a guest's `dd`, a virus scan) reads every
/// chunk of a disk once; under LRU a scan larger than the cache flushes the hot set. 2Q admits new chunks
/// to a FIFO (A1in, about 25% of the slots) and only moves a chunk to the LRU main queue (Am) when it is
/// referenced again, or readmitted while its ID is still on the ghost list A1out (IDs of chunks recently
/// evicted from A1in, about 50% of the slots, no data). A scan therefore cycles through A1in and never
/// touches Am. Compared with ARC, 2Q's queue sizes are fixed rather than adaptive, which makes its
/// behaviour under a scan predictable and easy to test, and its bookkeeping is two intrusive lists and a
/// ghost FIFO, all O(1) per access. CLOCK-Pro was not chosen because its hand movements make a
/// persisted order (for a warm restart) harder to reconstruct.
///
/// The lists are intrusive: `previous`/`next` arrays indexed by slot, so memory is a few words per slot.
struct TwoQueuePolicy: Sendable {
    /// Target A1in size (Kin).
    let inTarget: Int
    /// Ghost list size (Kout).
    let outTarget: Int

    private var previous: [Int]
    private var next: [Int]
    private var heads: [Int] = [-1, -1]
    private var tails: [Int] = [-1, -1]
    private var counts: [Int] = [0, 0]
    /// The queue each slot is on; nil for slots not on a list.
    private(set) var queueOf: [SlotQueue?]

    /// A1out: ghost IDs with the sequence number of their entry in `ghostOrder`.
    private var ghosts: [ChunkID: UInt64] = [:]
    private var ghostOrder = CircularBuffer<(id: ChunkID, sequence: UInt64)>()
    private var ghostSequence: UInt64 = 0

    init(slotCount: Int) {
        inTarget = max(1, slotCount / 4)
        outTarget = max(1, slotCount / 2)
        previous = Array(repeating: -1, count: slotCount)
        next = Array(repeating: -1, count: slotCount)
        queueOf = Array(repeating: nil, count: slotCount)
    }

    /// Number of slots on `queue`.
    func count(_ queue: SlotQueue) -> Int { counts[queue.rawValue] }

    /// Puts `slot` at the most recent end of `queue`.
    mutating func insert(_ slot: Int, on queue: SlotQueue) {
        if queueOf[slot] != nil { remove(slot) }
        let q = queue.rawValue
        previous[slot] = -1
        next[slot] = heads[q]
        if heads[q] >= 0 { previous[heads[q]] = slot } else { tails[q] = slot }
        heads[q] = slot
        counts[q] += 1
        queueOf[slot] = queue
    }

    /// Takes `slot` off whichever list it is on.
    mutating func remove(_ slot: Int) {
        guard let queue = queueOf[slot] else { return }
        let q = queue.rawValue
        if previous[slot] >= 0 { next[previous[slot]] = next[slot] } else { heads[q] = next[slot] }
        if next[slot] >= 0 { previous[next[slot]] = previous[slot] } else { tails[q] = previous[slot] }
        previous[slot] = -1
        next[slot] = -1
        counts[q] -= 1
        queueOf[slot] = nil
    }

    /// Records a reference to a resident slot (2Q §2: a hit in Am moves it to the front; a hit in A1in
    /// leaves it in place unless it is a re-reference, which promotes it to Am).
    mutating func referenced(_ slot: Int, reReference: Bool) {
        switch queueOf[slot] {
        case .am?: insert(slot, on: .am)
        case .a1in?: if reReference { insert(slot, on: .am) }
        case nil: break
        }
    }

    /// The slot to reuse: the A1in tail while A1in holds at least Kin slots, else the Am tail (then A1in);
    /// slots that `evictable` refuses (being filled or read) are skipped. While A1in is at or over Kin only
    /// A1in is searched, so a burst of first-time chunks (a scan) never takes a slot from Am. Nil when nothing
    /// can be evicted. Pinned slots are not on the lists at all.
    func victim(evictable: (Int) -> Bool) -> Int? {
        let order: [SlotQueue] = counts[SlotQueue.a1in.rawValue] >= inTarget ? [.a1in] : [.am, .a1in]
        for queue in order {
            var slot = tails[queue.rawValue]
            while slot >= 0 {
                if evictable(slot) { return slot }
                slot = previous[slot]
            }
        }
        return nil
    }

    /// Slots of `queue` from least to most recent.
    func slots(on queue: SlotQueue) -> [Int] {
        var result: [Int] = []
        var slot = tails[queue.rawValue]
        while slot >= 0 {
            result.append(slot)
            slot = previous[slot]
        }
        return result
    }

    // MARK: - A1out

    /// Remembers a chunk evicted from A1in, forgetting the oldest ghost beyond Kout.
    mutating func rememberGhost(_ id: ChunkID) {
        ghostSequence += 1
        ghosts[id] = ghostSequence
        ghostOrder.append((id, ghostSequence))
        while ghosts.count > outTarget, let oldest = ghostOrder.popFirst() {
            if ghosts[oldest.id] == oldest.sequence { ghosts[oldest.id] = nil }
        }
        // Stale entries (ghosts readmitted since) are dropped lazily; bound the buffer all the same.
        while ghostOrder.count > 4 * outTarget, let oldest = ghostOrder.popFirst() {
            if ghosts[oldest.id] == oldest.sequence { ghosts[oldest.id] = nil }
        }
    }

    /// Whether `id` is on A1out; removes it if so (it is being readmitted, to Am).
    mutating func takeGhost(_ id: ChunkID) -> Bool {
        ghosts.removeValue(forKey: id) != nil
    }
}
