import Prefetch
import Testing

/// A plan of `count` 1 MiB entries at ascending offsets, expected one every 100 ms.
private func linearPlan(_ count: Int, spacing: UInt64 = 1 << 20) -> [PlanEntry] {
    (0..<count).map { index in
        PlanEntry(offset: UInt64(index) * spacing, length: 1 << 20, support: 1, expectedTime: UInt64(index) * 100_000)
    }
}

/// Runs the follower's stage actions to completion at once (a fast backend), returning every entry staged.
private func completeStages(_ follower: inout PlanFollower, _ actions: [PlanFollower.Action]) -> [Int] {
    var staged: [Int] = []
    var queue = actions
    while !queue.isEmpty {
        let action = queue.removeFirst()
        if case .stage(let index) = action {
            staged.append(index)
            queue += follower.stageCompleted(index)
        }
    }
    return staged
}

@Suite("Plan following")
struct PlanFollowerTests {
    @Test("the window stages ahead of the guest in plan order and never past its byte budget")
    func leadWindow() {
        var follower = PlanFollower(
            entries: linearPlan(100), configuration: .init(leadBytes: 8 << 20, maxInFlight: 4))
        let first = follower.start()
        #expect(first == (0..<4).map { .stage($0) })
        let staged = completeStages(&follower, first)
        #expect(staged == Array(0..<8))
        #expect(follower.leadingBytes == 8 << 20)
        // The guest reads entries 0 and 1: two more are staged (8 and 9), and no more.
        var more: [Int] = []
        for index in 0..<2 {
            let (touched, actions) = follower.guestRead(offset: UInt64(index) << 20, length: 4096)
            #expect(touched == [index])
            more += completeStages(&follower, actions)
        }
        #expect(more == [8, 9])
        #expect(follower.position == 1)
        #expect(follower.states[0] == .read)
        #expect(follower.states[9] == .staged)
    }

    @Test("the window respects the lead time")
    func leadTime() {
        // Entries expected every 100 ms, lead 1 s: from position 0 the window reaches entry 10.
        var follower = PlanFollower(
            entries: linearPlan(50), configuration: .init(leadBytes: 1 << 40, leadTime: 1_000_000, maxInFlight: 64))
        let staged = completeStages(&follower, follower.start())
        #expect(staged == Array(0...10))
    }

    @Test("a guest that skips ahead moves the window once a second read confirms the jump")
    func skipAhead() {
        var follower = PlanFollower(
            entries: linearPlan(400), configuration: .init(leadBytes: 4 << 20, maxInFlight: 4, jumpEntries: 16))
        _ = completeStages(&follower, follower.start())
        #expect(follower.position == -1)
        // One stray read far ahead does not move the window.
        var (touched, actions) = follower.guestRead(offset: 300 << 20, length: 512)
        #expect(touched == [300])
        #expect(follower.position == -1)
        #expect(completeStages(&follower, actions).isEmpty)
        // A second read near it confirms: the position jumps, staged entries behind are released, and the
        // window refills after the new position.
        (touched, actions) = follower.guestRead(offset: 302 << 20, length: 512)
        #expect(touched == [302])
        #expect(follower.position == 302)
        #expect(actions.contains(.release(0)))
        #expect(actions.contains(.release(3)))
        let staged = completeStages(&follower, actions)
        #expect(staged.first == 303)
        #expect(!staged.contains(301))
        #expect(follower.states[1] == .released)
        #expect(follower.states[150] == .pending)
    }

    @Test("a guest that leaves the plan stops the staging, and one that comes back resumes it")
    func divergence() {
        var follower = PlanFollower(
            entries: linearPlan(100), configuration: .init(
                leadBytes: 4 << 20, maxInFlight: 4, divergenceWindow: 10, divergenceMisses: 8))
        _ = completeStages(&follower, follower.start())
        _ = completeStages(&follower, follower.guestRead(offset: 0, length: 512).actions)
        // Reads far outside the plan's extents (the plan covers the first 100 MiB).
        var released: [Int] = []
        var staged: [Int] = []
        for step in 0..<10 {
            let (touched, actions) = follower.guestRead(offset: (1 << 30) + UInt64(step) << 20, length: 4096)
            #expect(touched.isEmpty)
            for case .release(let index) in actions { released.append(index) }
            staged += completeStages(&follower, actions)
        }
        #expect(follower.phase == .diverged)
        #expect(staged.isEmpty)
        #expect(released.sorted() == [1, 2, 3, 4])
        #expect(follower.leadingBytes == 0)
        // More foreign reads stage nothing.
        #expect(completeStages(&follower, follower.guestRead(offset: 2 << 30, length: 512).actions).isEmpty)
        // Back in the plan: following resumes after the new position.
        let (touched, actions) = follower.guestRead(offset: 5 << 20, length: 512)
        #expect(touched == [5])
        #expect(follower.phase == .following)
        #expect(completeStages(&follower, actions).first == 6)
    }

    @Test("reads map to every entry they overlap, and only those")
    func overlapLookup() {
        let entries = [
            PlanEntry(offset: 8 << 20, length: 2 << 20, support: 1, expectedTime: 0),
            PlanEntry(offset: 0, length: 1 << 20, support: 1, expectedTime: 10),
            PlanEntry(offset: 4 << 20, length: 1 << 20, support: 1, expectedTime: 20),
        ]
        let follower = PlanFollower(entries: entries)
        #expect(follower.entriesOverlapping(offset: 0, length: 512) == [1])
        #expect(follower.entriesOverlapping(offset: (1 << 20) - 1, length: 2) == [1])
        #expect(follower.entriesOverlapping(offset: 1 << 20, length: 3 << 20).isEmpty)
        #expect(follower.entriesOverlapping(offset: (4 << 20) + 100, length: 5 << 20) == [0, 2])
        #expect(follower.entriesOverlapping(offset: (9 << 20) + 100, length: 512) == [0])
        #expect(follower.entriesOverlapping(offset: 10 << 20, length: 512).isEmpty)
    }

    @Test("a read that overtakes an in-flight stage frees its window room; a plan read to the end finishes")
    func overtakeAndFinish() {
        var follower = PlanFollower(entries: linearPlan(3), configuration: .init(leadBytes: 1 << 20, maxInFlight: 1))
        #expect(follower.start() == [.stage(0)])
        // The guest reads entry 0 before its stage completes: entry 1 may be staged now.
        let (_, actions) = follower.guestRead(offset: 0, length: 512)
        #expect(actions == [.stage(1)])
        #expect(follower.stageCompleted(0) == [])
        #expect(completeStages(&follower, actions) == [1])
        for index in 1..<3 { _ = follower.guestRead(offset: UInt64(index) << 20, length: 512) }
        #expect(follower.phase == .finished)
        #expect(follower.leadingBytes == 0)
    }
}
