import ArgumentParser
import BlockDevice
import Foundation
import Prefetch

/// `livemount trace replay TRACE --url iscsi://HOST:PORT/IQN/LUN`: replays a recorded boot trace against any
/// LUN through libiscsi, keeping the trace's order, concurrency and think time, and reports the total, think
/// and stall time and the latency distribution: the benchmark harness of issue 4.
struct TraceReplayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Replay a trace's reads against a LUN; print total, think and stall time and latencies.",
        discussion: """
            TRACE is a trace id in the trace store, or a CSV file (any argument containing '/' or ending in \
            .csv). Read i is never sent before read i-1; reads that overlapped in the trace overlap in the \
            replay (one libiscsi session per concurrent read); a read waits for every read that had completed \
            before it was issued in the trace, and then for its think time: the gap between the latest of \
            those completions and its issue, as recorded.

            Stall time is the replay's total time minus the trace's own think time (the time in the trace with \
            no read outstanding): what a guest would have spent waiting on storage. Reads beyond the LUN's \
            capacity are refused before anything is sent. A read that fails is reported with its index and LBA; \
            the replay goes on, and the exit status is 1.
            """)

    @Argument(help: ArgumentHelp("A trace id, or a CSV file.", valueName: "trace"))
    var trace: String

    @Option(help: ArgumentHelp("The LUN: iscsi://HOST[:PORT]/TARGET/LUN.", valueName: "url"))
    var url: String

    @Option(
        name: .customLong("traces-db"),
        help: ArgumentHelp(
            "The trace store (default: $LIVEMOUNT_TRACES, else /var/tmp/livemount/state/traces.sqlite).",
            valueName: "path"))
    var tracesDB: String?

    @Option(
        help: ArgumentHelp(
            "Initiator sessions (default: the trace's maximum concurrency, at most \(Replay.maxDefaultSessions)).",
            valueName: "n"))
    var sessions: Int?

    @Flag(name: .customLong("no-think"), help: "Drop think times: issue as fast as order and concurrency allow.")
    var noThink = false

    @Option(help: ArgumentHelp("Replay only the first N reads.", valueName: "n"))
    var limit: Int?

    @Option(
        name: .customLong("poll-us"),
        help: ArgumentHelp(
            "Poll for each answer this many µs before sleeping (0: sleep at once). Like QEMU's adaptive polling, it"
                + " keeps the wake-up of a sleeping thread out of every read's latency.",
            valueName: "us"))
    var pollMicroseconds = 0

    @Flag(
        name: .customLong("busy-think"),
        help: ArgumentHelp(
            "Spend think time spinning, as a booting guest's vCPU computes, instead of sleeping until the last"
                + " 100 µs. Keeps the replay's CPU from idling between reads."))
    var busyThink = false

    @Option(help: ArgumentHelp("Initiator name.", valueName: "iqn"))
    var initiator = "iqn.2026-11.org.livemount:replay"

    @Option(
        name: .customLong("per-read"),
        help: ArgumentHelp(
            "Also write every read's times to this CSV file: index, lba, blocks (LUN blocks), ready_us (when the"
                + " schedule allowed it), issued_us, completed_us, error.",
            valueName: "path"))
    var perReadPath: String?

    @Flag(help: "Print one JSON object with every figure.")
    var json = false

    @Flag(help: "No progress on stderr, no histogram and no list of failed reads.")
    var quiet = false

    func validate() throws {
        guard url.hasPrefix("iscsi://") else { throw ValidationError("--url \(url): expected an iscsi:// URL") }
        if let sessions, !(1...256).contains(sessions) {
            throw ValidationError("--sessions \(sessions): expected 1 to 256")
        }
        if let limit, limit < 1 { throw ValidationError("--limit \(limit): expected at least 1") }
        if !(0...100_000).contains(pollMicroseconds) {
            throw ValidationError("--poll-us \(pollMicroseconds): expected 0 to 100000")
        }
        if let tracesDB, tracesDB.isEmpty { throw ValidationError("--traces-db must not be empty") }
        if let perReadPath, perReadPath.isEmpty { throw ValidationError("--per-read must not be empty") }
    }

    /// Whether the TRACE argument names a CSV file rather than a trace id.
    var traceIsFile: Bool { trace.contains("/") || trace.lowercased().hasSuffix(".csv") }

    var tracesPath: String {
        if let tracesDB { return tracesDB }
        if let environment = ProcessInfo.processInfo.environment["LIVEMOUNT_TRACES"], !environment.isEmpty {
            return environment
        }
        return "/var/tmp/livemount/state/traces.sqlite"
    }

    func run() async throws {
        let report: ReplayReport
        let outcome: ReplayOutcome
        let reads: [TraceRead]
        do {
            (report, outcome, reads) = try await replay(try loadTrace())
        } catch let error as ReplayError {
            Self.log("error: \(error.message)")
            throw ExitCode(error.code == .invalidArgument ? 64 : 1)
        } catch let error as CLIError {
            Self.log("error: \(error.description)")
            throw ExitCode.failure
        }
        if let perReadPath {
            do {
                try Data(Self.perReadCSV(reads: reads, outcome: outcome).utf8).write(
                    to: URL(fileURLWithPath: perReadPath))
            } catch {
                Self.log("error: cannot write \(perReadPath): \(error.localizedDescription)")
                throw ExitCode.failure
            }
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(Self.text(of: report, quiet: quiet), terminator: "")
        }
        if report.errors > 0 { throw ExitCode.failure }
    }

    // MARK: - Steps

    /// Reads the trace from the store or from a CSV file.
    private func loadTrace() throws -> Trace {
        if traceIsFile {
            let text: String
            do {
                text = try String(contentsOfFile: trace, encoding: .utf8)
            } catch {
                throw CLIError("cannot read \(trace): \(error.localizedDescription)")
            }
            do {
                return try TraceCSV.parse(text, source: trace)
            } catch {
                // The parser's messages name the file and line.
                throw CLIError("\(error)")
            }
        }
        guard let id = Int64(trace), id > 0 else {
            throw CLIError("\(trace): expected a trace id (a number) or a CSV file path")
        }
        // Opening a store that is not there would create an empty one.
        guard FileManager.default.fileExists(atPath: tracesPath) else {
            throw CLIError("no trace store at \(tracesPath) (give --traces-db or $LIVEMOUNT_TRACES)")
        }
        let found: Trace?
        do {
            found = try TraceStore.open(path: tracesPath).trace(id: id)
        } catch {
            throw CLIError("trace store \(tracesPath): \(error)")
        }
        guard let found else { throw CLIError("no trace \(id) in \(tracesPath)") }
        return found
    }

    /// Connects, checks capacity, replays and logs out, all on a thread of its own (libiscsi blocks).
    private func replay(_ loaded: Trace) async throws -> (ReplayReport, ReplayOutcome, [TraceRead]) {
        let limit = limit
        let requested = sessions
        let keepThink = !noThink
        let url = url
        let initiator = initiator
        let quiet = quiet || json
        let poll = pollMicroseconds
        let spin = busyThink ? UInt64.max : ReplayDriver.defaultSpinMicroseconds
        return try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                do {
                    let result = try Self.replay(
                        loaded, url: url, initiator: initiator, limit: limit, sessions: requested,
                        keepThinkTime: keepThink, pollMicroseconds: poll, spinMicroseconds: spin, quiet: quiet)
                    continuation.resume(returning: result)
                } catch {
                    continuation.resume(throwing: error)
                }
            }
            thread.name = "livemount.trace-replay"
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    /// The blocking part of `replay`.
    private static func replay(
        _ trace: Trace, url: String, initiator: String, limit: Int?, sessions requested: Int?, keepThinkTime: Bool,
        pollMicroseconds: Int, spinMicroseconds: UInt64, quiet: Bool
    ) throws(ReplayError) -> (ReplayReport, ReplayOutcome, [TraceRead]) {
        guard !trace.reads.isEmpty else { throw .invalidArgument("the trace has no reads") }
        let planned = Array(trace.reads.prefix(limit ?? trace.reads.count))
        let count = requested ?? Replay.defaultSessions(for: planned)
        // One session first: the capacity check comes before the other logins and before any read.
        let probe = try ISCSIReplayTarget.connect(
            url: url, initiator: initiator, count: 1, pollMicroseconds: pollMicroseconds)
        let reads: [TraceRead]
        do throws(ReplayError) {
            reads = try Replay.reads(of: trace, limit: limit, lunBlockSize: probe.capacity.blockSize)
            try Replay.checkCapacity(reads, blockCount: probe.capacity.blockCount)
        } catch {
            probe.logout()
            throw error
        }
        var target = probe
        if count > 1 {
            do throws(ReplayError) {
                let more = try ISCSIReplayTarget.connect(
                    url: url, initiator: initiator, count: count - 1, pollMicroseconds: pollMicroseconds)
                target.sessions += more.sessions
            } catch {
                probe.logout()
                throw error
            }
        }
        defer { target.logout() }
        if !quiet {
            log(
                "replaying \(reads.count) reads on \(count) session\(count == 1 ? "" : "s")"
                    + (keepThinkTime ? "" : " without think time"))
        }
        var progress: (@Sendable (Int, Int) -> Void)?
        if !quiet {
            progress = { done, total in log("  \(done)/\(total) reads done") }
        }
        let outcome = ReplayDriver.run(
            reads: reads, devices: target.sessions, keepThinkTime: keepThinkTime, spinMicroseconds: spinMicroseconds,
            progress: progress)
        return (ReplayReport(reads: reads, blockSize: target.capacity.blockSize, outcome: outcome), outcome, reads)
    }

    /// The `--per-read` CSV.
    static func perReadCSV(reads: [TraceRead], outcome: ReplayOutcome) -> String {
        let errors = Dictionary(outcome.failures.map { ($0.index, $0.message) }, uniquingKeysWith: { first, _ in first })
        var text = "index,lba,blocks,ready_us,issued_us,completed_us,error\n"
        for (index, read) in reads.enumerated() where index < outcome.issueTimes.count {
            let ready = index < outcome.readyTimes.count ? String(outcome.readyTimes[index]) : ""
            let error = (errors[index] ?? "").replacingOccurrences(of: ",", with: ";")
                .replacingOccurrences(of: "\n", with: " ")
            text += "\(index),\(read.lba),\(read.blocks),\(ready),\(outcome.issueTimes[index]),"
                + "\(outcome.completionTimes[index]),\(error)\n"
        }
        return text
    }

    private static func log(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }

    // MARK: - Text output

    /// The human-readable report.
    static func text(of report: ReplayReport, quiet: Bool) -> String {
        func seconds(_ value: Double) -> String { String(format: "%.3f s", value) }
        func micros(_ value: Double) -> String {
            value >= 10_000 ? String(format: "%.1f ms", value / 1000) : String(format: "%.0f µs", value)
        }
        var lines: [String] = []
        lines.append(
            "reads      \(report.reads) (\(report.bytes) bytes, \(String(format: "%.1f", Double(report.bytes) / 1_048_576)) MiB)"
                + " on \(report.sessions) session\(report.sessions == 1 ? "" : "s")"
                + (report.errors > 0 ? ", \(report.errors) failed" : ""))
        lines.append("total      \(seconds(report.totalSeconds))")
        lines.append(
            "think      \(seconds(report.thinkSeconds))"
                + (report.keptThinkTime ? " (the trace's own)" : " (dropped: --no-think)"))
        lines.append(
            "stall      \(seconds(report.stallSeconds))"
                + " (of which the replay's own lateness \(seconds(report.harnessLateSeconds)))")
        lines.append(
            "trace      span \(seconds(report.traceSpanSeconds)), think \(seconds(report.traceThinkSeconds)),"
                + " stall \(seconds(report.traceStallSeconds)), max concurrency \(report.traceMaxConcurrency)")
        let latency = report.latency
        lines.append(
            "latency    min \(micros(latency.min))  p50 \(micros(latency.p50))  p90 \(micros(latency.p90))"
                + "  p99 \(micros(latency.p99))  max \(micros(latency.max))  mean \(micros(latency.mean))")
        if !quiet {
            let widest = report.histogram.map(\.count).max() ?? 0
            for bucket in report.histogram {
                let label: String
                if let upTo = bucket.upTo {
                    label = "\(micros(Double(bucket.from)))-\(micros(Double(upTo)))"
                } else {
                    label = "≥ \(micros(Double(bucket.from)))"
                }
                let bar = String(repeating: "#", count: widest == 0 ? 0 : (bucket.count * 40 + widest - 1) / widest)
                lines.append("  " + label.padding(toLength: 18, withPad: " ", startingAt: 0) + "\(bucket.count) \(bar)")
            }
            for failure in report.failures.prefix(20) {
                lines.append(
                    "failed     read \(failure.index) at LBA \(failure.lba) (\(failure.blocks) blocks): \(failure.message)"
                )
            }
            if report.failures.count > 20 { lines.append("failed     ... and \(report.failures.count - 20) more") }
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
