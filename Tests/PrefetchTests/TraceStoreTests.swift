import Foundation
import Synchronization
import Testing

@testable import Prefetch

/// A fresh directory under the temporary directory, removed by the caller.
func makeTraceTestDirectory() throws -> URL {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
        "trace-tests-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    return directory
}

/// A small trace with every source and both prefetched values.
func sampleTrace(profile: String = "web01", reads count: Int = 6, start: UInt64 = 0) -> Trace {
    let sources = ReadSource.allCases
    let reads = (0..<count).map { index in
        TraceRead(
            issued: start + UInt64(index) * 1_000, completed: start + UInt64(index) * 1_000 + 250,
            lba: UInt64(index % 3) * 2_048 + UInt64(index) * 8, blocks: 16, source: sources[index % sources.count],
            prefetched: index % 2 == 0)
    }
    let info = TraceInfo(
        profile: profile, vm: "web01-vm", backupID: "17", disk: "disk0", blockSize: 512, chunkSize: 1 << 20,
        recordedAt: 1_714_560_000, note: "cold boot")
    return Trace(info: info, reads: reads)
}

@Suite("Trace store")
struct TraceStoreTests {
    @Test("a whole trace round-trips: info, reads in issue order, a new id")
    func insertRoundTrip() throws {
        let directory = try makeTraceTestDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let store = try TraceStore.open(path: directory.appendingPathComponent("state/traces.sqlite").path)
        defer { store.close() }
        let trace = sampleTrace()
        let id = try store.insert(trace)
        #expect(id > 0)
        let loaded = try #require(try store.trace(id: id))
        var expected = trace
        expected.info.id = id
        #expect(loaded == expected)
        #expect(try store.trace(id: id + 100) == nil)
        #expect(try store.insert(trace) != id)
    }

    @Test("the store survives a reopen")
    func reopen() throws {
        let directory = try makeTraceTestDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("traces.sqlite").path
        let first = try TraceStore.open(path: path)
        let id = try first.insert(sampleTrace())
        first.close()
        #expect(throws: TraceStoreError.self) { try first.summaries() }
        let second = try TraceStore.open(path: path)
        defer { second.close() }
        #expect(try second.trace(id: id)?.reads.count == 6)
    }

    @Test("a live recording appends in batches; reads come back in issue order")
    func beginAppend() throws {
        let store = try TraceStore.open(path: ":memory:")
        let info = sampleTrace().info
        let id = try store.begin(info)
        #expect(try store.trace(id: id)?.reads == [])
        var all: [TraceRead] = []
        for batch in 0..<10 {
            let reads = (0..<1_000).map { index in
                let time = UInt64(batch * 1_000 + index) * 10
                return TraceRead(
                    issued: time, completed: time + 5, lba: UInt64((batch * 7_919 + index * 31) % 100_000),
                    blocks: 8, source: .backup, prefetched: false)
            }
            all += reads
            try store.append(reads, to: id)
        }
        // A batch recorded at completion may hold a read issued before the last one of the previous batch.
        let late = TraceRead(issued: 5, completed: 200_000, lba: 1, blocks: 1, source: .cache, prefetched: true)
        try store.append([late], to: id)
        let loaded = try #require(try store.trace(id: id))
        #expect(loaded.reads.count == 10_001)
        #expect(loaded.reads[0] == all[0])
        #expect(loaded.reads[1] == late)
        #expect(Array(loaded.reads[2...]) == Array(all[1...]))
        #expect(throws: TraceStoreError.self) { try store.append([late], to: id + 1) }
        do {
            try store.append([late], to: 999)
            Issue.record("append to a missing trace succeeded")
        } catch {
            #expect(error.code == .noSuchTrace)
            #expect(error.description.contains("999"))
        }
    }

    @Test("summaries count reads, bytes, unique bytes, span and the source mix")
    func summaries() throws {
        let store = try TraceStore.open(path: ":memory:")
        let info = TraceInfo(profile: "p", vm: "vm", blockSize: 512, chunkSize: 65_536, recordedAt: 1)
        let reads = [
            TraceRead(issued: 100, completed: 300, lba: 0, blocks: 8, source: .backup, prefetched: false),
            TraceRead(issued: 200, completed: 250, lba: 4, blocks: 8, source: .cache, prefetched: true),  // overlaps 4
            TraceRead(issued: 400, completed: 900, lba: 100, blocks: 2, source: .zero, prefetched: false),
            TraceRead(issued: 500, completed: 600, lba: 100, blocks: 2, source: .overlay, prefetched: false),
        ]
        let id = try store.insert(Trace(info: info, reads: reads))
        _ = try store.insert(sampleTrace(profile: "other"))
        let all = try store.summaries()
        #expect(all.map(\.info.profile) == ["p", "other"])
        let summary = try #require(try store.summaries(profile: "p").first)
        #expect(summary.info.id == id)
        #expect(summary.reads == 4)
        #expect(summary.bytes == 20 * 512)
        #expect(summary.uniqueBytes == 14 * 512)
        #expect(summary.span == 800)
        #expect(summary.backup == SourceShare(reads: 1, bytes: 4_096))
        #expect(summary.cache == SourceShare(reads: 1, bytes: 4_096))
        #expect(summary.zero == SourceShare(reads: 1, bytes: 1_024))
        #expect(summary.overlay == SourceShare(reads: 1, bytes: 1_024))
        #expect(summary.prefetched == SourceShare(reads: 1, bytes: 4_096))
        var expected = Trace(info: info, reads: reads)
        expected.info.id = id
        #expect(TraceSummary(expected) == summary)
        #expect(try store.summaries(profile: "nobody") == [])
    }

    @Test("delete removes a trace and its reads; a second delete says false")
    func delete() throws {
        let store = try TraceStore.open(path: ":memory:")
        let id = try store.insert(sampleTrace())
        let other = try store.insert(sampleTrace())
        #expect(try store.delete(id: id))
        #expect(try store.delete(id: id) == false)
        #expect(try store.trace(id: id) == nil)
        #expect(try store.summaries().map(\.info.id) == [other])
        let count = try store.summaries().first?.reads
        #expect(count == 6)
    }

    @Test("a profile has one current plan; saving again replaces it")
    func plans() throws {
        let store = try TraceStore.open(path: ":memory:")
        #expect(try store.plan(profile: "web01") == nil)
        let first = PrefetchPlan(
            profile: "web01", granularity: 1 << 20, traceIDs: [1, 2, 3], createdAt: 1_714_560_000,
            entries: [
                PlanEntry(offset: 0, length: 1 << 20, support: 1, expectedTime: 0),
                PlanEntry(offset: 7 << 20, length: 2 << 20, support: 0.5, expectedTime: 1_500),
                PlanEntry(offset: UInt64.max - 1_048_575, length: 1 << 20, support: 2.0 / 3.0, expectedTime: .max),
            ])
        try store.save(first)
        #expect(try store.plan(profile: "web01") == first)
        let second = PrefetchPlan(
            profile: "web01", granularity: 65_536, traceIDs: [4], createdAt: 1_714_560_100,
            entries: [PlanEntry(offset: 65_536, length: 65_536, support: 1, expectedTime: 10)])
        try store.save(second)
        #expect(try store.plan(profile: "web01") == second)
        let empty = PrefetchPlan(profile: "db", granularity: 4_096, traceIDs: [], createdAt: 5, entries: [])
        try store.save(empty)
        #expect(try store.plan(profile: "db") == empty)
        #expect(try store.profiles() == ["db", "web01"])
    }

    @Test("guest file lists are kept in order and replaced as a whole")
    func files() throws {
        let store = try TraceStore.open(path: ":memory:")
        #expect(try store.files(profile: "web01") == [])
        try store.setFiles(["/boot/vmlinuz", "/etc/fstab", "/usr/lib/systemd/systemd"], profile: "web01")
        #expect(try store.files(profile: "web01") == ["/boot/vmlinuz", "/etc/fstab", "/usr/lib/systemd/systemd"])
        try store.setFiles(["/b", "/a"], profile: "web01")
        #expect(try store.files(profile: "web01") == ["/b", "/a"])
        #expect(try store.profiles() == ["web01"])
        try store.setFiles([], profile: "web01")
        #expect(try store.files(profile: "web01") == [])
        #expect(try store.profiles() == [])
    }

    @Test("profiles are those with traces, plans or files")
    func profiles() throws {
        let store = try TraceStore.open(path: ":memory:")
        let id = try store.insert(sampleTrace(profile: "b"))
        _ = try store.insert(sampleTrace(profile: "a"))
        try store.setFiles(["/x"], profile: "c")
        #expect(try store.profiles() == ["a", "b", "c"])
        _ = try store.delete(id: id)
        #expect(try store.profiles() == ["a", "c"])
    }

    @Test("bad values are refused with a message naming them")
    func invalid() throws {
        let store = try TraceStore.open(path: ":memory:")
        var trace = sampleTrace()
        trace.info.blockSize = 0
        #expect(throws: TraceStoreError.self) { try store.insert(trace) }
        trace = sampleTrace(profile: "")
        #expect(throws: TraceStoreError.self) { try store.begin(trace.info) }
        do {
            _ = try TraceStore.open(path: "/proc/no-such-dir/traces.sqlite")
            Issue.record("opening under /proc succeeded")
        } catch {
            #expect(error.description.contains("/proc/no-such-dir/traces.sqlite"))
        }
    }

    @Test("recordings appended from several threads at once each come back whole")
    func concurrentAppends() throws {
        let directory = try makeTraceTestDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let store = try TraceStore.open(path: directory.appendingPathComponent("traces.sqlite").path)
        defer { store.close() }
        let ids = try (0..<4).map { index in try store.begin(sampleTrace(profile: "p\(index)").info) }
        let failures = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: ids.count) { worker in
            for batch in 0..<20 {
                let reads = (0..<100).map { index in
                    let n = UInt64(batch * 100 + index)
                    return TraceRead(
                        issued: n, completed: n + 1, lba: n * 8, blocks: 8, source: .backup, prefetched: false)
                }
                do {
                    try store.append(reads, to: ids[worker])
                    _ = try store.summaries(profile: "p\(worker)")
                } catch {
                    failures.withLock { $0 += 1 }
                }
            }
        }
        #expect(failures.withLock { $0 } == 0)
        for id in ids {
            let reads = try #require(try store.trace(id: id)).reads
            #expect(reads.count == 2_000)
            #expect(reads.map(\.issued) == Array(0..<2_000))
        }
    }

    @Test("a 100k-read recording goes in and out whole")
    func largeTrace() throws {
        let directory = try makeTraceTestDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let store = try TraceStore.open(path: directory.appendingPathComponent("traces.sqlite").path)
        defer { store.close() }
        let id = try store.begin(sampleTrace().info)
        var all: [TraceRead] = []
        for batch in 0..<25 {
            let reads = (0..<4_000).map { index in
                let n = UInt64(batch * 4_000 + index)
                return TraceRead(
                    issued: n * 3, completed: n * 3 + 2, lba: (n * 2_654_435_761) % 10_000_000, blocks: 8,
                    source: .backup, prefetched: n % 5 == 0)
            }
            all += reads
            try store.append(reads, to: id)
        }
        #expect(try store.trace(id: id)?.reads == all)
        #expect(try store.summaries().first?.reads == 100_000)
    }
}
