import Foundation
import Relocation
import Testing

@Suite("Region tracker")
struct RegionTrackerTests {
    @Test("geometry: region ranges, the short last region, the regions a range touches")
    func geometry() {
        let tracker = RegionTracker(totalBytes: 10 * 1024 + 512, regionBytes: 1024, destinationZeroed: false)
        #expect(tracker.regionCount == 11)
        #expect(tracker.range(of: 0) == 0..<1024)
        #expect(tracker.range(of: 10) == 10240..<10752)
        #expect(tracker.regions(touching: 1000..<1100) == 0...1)
        #expect(tracker.regions(touching: 2048..<3072) == 2...2)
        #expect(tracker.regions(touching: 5..<5) == nil)
        #expect(tracker.regions(touching: 20000..<30000) == nil)
    }

    @Test("a guest write before the pass reaches a region needs no second copy; after, or during, it does")
    func dirtyMarking() {
        var tracker = RegionTracker(totalBytes: 8 * 1024, regionBytes: 1024, destinationZeroed: true)
        #expect(tracker.nextRegion() == 0)
        tracker.beginCopy(0)
        tracker.beginCopy(1)
        tracker.guestWrote(5000..<5100)  // region 4: not started yet
        #expect(tracker.dirty.isEmpty)
        tracker.guestWrote(1500..<1600)  // region 1: in flight, so its copy may be stale
        tracker.endCopy(1, content: .data(crc: 1))
        tracker.endCopy(0, content: .zero)
        tracker.guestWrote(100..<200)  // region 0: copied
        #expect(tracker.dirty == [0, 1])
        // The sequential pass comes first, then the dirty regions lowest first.
        #expect(tracker.nextRegion() == 2)
        for region in 2..<8 {
            tracker.beginCopy(region)
            tracker.endCopy(region, content: .zero)
        }
        #expect(tracker.nextRegion() == 0)
        tracker.beginCopy(0)
        #expect(tracker.nextRegion() == 1)
        #expect(tracker.content[0] == .unknown)
        tracker.endCopy(0, content: .data(crc: 7))
        tracker.beginCopy(1)
        tracker.endCopy(1, content: .data(crc: 8))
        #expect(tracker.isCaughtUp)
        #expect(tracker.bytesLeft == 0)
    }

    @Test("a checkpoint counts copies that may not be durable as dirty, and only once they are flushed drops them")
    func durableSnapshot() {
        var tracker = RegionTracker(totalBytes: 4 * 1024, regionBytes: 1024, destinationZeroed: false)
        tracker.beginCopy(0)
        tracker.endCopy(0, content: .data(crc: 1))
        let flushed = tracker.sequence
        tracker.beginCopy(1)
        tracker.endCopy(1, content: .data(crc: 2))  // finished after the flush began
        tracker.beginCopy(2)  // in flight
        tracker.guestWrote(0..<10)  // region 0 dirty again
        let first = tracker.durableSnapshot(flushedThrough: flushed)
        #expect(first.nextSequential == 3)
        #expect(first.dirty == [0, 1, 2])
        #expect(first.content[1] == .data(crc: 2))
        tracker.endCopy(2, content: .zero)
        let second = tracker.durableSnapshot(flushedThrough: tracker.sequence)
        #expect(second.dirty == [0])
        #expect(second.content.keys.sorted() == [2])
    }

    @Test("resuming from a checkpoint forgets what dirty regions held and keeps the rest")
    func resume() {
        let tracker = RegionTracker(
            totalBytes: 4 * 1024, regionBytes: 1024, nextSequential: 3, dirty: [1, 9],
            content: [0: .data(crc: 5), 1: .data(crc: 6), 2: .zero], destinationZeroed: true)
        #expect(tracker.nextSequential == 3)
        #expect(tracker.dirty == [1])
        #expect(tracker.content == [.data(crc: 5), .unknown, .zero, .zero])
        #expect(tracker.nextRegion() == 3)
        #expect(tracker.bytesLeft == 2048)
    }

    @Test("regions reserved past the checkpoint's position are unknown after a resume, and not counted twice")
    func resumeWithReservation() {
        // Copies into regions 4-7 may have started after the checkpoint at 4 (they were reserved as dirty):
        // on a zeroed destination they are no longer assumed to read zeros.
        let tracker = RegionTracker(
            totalBytes: 10 * 1024, regionBytes: 1024, nextSequential: 4, dirty: [2, 4, 5, 6, 7],
            content: [0: .data(crc: 1), 1: .zero, 3: .data(crc: 2)], destinationZeroed: true)
        #expect(tracker.dirty == [2])
        #expect(tracker.content[4...7].allSatisfy { $0 == .unknown })
        #expect(tracker.content[8] == .zero && tracker.content[9] == .zero)
        #expect(tracker.content[2] == .unknown && tracker.content[1] == .zero)
        #expect(tracker.nextInSequence == 4)
        #expect(tracker.bytesLeft == 7 * 1024)
    }
}

@Suite("Guest load governor")
struct GuestLoadGovernorTests {
    @Test("an idle guest gets full speed; a busy one the busy rate with one copy in flight")
    func idleAndBusy() {
        var governor = GuestLoadGovernor(maxRate: nil, busyRate: 1000, maxInFlight: 4)
        _ = governor.tick(GuestLoadSample(operations: 0, latencyNanoseconds: 0))
        var limits = governor.tick(GuestLoadSample(operations: 0, latencyNanoseconds: 0))
        #expect(limits.bytesPerSecond == nil && limits.maxInFlight == 4)
        limits = governor.tick(GuestLoadSample(operations: 10, latencyNanoseconds: 10_000))
        #expect(limits.bytesPerSecond == 1000 && limits.maxInFlight == 1)
        #expect(governor.backoffs == 1)
        limits = governor.tick(GuestLoadSample(operations: 10, latencyNanoseconds: 10_000))
        #expect(limits.bytesPerSecond == nil)
    }

    @Test("the busy rate halves when the guest's latency rises over its baseline, and recovers")
    func latencyBackoff() {
        var governor = GuestLoadGovernor(maxRate: 10_000, busyRate: 1000, maxInFlight: 4)
        var sample = GuestLoadSample()
        func step(_ operations: UInt64, meanMicroseconds: UInt64) -> GuestLoadGovernor.Limits {
            sample.operations += operations
            sample.latencyNanoseconds += operations * meanMicroseconds * 1000
            return governor.tick(sample)
        }
        _ = governor.tick(sample)
        _ = step(100, meanMicroseconds: 100)  // baseline
        var limits = step(100, meanMicroseconds: 300)
        #expect(limits.bytesPerSecond == 500)
        limits = step(100, meanMicroseconds: 300)
        #expect(limits.bytesPerSecond == 250)
        #expect(governor.backoffs == 3)
        for _ in 0..<40 { limits = step(100, meanMicroseconds: 100) }
        #expect(limits.bytesPerSecond == 1000)
    }
}
