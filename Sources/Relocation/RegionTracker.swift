/// What a relocation knows of one region of the destination.
public enum RegionContent: Sendable, Equatable {
    /// Not copied yet, or its copy may be incomplete (in flight at a crash): anything may be there.
    case unknown
    /// Reads as zeros (created zeroed and never written, or zero-filled by the pump).
    case zero
    /// The copied data, with its CRC32C (verified against the destination before switchover).
    case data(crc: UInt32)
}

/// The pump's per-region bookkeeping, a pure value (DESIGN.md, relocation pump; the pump holds it under a lock).
///
/// Regions are `regionBytes` pieces of the disk in ascending order (the last may be short). The first pass starts
/// them one after another (`nextSequential`); a guest write to a region the pump has started or finished marks it
/// dirty, so it is copied again and the guest's data is never left behind by an older copy. A copy clears the
/// region's dirty mark when it starts, so a write that lands during the copy marks it again.
///
/// Checkpoints use `durableSnapshot`: everything before `nextSequential` is copied and durable except the regions
/// listed as dirty, which include the copies that were in flight or finished after the destination's last flush.
public struct RegionTracker: Sendable {
    public let regionBytes: Int
    public let totalBytes: UInt64
    public let regionCount: Int
    /// The first region the sequential pass has not started.
    public private(set) var nextSequential: Int
    /// Regions to copy again.
    public private(set) var dirty: Set<Int>
    /// Regions being copied, with the completion sequence number they started under.
    public private(set) var inFlight: Set<Int> = []
    /// What each region of the destination holds as far as the pump knows.
    public private(set) var content: [RegionContent]
    /// Regions whose `content` changed since the last checkpoint took them.
    public private(set) var changedContent: Set<Int> = []
    /// Counts finished copies; `completedSequence[r]` is when region r last finished.
    public private(set) var sequence: UInt64 = 0
    private var completedSequence: [Int: UInt64] = [:]

    /// A fresh tracker: nothing copied. `destinationZeroed`: the destination reads zeros everywhere now.
    public init(totalBytes: UInt64, regionBytes: Int, destinationZeroed: Bool) {
        self.regionBytes = regionBytes
        self.totalBytes = totalBytes
        self.regionCount = Int((totalBytes + UInt64(regionBytes) - 1) / UInt64(regionBytes))
        self.nextSequential = 0
        self.dirty = []
        self.content = Array(repeating: destinationZeroed ? .zero : .unknown, count: regionCount)
    }

    /// A tracker resumed from a checkpoint: dirty regions' content is unknown (their copy may have been cut short).
    public init(
        totalBytes: UInt64, regionBytes: Int, nextSequential: Int, dirty: Set<Int>, content: [Int: RegionContent],
        destinationZeroed: Bool
    ) {
        self.init(totalBytes: totalBytes, regionBytes: regionBytes, destinationZeroed: destinationZeroed)
        self.nextSequential = min(max(0, nextSequential), regionCount)
        for (region, value) in content where region >= 0 && region < regionCount { self.content[region] = value }
        // Beyond the sequential pass the destination was not written by us, except by copies in flight at the crash
        // (listed dirty), so only dirty regions lose what we knew.
        // Dirty regions at or past the sequential position are the ones reserved for copies that may have started
        // after the checkpoint: their content is unknown, and the sequential pass copies them again anyway.
        let listed = dirty.filter { $0 >= 0 && $0 < regionCount }
        for region in listed { self.content[region] = .unknown }
        self.dirty = listed.filter { $0 < self.nextSequential }
    }

    // MARK: - Geometry

    /// The byte range of `region`.
    public func range(of region: Int) -> Range<UInt64> {
        let start = UInt64(region) * UInt64(regionBytes)
        return start..<min(totalBytes, start + UInt64(regionBytes))
    }

    /// The regions `range` touches.
    public func regions(touching range: Range<UInt64>) -> ClosedRange<Int>? {
        guard !range.isEmpty, range.lowerBound < totalBytes else { return nil }
        let first = Int(range.lowerBound / UInt64(regionBytes))
        let last = Int((min(range.upperBound, totalBytes) - 1) / UInt64(regionBytes))
        return first...last
    }

    // MARK: - Progress

    /// Whether every region has been started once and none waits to be copied again.
    public var isCaughtUp: Bool { nextSequential >= regionCount && dirty.isEmpty && inFlight.isEmpty }

    /// Bytes the first pass has started.
    public var bytesStarted: UInt64 {
        nextSequential >= regionCount ? totalBytes : UInt64(nextSequential) * UInt64(regionBytes)
    }

    /// Bytes still to copy: the rest of the first pass and the dirty regions.
    public var bytesLeft: UInt64 {
        (totalBytes - bytesStarted) + dirty.reduce(UInt64(0)) { $0 + UInt64(range(of: $1).count) }
    }

    // MARK: - Events

    /// The next region to copy: the sequential pass first, then dirty regions lowest first, skipping those
    /// already in flight. Nil when there is nothing to start now.
    public func nextRegion() -> Int? {
        if nextSequential < regionCount { return nextSequential }
        return dirty.lazy.filter { !inFlight.contains($0) }.min()
    }

    /// The lowest dirty region not in flight (for passes that only re-copy).
    public func nextDirty() -> Int? { dirty.lazy.filter { !inFlight.contains($0) }.min() }

    /// The next region of the first, sequential pass; nil once every region has been started.
    public var nextInSequence: Int? { nextSequential < regionCount ? nextSequential : nil }

    /// A copy of `region` starts: it is no longer dirty, and what the destination holds there is unknown until
    /// the copy finishes.
    public mutating func beginCopy(_ region: Int) {
        if region >= nextSequential { nextSequential = region + 1 }
        dirty.remove(region)
        inFlight.insert(region)
        setContent(region, .unknown)
    }

    /// The copy of `region` finished with `content` now on the destination.
    public mutating func endCopy(_ region: Int, content newContent: RegionContent) {
        inFlight.remove(region)
        sequence += 1
        completedSequence[region] = sequence
        setContent(region, newContent)
    }

    /// The copy of `region` failed: copy it again later.
    public mutating func failCopy(_ region: Int) {
        inFlight.remove(region)
        dirty.insert(region)
    }

    /// The guest wrote (or unmapped) `range`: regions the pump has started must be copied again.
    public mutating func guestWrote(_ range: Range<UInt64>) {
        guard let regions = regions(touching: range) else { return }
        for region in regions where region < nextSequential || inFlight.contains(region) {
            dirty.insert(region)
        }
    }

    /// Verification found `region` different on the destination: copy it again.
    public mutating func verifyFailed(_ region: Int) {
        dirty.insert(region)
        setContent(region, .unknown)
    }

    private mutating func setContent(_ region: Int, _ value: RegionContent) {
        guard content[region] != value else { return }
        content[region] = value
        changedContent.insert(region)
    }

    // MARK: - Checkpoints

    /// What a checkpoint may record as durable, given the completion sequence number read just before the
    /// destination was flushed: the sequential position, and as dirty every region that is dirty, in flight, or
    /// whose copy finished after that flush began. Takes the changed contents (they are recorded by the caller).
    public mutating func durableSnapshot(flushedThrough: UInt64) -> (
        nextSequential: Int, dirty: Set<Int>, content: [Int: RegionContent]
    ) {
        var unsure = dirty.union(inFlight)
        for (region, finished) in completedSequence where finished > flushedThrough { unsure.insert(region) }
        completedSequence = completedSequence.filter { $0.value > flushedThrough }
        var changed: [Int: RegionContent] = [:]
        for region in changedContent { changed[region] = content[region] }
        changedContent = []
        return (nextSequential, unsure, changed)
    }

    /// Puts back contents a failed checkpoint took, so the next one records them.
    public mutating func restoreChanged(_ regions: some Sequence<Int>) {
        changedContent.formUnion(regions)
    }
}
