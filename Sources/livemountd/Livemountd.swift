import ArgumentParser
import ControlPlane
import LiveMountConfig
import Logging
import Metrics
import NIOCore
import Prometheus
import SCSI
import ServiceLifecycle
import TargetServer

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// livemountd: the LiveMount iSCSI target daemon.
///
/// Exit status: 0 after a clean shutdown (SIGTERM/SIGINT) or a successful `--check`; 1 for configuration
/// and argument errors (the message names the field); 2 for runtime failures such as a port in use.

struct Livemountd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "livemountd",
        abstract: "LiveMount iSCSI target daemon.",
        discussion: """
            Serve the targets of a configuration file:
              livemountd --config /etc/livemount/livemount.toml

            Or one target given on the command line:
              livemountd --listen 127.0.0.1:3260 \\
                --target iqn.2026-11.org.example:disk0 \\
                --lun 0=/var/tmp/livemount/disk0.img --lun 1=/srv/other.img,ro

            Or live-mount backups (the latest of a VM, or VM@ID, optionally /DISK):
              livemountd --listen 127.0.0.1:3260 --target iqn.2026-11.org.example:web01 \\
                --repo /srv/livemount/repository --cache /ssd/livemount.cache,8G \\
                --lun 0=backup:web01 --lun 1=backup:web01@3/data,ro

            LUN options, comma-separated after the path (",," is a comma in it):
              ro | rw          read-only or read-write (default rw)
              direct=on|off    open with O_DIRECT (default on)
              bs=512|4096      logical block size in bytes (default 512)
              serial=TEXT      unit serial number (default: from target+LUN)
              wce=on|off       report a volatile write cache (default on)
            and for a backup LUN:
              profile=NAME     profile of its traces and prefetch plan (default: the VM)
              prefetch=on|off  follow the profile's prefetch plan (default on)
              record=SECONDS   record the first SECONDS of every boot as a trace
              relocate=URL     relocate it to its primary LUN once mounted: /path,
                               file:///path or iscsi://host[:port]/IQN/LUN
                               (`livemount relocate status` shows the progress)

            When listening, exactly one line goes to standard output:
              livemountd: listening on 127.0.0.1:3260 (target NAME, 2 LUNs)
            Logs go to standard error. SIGTERM or SIGINT shut down gracefully.

            Exit status: 0 clean shutdown or --check passed; 1 configuration
            or argument error; 2 runtime failure (e.g. address in use).
            """)

    @Option(help: ArgumentHelp("Read the configuration from a TOML file (see conf/livemount.toml).", valueName: "file"))
    var config: String?

    @Flag(help: "Validate the configuration, print a summary and exit.")
    var check = false

    @Option(
        help: ArgumentHelp(
            "Listen on this address; repeatable. IPv6 in brackets ([::1]:3260). Port 0 picks a free port. "
                + "Default 0.0.0.0:3260.", valueName: "host:port"))
    var listen: [String] = []

    @Option(help: ArgumentHelp("The target's iSCSI name (iqn./eui./naa., RFC 7143 §4.2.7).", valueName: "name"))
    var target: String?

    @Option(help: ArgumentHelp("The target's alias (TargetAlias).", valueName: "text"))
    var alias: String?

    @Option(
        help: ArgumentHelp(
            "A logical unit: LUN number, image file or block device, options (below); repeatable.",
            valueName: "n=path[,opts]"))
    var lun: [String] = []

    @Option(
        help: ArgumentHelp(
            "Require one-way CHAP. USER may contain ':' (the last ':' separates the secret).", valueName: "user:secret")
    )
    var chap: String?

    @Option(
        name: .customLong("mutual-chap"),
        help: ArgumentHelp("Credentials the target proves to the initiator (needs --chap).", valueName: "user:secret"))
    var mutualChap: String?

    @Option(
        help: ArgumentHelp("Only this initiator may log in; repeatable (default: any).", valueName: "initiator-name"))
    var allow: [String] = []

    @Option(
        name: .customLong("state-dir"),
        help: ArgumentHelp("Directory for state that survives restarts (reservations, mounts and overlays, relocations, placeholders, traces, API changes).", valueName: "dir"))
    var stateDir: String?

    @Option(
        help: ArgumentHelp("Backup repository for backup: LUNs.", valueName: "dir"))
    var repo: String?

    @Option(
        help: ArgumentHelp(
            "SSD-tier cache file for backup: LUNs, and its size (default 1G; e.g. 4G, 512M).",
            valueName: "file[,size]"))
    var cache: String?

    @Option(
        name: .customLong("repo-latency"),
        help: ArgumentHelp("Latency added to every chunk read from the repository (slow storage on purpose).", valueName: "ms"))
    var repoLatency: Int?

    @Option(
        name: .customLong("repo-bandwidth"),
        help: ArgumentHelp("Cap on the repository read rate, MiB/s (0 = none).", valueName: "mib"))
    var repoBandwidth: Int?

    @Option(
        name: .customLong("control-socket"),
        help: ArgumentHelp("Unix socket of the control API (default STATE_DIR/control.sock).", valueName: "path"))
    var controlSocket: String?

    @Option(
        name: .customLong("control-listen"),
        help: ArgumentHelp(
            "The control API also on TCP, on a loopback address (needs --control-token-file).", valueName: "host:port"))
    var controlListen: String?

    @Option(
        name: .customLong("control-token-file"),
        help: ArgumentHelp(
            "File (mode 0600) holding the bearer token TCP control requests must carry.", valueName: "path"))
    var controlTokenFile: String?

    @Option(
        name: .customLong("log-level"),
        help: ArgumentHelp(
            "trace, debug, info, notice, warning, error or critical (default info); "
                + "overrides daemon.log_level.", valueName: "level"))
    var logLevel: String?

    /// Parses the command line and runs; usage errors exit with status 1 (not ArgumentParser's 64).
    static func launch() async {
        let command: Livemountd
        do {
            command = try parse()
        } catch {
            if exitCode(for: error) == .success { exit(withError: error) }
            printError(fullMessage(for: error))
            processExit(1)
        }
        processExit(await command.execute())
    }

    /// Not used: `main()` calls `execute()`, which returns the exit status.
    func run() async throws {
        throw ExitCode(await execute())
    }

    // MARK: - Running

    /// Loads the configuration, then checks it or serves it; returns the process exit status.
    func execute() async -> Int32 {
        guard let loaded = loadConfiguration() else { return 1 }
        var configuration = loaded.configuration
        if let name = logLevel {
            guard let level = DaemonConfiguration.logLevel(named: name) else {
                Self.printError(
                    "livemountd: --log-level \(name): not a log level (\(DaemonConfiguration.logLevelNames))")
                return 1
            }
            configuration.logLevel = level
        }
        for warning in loaded.warnings {
            Self.printError("livemountd: warning: \(Self.locate(warning.description, warning.position, in: config))")
        }

        let level = configuration.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "livemountd")
        // swift-metrics into a Prometheus registry, served as `GET /metrics` on the control socket.
        let metrics = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: metrics))

        if check {
            let portals = configuration.portals.map(Self.format).joined(separator: ", ")
            print("livemountd: configuration OK: \(portals) (\(Self.summary(configuration.targets)))")
            return 0
        }
        return await serve(configuration, metrics: metrics, logger: logger)
    }

    /// The configuration from `--config` or from the ad hoc arguments; prints every problem and returns nil
    /// when it is invalid.
    private func loadConfiguration() -> LoadedConfiguration? {
        do {
            if let config {
                var adHoc: [String] = []
                if !listen.isEmpty { adHoc.append("--listen") }
                if target != nil { adHoc.append("--target") }
                if alias != nil { adHoc.append("--alias") }
                if !lun.isEmpty { adHoc.append("--lun") }
                if chap != nil { adHoc.append("--chap") }
                if mutualChap != nil { adHoc.append("--mutual-chap") }
                if !allow.isEmpty { adHoc.append("--allow") }
                if stateDir != nil { adHoc.append("--state-dir") }
                if repo != nil { adHoc.append("--repo") }
                if cache != nil { adHoc.append("--cache") }
                if repoLatency != nil { adHoc.append("--repo-latency") }
                if repoBandwidth != nil { adHoc.append("--repo-bandwidth") }
                if controlSocket != nil { adHoc.append("--control-socket") }
                if controlListen != nil { adHoc.append("--control-listen") }
                if controlTokenFile != nil { adHoc.append("--control-token-file") }
                guard adHoc.isEmpty else {
                    Self.printError(
                        "livemountd: --config cannot be combined with \(adHoc.joined(separator: ", ")); "
                            + "put them in the file")
                    return nil
                }
                return try DaemonConfiguration.load(contentsOfFile: config)
            }
            return try DaemonConfiguration.fromArguments(
                AdHocArguments(
                    listen: listen, target: target, alias: alias, luns: lun, chap: chap, mutualChap: mutualChap,
                    allow: allow, stateDirectory: stateDir, logLevel: nil, repository: repo, cache: cache,
                    repositoryLatency: repoLatency, repositoryBandwidth: repoBandwidth, controlSocket: controlSocket,
                    controlListen: controlListen, controlTokenFile: controlTokenFile))
        } catch {
            for message in error.messages(file: config) { Self.printError("livemountd: \(message)") }
            return nil
        }
    }

    /// Opens the devices, binds the portals, prints the listening line and serves until SIGTERM/SIGINT.
    private func serve(_ configuration: DaemonConfiguration, metrics: PrometheusCollectorRegistry, logger: Logger) async -> Int32 {
        if let directory = configuration.stateDirectory, let problem = Self.makeDirectory(directory) {
            Self.printError("livemountd: cannot create state directory \(directory): \(problem)")
            return 2
        }
        let runtime: LiveMountRuntime?
        do {
            runtime = try await LiveMountRuntime.open(configuration, logger: logger)
        } catch {
            Self.printError("livemountd: \(error)")
            return 2
        }
        let serverConfiguration: ServerConfiguration
        do {
            serverConfiguration = try await configuration.makeServerConfiguration { target, unit in
                if let runtime { return try await runtime.openDevice(target: target, unit: unit) }
                return try openDevice(
                    path: unit.path, readOnly: unit.readOnly, direct: unit.direct, blockSize: unit.blockSize)
            }
        } catch {
            Self.printError("livemountd: \(error)")
            return 2
        }
        let server: ISCSITargetServer
        do {
            server = try ISCSITargetServer(configuration: serverConfiguration, logger: logger)
        } catch {
            Self.printError("livemountd: invalid configuration: \(error)")
            for target in serverConfiguration.targets {
                for unit in target.logicalUnits { await unit.device.close() }
            }
            return 1
        }
        // What the control API changed (targets, raw LUNs, ACLs, CHAP) is served again before the portals
        // listen, so no login sees the configuration file's ACL where the API narrowed it, and before live
        // mounts are restored, so mounts on API targets find their target.
        let targetControl: TargetControl
        do {
            targetControl = try TargetControl.open(configuration, logger: logger)
        } catch {
            Self.printError("livemountd: \(error)")
            await server.shutdown()
            return 2
        }
        await targetControl.restore(server: server, runtime: runtime)
        let addresses: [SocketAddress]
        do {
            addresses = try await server.start()
        } catch {
            let portals = configuration.portals.map(Self.format).joined(separator: ", ")
            Self.printError("livemountd: cannot listen on \(portals): \(Self.reason(error))")
            await server.shutdown()
            return 2
        }
        runtime?.server.withLock { $0 = server }
        if let runtime {
            for (record, device) in await runtime.mounts.restoreAPIMounts() {
                do {
                    guard let scsi = server.scsiTarget(named: record.target) else {
                        throw TargetServerError("target \(record.target) is no longer configured")
                    }
                    try scsi.addLogicalUnit(
                        LogicalUnitConfiguration(
                            lun: record.lun, device: device, readOnly: record.readOnly,
                            serialNumber: DeviceIdentifiers.serialNumber(targetName: record.target, lun: record.lun),
                            naaIdentifier: DeviceIdentifiers.naaIdentifier(targetName: record.target, lun: record.lun),
                            product: "LiveMount backup"))
                } catch {
                    logger.error(
                        "cannot restore mount", metadata: ["mount": "\(record.id)", "error": "\(error)"])
                    await device.close()
                }
            }
        }
        await runtime?.restoreRemainingPlaceholders(server: server)
        await runtime?.startRelocations(server: server, configuration: configuration, logger: logger)
        var controls: [ControlServer] = []
        var configuredRoutes = ControlRoutes(
            server: server, runtime: runtime, metrics: metrics, logger: logger, targetControl: targetControl)
        configuredRoutes.archive = configuration.archive
        let routes = configuredRoutes
        if let socket = configuration.effectiveControlSocket {
            let controlServer = ControlServer(socketPath: socket, logger: logger) { await routes.handle($0) }
            do {
                try await controlServer.start()
                controls.append(controlServer)
            } catch {
                Self.printError("livemountd: cannot listen on control socket \(socket): \(Self.reason(error))")
                await server.shutdown()
                return 2
            }
        }
        if let listen = configuration.controlListen {
            // The configuration checked the file; it may have changed since.
            guard let token = configuration.controlToken else {
                Self.printError("livemountd: control_token_file: no token in \(configuration.controlTokenFile ?? "-")")
                for control in controls { await control.shutdown() }
                await server.shutdown()
                return 1
            }
            let controlServer = ControlServer(host: listen.host, port: listen.port, token: token, logger: logger) {
                await routes.handle($0)
            }
            do {
                try await controlServer.start()
                controls.append(controlServer)
                logger.info("control API on TCP", metadata: ["address": "\(Self.format(listen))"])
            } catch {
                Self.printError("livemountd: cannot listen for the control API on \(Self.format(listen)): \(Self.reason(error))")
                for control in controls { await control.shutdown() }
                await server.shutdown()
                return 2
            }
        }
        let bound = addresses.isEmpty ? configuration.portals.map(Self.format) : addresses.map(Self.format)
        print("livemountd: listening on \(bound.joined(separator: ", ")) (\(Self.summary(configuration.targets)))")
        fflush(nil)

        let policy = Task { [runtime] in
            await runtime?.runArchivePolicy(server: server, settings: configuration.archive)
        }
        defer { policy.cancel() }
        let group = ServiceGroup(services: [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        do {
            try await group.run()
        } catch {
            logger.error("stopped on error: \(error)")
            for control in controls { await control.shutdown() }
            await server.shutdown()
            return 2
        }
        for control in controls { await control.shutdown() }
        await runtime?.relocations.shutdown()
        await server.shutdown()
        await runtime?.cache.close()
        logger.info("shut down")
        return 0
    }

    // MARK: - Formatting

    /// `target iqn..., 2 LUNs` or `2 targets iqn.a, iqn.b, 3 LUNs`.
    static func summary(_ targets: [TargetDefinition]) -> String {
        let luns = targets.reduce(0) { $0 + $1.logicalUnits.count }
        let names = targets.map(\.name).joined(separator: ", ")
        let lunText = luns == 1 ? "1 LUN" : "\(luns) LUNs"
        return targets.count == 1 ? "target \(names), \(lunText)" : "\(targets.count) targets \(names), \(lunText)"
    }

    static func format(_ portal: PortalConfiguration) -> String {
        portal.host.contains(":") ? "[\(portal.host)]:\(portal.port)" : "\(portal.host):\(portal.port)"
    }

    static func format(_ address: SocketAddress) -> String {
        guard let ip = address.ipAddress, let port = address.port else { return "\(address)" }
        return format(PortalConfiguration(host: ip, port: port))
    }

    /// A failure's cause in words: for system call errors the C library's text, in lowercase
    /// ("address already in use").
    static func reason(_ error: any Error) -> String {
        if let io = error as? IOError { return errorText(io.errnoCode) }
        return "\(error)"
    }

    static func errorText(_ code: Int32) -> String {
        guard let text = strerror(code) else { return "errno \(code)" }
        let message = String(cString: text)
        return message.prefix(1).lowercased() + message.dropFirst()
    }

    /// Prefixes `file:line:column: ` when the problem has a position in the configuration file.
    static func locate(_ message: String, _ position: TOMLPosition?, in file: String?) -> String {
        guard let file else { return message }
        guard let position else { return "\(file): \(message)" }
        return "\(file):\(position.line):\(position.column): \(message)"
    }

    static func printError(_ message: String) {
        var text = message + "\n"
        text.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }

    /// `mkdir -p`; returns the reason it failed, or nil.
    static func makeDirectory(_ path: String) -> String? {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o750) != 0, errno != EEXIST { return errorText(errno) }
        }
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else { return "not a directory" }
        return nil
    }
}

/// Ends the process with `status` (outside `Livemountd`, whose `exit(withError:)` would shadow `exit`).
func processExit(_ status: Int32) -> Never {
    exit(status)
}
