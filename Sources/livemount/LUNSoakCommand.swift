import ArgumentParser
import BlockDevice
import Foundation
import Synchronization

/// `livemount lun soak URL...`: many sessions doing mixed reads and writes for a while, each checking what it
/// reads against what it wrote. The load of the soak benchmark (tools/bench/soak.sh).
///
/// Session `i` uses the URLs round-robin and owns slice `i / URLs` of its LUN (the LUN split into as many
/// slices as sessions on it), so sessions never write over each other and each can keep an exact model: a
/// block it wrote reads back as written; a block it never wrote reads back as whatever was there at the start,
/// which it learns on its first read. Requests are 4-64 KiB at random aligned offsets in the slice, one at a
/// time per session; every 64 writes a SYNCHRONIZE CACHE. Any error or mismatch is counted and the first few
/// printed; the exit status is 1 if there was any.
struct LUNSoakCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak",
        abstract: "Many sessions of verified mixed reads and writes against one or more LUNs.",
        discussion: """
            Prints one line every --report seconds (operations, errors) and a summary:
            "sessions N, seconds S, reads R, writes W, bytes B, errors E, mismatches M,
            p50/p99 latency". Use scratch LUNs: the sessions overwrite what they touch.
            """)

    @Argument(help: ArgumentHelp("iscsi://HOST[:PORT]/TARGET/LUN, one or more", valueName: "url"))
    var urls: [String]

    @Option(help: ArgumentHelp("Concurrent sessions (1-256).", valueName: "n"))
    var sessions = 64

    @Option(help: ArgumentHelp("How long to run.", valueName: "seconds"))
    var seconds = 60

    @Option(name: .customLong("read-percent"), help: ArgumentHelp("Share of reads, 0-100.", valueName: "percent"))
    var readPercent = 70

    @Option(help: ArgumentHelp("Seconds between progress lines (0: none).", valueName: "seconds"))
    var report = 10

    func validate() throws {
        guard !urls.isEmpty else { throw ValidationError("give at least one iscsi:// URL") }
        for url in urls where !url.hasPrefix("iscsi://") { throw ValidationError("\(url): expected an iscsi:// URL") }
        guard (1...256).contains(sessions) else { throw ValidationError("--sessions \(sessions): expected 1-256") }
        guard seconds > 0 else { throw ValidationError("--seconds \(seconds): expected a positive number") }
        guard (0...100).contains(readPercent) else { throw ValidationError("--read-percent \(readPercent): 0-100") }
    }

    func run() async throws {
        let totals = SoakTotals()
        let deadline = ContinuousClock.now + .seconds(seconds)
        let start = ContinuousClock.now
        let urls = self.urls
        let sessions = self.sessions
        let readPercent = self.readPercent
        let perURL = (0..<urls.count).map { u in (0..<sessions).filter { $0 % urls.count == u }.count }
        for session in 0..<sessions {
            let url = urls[session % urls.count]
            let slice = session / urls.count
            let slices = perURL[session % urls.count]
            let thread = Thread {
                SoakSession(
                    url: url, index: session, slice: slice, slices: slices, readPercent: readPercent, totals: totals
                ).run(until: deadline)
                totals.sessionEnded()
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
        var nextReport = start + .seconds(max(report, 1))
        while totals.sessionsEnded < sessions {
            try await Task.sleep(for: .milliseconds(200))
            if report > 0, ContinuousClock.now >= nextReport {
                nextReport = nextReport + .seconds(report)
                let s = totals.snapshot()
                let elapsed = ContinuousClock.now - start
                print(
                    "\(elapsed.components.seconds) s: \(s.reads) reads, \(s.writes) writes, "
                        + "\(s.errors) errors, \(s.mismatches) mismatches")
                fflush(nil)
            }
        }
        let s = totals.snapshot()
        let elapsed = ContinuousClock.now - start
        let latencies = totals.latencies().sorted()
        func percentile(_ p: Double) -> Double {
            latencies.isEmpty ? 0 : latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))]
        }
        print(
            String(
                format: "sessions %d, seconds %.1f, reads %llu, writes %llu, bytes %llu, errors %llu, "
                    + "mismatches %llu, latency p50 %.3f ms p99 %.3f ms",
                sessions, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18,
                s.reads, s.writes, s.bytes, s.errors, s.mismatches, percentile(0.5) * 1000, percentile(0.99) * 1000))
        if s.errors + s.mismatches > 0 { throw ExitCode(1) }
    }
}

/// Counters shared by the sessions.
final class SoakTotals: Sendable {
    struct Snapshot {
        var reads: UInt64
        var writes: UInt64
        var bytes: UInt64
        var errors: UInt64
        var mismatches: UInt64
    }

    private let reads = Atomic<UInt64>(0)
    private let writes = Atomic<UInt64>(0)
    private let bytes = Atomic<UInt64>(0)
    private let errors = Atomic<UInt64>(0)
    private let mismatches = Atomic<UInt64>(0)
    private let ended = Atomic<Int>(0)

    func sessionEnded() { ended.add(1, ordering: .releasing) }

    var sessionsEnded: Int { ended.load(ordering: .acquiring) }
    /// A sample of latencies in seconds (every 8th operation of each session), for percentiles.
    private let samples = Mutex<[Double]>([])

    func read(_ count: Int) {
        reads.add(1, ordering: .relaxed)
        bytes.add(UInt64(count), ordering: .relaxed)
    }

    func wrote(_ count: Int) {
        writes.add(1, ordering: .relaxed)
        bytes.add(UInt64(count), ordering: .relaxed)
    }

    func error(_ message: String) {
        if errors.add(1, ordering: .relaxed).newValue <= 10 { FileHandle.standardError.write(Data((message + "\n").utf8)) }
    }

    func mismatch(_ message: String) {
        if mismatches.add(1, ordering: .relaxed).newValue <= 10 {
            FileHandle.standardError.write(Data((message + "\n").utf8))
        }
    }

    func sample(_ seconds: Double) { samples.withLock { $0.append(seconds) } }

    func latencies() -> [Double] { samples.withLock { $0 } }

    func snapshot() -> Snapshot {
        Snapshot(
            reads: reads.load(ordering: .relaxed), writes: writes.load(ordering: .relaxed),
            bytes: bytes.load(ordering: .relaxed), errors: errors.load(ordering: .relaxed),
            mismatches: mismatches.load(ordering: .relaxed))
    }
}

/// One session's loop, on its own thread (libiscsi's synchronous calls block).
struct SoakSession {
    let url: String
    let index: Int
    let slice: Int
    let slices: Int
    let readPercent: Int
    let totals: SoakTotals

    func run(until deadline: ContinuousClock.Instant) {
        var random = SplitMix(seed: UInt64(index) &* 0x9E37_79B9_7F4A_7C15 &+ 1)
        let client = ISCSIClient(timeoutSeconds: 60)
        do {
            try client.connect(url: url, initiatorName: "iqn.2026-11.org.livemount:soak-\(index)")
        } catch {
            totals.error("session \(index): login: \(error)")
            return
        }
        defer { try? client.logout() }
        let capacity: ISCSIClient.Capacity
        do {
            capacity = try client.readCapacity16()
        } catch {
            totals.error("session \(index): READ CAPACITY: \(error)")
            return
        }
        let blockSize = capacity.blockSize
        let perSlice = capacity.blockCount / UInt64(max(1, slices))
        let first = UInt64(slice) * perSlice
        // 4 KiB units within the slice.
        let unit = max(1, 4096 / blockSize)
        let units = Int(perSlice) / unit
        guard units >= 16 else {
            totals.error("session \(index): the LUN is too small for \(slices) sessions")
            return
        }
        // The model: a hash of what each 4 KiB unit holds (nil: not known yet); hashes keep 64 sessions' models
        // small (a collision would hide a mismatch with odds of 2^-64).
        var model = [Int?](repeating: nil, count: units)
        func digest(_ data: [UInt8], _ i: Int) -> Int {
            var hasher = Hasher()
            data[(i * unit * blockSize)..<((i + 1) * unit * blockSize)].withUnsafeBytes { hasher.combine(bytes: $0) }
            return hasher.finalize()
        }
        var operations = 0
        var writesSinceSync = 0
        while ContinuousClock.now < deadline {
            let length = Int(random.next() % 16) + 1  // 1-16 units: 4-64 KiB
            let start = Int(random.next() % UInt64(units - length + 1))
            let lba = first + UInt64(start * unit)
            let blocks = length * unit
            let began = ContinuousClock.now
            if Int(random.next() % 100) < readPercent {
                do {
                    let data = try client.read(lba: lba, blocks: blocks)
                    totals.read(data.count)
                    guard data.count == blocks * blockSize else {
                        totals.error("session \(index): READ LBA \(lba) returned \(data.count) bytes, not \(blocks * blockSize)")
                        continue
                    }
                    for i in 0..<length {
                        let piece = digest(data, i)
                        if let expected = model[start + i] {
                            if expected != piece {
                                totals.mismatch("session \(index): \(url) LBA \(lba + UInt64(i * unit)) differs from what it wrote")
                            }
                        } else {
                            model[start + i] = piece
                        }
                    }
                } catch {
                    totals.error("session \(index): READ LBA \(lba): \(error)")
                }
            } else {
                var data = [UInt8](repeating: 0, count: blocks * blockSize)
                let stamp = random.next()
                for offset in stride(from: 0, to: data.count, by: 8) {
                    withUnsafeBytes(of: (stamp &+ UInt64(offset)).littleEndian) { bytes in
                        for b in 0..<8 { data[offset + b] = bytes[b] }
                    }
                }
                do {
                    try client.write(lba: lba, data: data)
                    totals.wrote(data.count)
                    for i in 0..<length { model[start + i] = digest(data, i) }
                    writesSinceSync += 1
                    if writesSinceSync >= 64 {
                        try client.synchronizeCache()
                        writesSinceSync = 0
                    }
                } catch {
                    // A failed write leaves those units unknown.
                    for i in 0..<length { model[start + i] = nil }
                    totals.error("session \(index): WRITE LBA \(lba): \(error)")
                }
            }
            operations += 1
            if operations % 8 == 0 {
                let elapsed = ContinuousClock.now - began
                totals.sample(Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
            }
        }
    }
}

/// SplitMix64: a small, fast, seedable generator.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
