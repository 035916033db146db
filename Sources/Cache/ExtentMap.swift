/// One run of a write overlay's address space and where its bytes come from.
public struct OverlayExtent: Sendable, Equatable {
    /// Where a range's bytes are.
    public enum Kind: Sendable, Equatable {
        /// Never written on this mount: read the backup.
        case absent
        /// Written: read the overlay file.
        case data
        /// Unmapped: reads return zeros.
        case zero
    }

    public var offset: UInt64
    public var length: Int
    public var kind: Kind

    public init(offset: UInt64, length: Int, kind: Kind) {
        self.offset = offset
        self.length = length
        self.kind = kind
    }
}

/// The overlay's map in memory: sorted, non-overlapping, coalesced runs of `.data` or `.zero` (gaps are
/// `.absent`). Memory grows with the number of runs (fragmentation), not with the disk's size.
///
/// A sorted array with binary search: lookups are O(log n), a change is O(log n) plus the shift of the
/// array's tail, which for the thousands of runs a live mount accumulates is a short `memmove`.
struct ExtentMap: Sendable {
    /// One run `[start, end)`.
    struct Run: Sendable, Equatable {
        var start: UInt64
        var end: UInt64
        var kind: OverlayExtent.Kind
    }

    private(set) var runs: [Run] = []
    /// Bytes in `.data` runs.
    private(set) var dataBytes: UInt64 = 0

    /// Index of the first run that ends after `offset`.
    private func firstIndex(endingAfter offset: UInt64) -> Int {
        var low = 0
        var high = runs.count
        while low < high {
            let mid = (low + high) / 2
            if runs[mid].end <= offset { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// Makes `[start, end)` `kind` (`.absent` removes it from the map).
    mutating func set(_ start: UInt64, _ end: UInt64, _ kind: OverlayExtent.Kind) {
        guard start < end else { return }
        let first = firstIndex(endingAfter: start)
        var last = first
        while last < runs.count && runs[last].start < end { last += 1 }
        var replacement: [Run] = []
        if first < last, runs[first].start < start {
            replacement.append(Run(start: runs[first].start, end: start, kind: runs[first].kind))
        }
        if kind != .absent { replacement.append(Run(start: start, end: end, kind: kind)) }
        if first < last, runs[last - 1].end > end {
            replacement.append(Run(start: end, end: runs[last - 1].end, kind: runs[last - 1].kind))
        }
        for run in runs[first..<last] where run.kind == .data { dataBytes -= run.end - run.start }
        for run in replacement where run.kind == .data { dataBytes += run.end - run.start }
        runs.replaceSubrange(first..<last, with: replacement)

        // Coalesce with neighbours of the same kind.
        var index = max(0, first - 1)
        var stop = min(runs.count - 1, first + replacement.count)
        while index < stop {
            if runs[index].end == runs[index + 1].start && runs[index].kind == runs[index + 1].kind {
                runs[index].end = runs[index + 1].end
                runs.remove(at: index + 1)
                stop -= 1
            } else {
                index += 1
            }
        }
    }

    /// A contiguous cover of `[start, end)`, gaps as `.absent`.
    func cover(_ start: UInt64, _ end: UInt64) -> [OverlayExtent] {
        var result: [OverlayExtent] = []
        var position = start
        var index = firstIndex(endingAfter: start)
        while position < end {
            if index < runs.count, runs[index].start < end {
                let run = runs[index]
                if run.start > position {
                    result.append(OverlayExtent(offset: position, length: Int(run.start - position), kind: .absent))
                    position = run.start
                }
                let stop = min(run.end, end)
                result.append(OverlayExtent(offset: position, length: Int(stop - position), kind: run.kind))
                position = stop
                index += 1
            } else {
                result.append(OverlayExtent(offset: position, length: Int(end - position), kind: .absent))
                position = end
            }
        }
        return result
    }

    /// The runs inside `[start, end)`, clipped to it.
    func runs(in start: UInt64, _ end: UInt64) -> [Run] {
        var result: [Run] = []
        var index = firstIndex(endingAfter: start)
        while index < runs.count, runs[index].start < end {
            let run = runs[index]
            result.append(Run(start: max(run.start, start), end: min(run.end, end), kind: run.kind))
            index += 1
        }
        return result
    }
}
