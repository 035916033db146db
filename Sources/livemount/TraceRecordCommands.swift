import ArgumentParser
import ControlPlane
import Foundation

/// `livemount trace record start|stop --target IQN --lun N`: record a mount's reads through the daemon.
struct TraceRecordCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "record",
        abstract: "Start or stop recording the reads a live mount serves (through livemountd).",
        subcommands: [Start.self, Stop.self])

    /// `livemount trace record start`.
    struct Start: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start recording now (time zero is the next read).")

        @OptionGroup var daemon: DaemonOptions

        @Option(help: ArgumentHelp("The target.", valueName: "iqn"))
        var target: String

        @Option(help: ArgumentHelp("The LUN.", valueName: "n"))
        var lun: UInt64

        @Option(help: ArgumentHelp("The profile the trace belongs to (default: the mount's).", valueName: "name"))
        var profile: String?

        @Option(help: ArgumentHelp("Stop by itself after this many seconds (default: when stopped).", valueName: "s"))
        var seconds: Int?

        func validate() throws {
            if let seconds, !(1...3600).contains(seconds) {
                throw ValidationError("--seconds \(seconds): expected 1-3600")
            }
        }

        func run() async throws {
            let body = try JSONEncoder().encode(TraceRecordRequest(action: "start", profile: profile, seconds: seconds))
            let answer = try await daemon.call(
                "POST", DaemonOptions.mountPath(target: target, lun: lun) + "/trace", body: Array(body))
            let response = try JSONDecoder().decode(TraceRecordResponse.self, from: Data(answer))
            print("recording LUN \(lun) of \(target) into profile \(response.profile)")
        }
    }

    /// `livemount trace record stop`.
    struct Stop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop recording; prints the trace id.")

        @OptionGroup var daemon: DaemonOptions

        @Option(help: ArgumentHelp("The target.", valueName: "iqn"))
        var target: String

        @Option(help: ArgumentHelp("The LUN.", valueName: "n"))
        var lun: UInt64

        func run() async throws {
            let body = try JSONEncoder().encode(TraceRecordRequest(action: "stop"))
            let answer = try await daemon.call(
                "POST", DaemonOptions.mountPath(target: target, lun: lun) + "/trace", body: Array(body))
            let response = try JSONDecoder().decode(TraceRecordResponse.self, from: Data(answer))
            if let trace = response.trace {
                print("trace \(trace) (profile \(response.profile))")
            } else {
                print("stopped; no reads were recorded")
            }
        }
    }
}
