import Logging
import NIOCore
import NIOPosix
import SCSI
import ServiceLifecycle
import Synchronization

/// Why the server could not start, or refused a change to its targets.
public struct TargetServerError: Error, Sendable, CustomStringConvertible {
    /// What kind of refusal, for callers that map it (the control API: 404, 409, 500).
    public enum Code: Sendable, Equatable {
        /// No target of that name.
        case notFound
        /// The change conflicts with what the target has now (a name in use, LUNs, sessions).
        case conflict
        /// Anything else (a store that cannot be opened, a server that is shutting down).
        case failed
    }

    public var code: Code
    public var description: String

    public init(_ description: String, code: Code = .failed) {
        self.code = code
        self.description = description
    }
}

/// The iSCSI target: listens on the portals and serves the configured targets.
/// A `Service` (swift-service-lifecycle): `run()` serves until graceful
/// shutdown, then stops listening, ends the sessions and closes the devices.
public final class ISCSITargetServer: Service, Sendable {
    private let context: ServerContext
    private let logger: Logger
    private let group: any EventLoopGroup
    private let listeners = Mutex<[any Channel]>([])
    private let stopped = Atomic<Bool>(false)

    /// Builds the SCSI targets (opening nothing on the network yet).
    public init(configuration: ServerConfiguration, logger: Logger) throws {
        var runtimes: [String: ServerContext.Entry] = [:]
        for target in configuration.targets {
            guard runtimes[target.name] == nil else {
                throw TargetServerError("target \(target.name) is configured twice")
            }
            let scsi = try SCSITarget(
                name: target.name, logicalUnits: target.logicalUnits, stateDirectory: configuration.stateDirectory,
                logger: logger)
            runtimes[target.name] = ServerContext.Entry(
                runtime: TargetRuntime(name: target.name, scsi: scsi), policy: target.loginPolicy)
        }
        self.context = ServerContext(targets: runtimes, configuration: configuration, logger: logger)
        self.logger = logger
        self.group = MultiThreadedEventLoopGroup.singleton
    }

    /// Binds every portal and returns the bound addresses (port 0 → the port the
    /// system chose). Throws a clear error when an address is taken.
    @discardableResult
    public func start() async throws -> [SocketAddress] {
        let context = self.context
        var bound: [SocketAddress] = []
        var channels: [any Channel] = []
        for portal in context.configuration.portals {
            let bootstrap = ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(
                    .recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 4096, initial: 65536, maximum: 1 << 20)
                )
                .childChannelInitializer { channel in
                    let remote = channel.remoteAddress.map { "\($0)" } ?? "?"
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ISCSIConnectionHandler(server: context, remote: remote))
                    }
                }
            do {
                let channel = try await bootstrap.bind(host: portal.host, port: portal.port).get()
                channels.append(channel)
                if let address = channel.localAddress { bound.append(address) }
            } catch {
                for channel in channels { try? await channel.close() }
                throw TargetServerError("cannot listen on \(portal.host):\(portal.port): \(Self.describe(error))")
            }
        }
        listeners.withLock { $0 = channels }
        context.setPortalAddresses(
            bound.map { address in
                let host = address.ipAddress ?? "0.0.0.0"
                let shown = host.contains(":") ? "[\(host)]" : host
                return "\(shown):\(address.port ?? 3260),\(ServerContext.portalGroupTag)"
            })
        return bound
    }

    /// Serves until the service group's graceful shutdown (or cancellation), then shuts down.
    public func run() async throws {
        if listeners.withLock({ $0.isEmpty }) { try await start() }
        try? await gracefulShutdown()
        await shutdown()
    }

    /// Stops listening, ends every session, releases the devices.
    public func shutdown() async {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        let channels = listeners.withLock { c in
            let all = c
            c = []
            return all
        }
        for channel in channels { try? await channel.close() }
        context.registry.closeAll()
        for target in context.targets { await target.scsi.shutdown() }
        logger.info("target stopped")
    }

    /// Number of live sessions.
    public var sessionCount: Int { context.registry.count }

    /// The names of the targets served, sorted.
    public var targetNames: [String] { context.targets.map(\.name) }

    /// The SCSI side of target `name` (to add or remove logical units while serving), nil if not served.
    public func scsiTarget(named name: String) -> SCSITarget? { context.target(named: name)?.scsi }

    // MARK: - Changing the targets while serving

    /// Serves a new target from now on: it appears in SendTargets and accepts logins at once. Its logical
    /// units, if any, are served as given. Throws `.conflict` when a target of that name (compared
    /// case-insensitively, RFC 3722) is served, `.failed` when its SCSI side cannot be built or the server
    /// is shutting down.
    public func addTarget(_ configuration: TargetConfiguration) throws(TargetServerError) {
        guard !stopped.load(ordering: .relaxed) else { throw TargetServerError("the target server is shutting down") }
        guard context.target(named: configuration.name) == nil else {
            throw TargetServerError("target \(configuration.name) exists", code: .conflict)
        }
        let scsi: SCSITarget
        do {
            scsi = try SCSITarget(
                name: configuration.name, logicalUnits: configuration.logicalUnits,
                stateDirectory: context.configuration.stateDirectory, logger: logger)
        } catch {
            throw TargetServerError("cannot build target \(configuration.name): \(error)")
        }
        guard context.insert(TargetRuntime(name: configuration.name, scsi: scsi), policy: configuration.loginPolicy)
        else {
            throw TargetServerError("target \(configuration.name) exists", code: .conflict)
        }
        logger.info("target added", metadata: ["target": "\(configuration.name)"])
    }

    /// Stops serving target `name`: no new login or SendTargets answer names it from now on. Refused
    /// (`.conflict`) while it has logical units (remove or unmount them first), and while sessions are logged in
    /// to it unless `force`, which ends them. Returns how many sessions were ended. `.notFound` when there is no
    /// such target.
    @discardableResult
    public func removeTarget(name: String, force: Bool = false) async throws(TargetServerError) -> Int {
        let runtime: TargetRuntime
        let sessions: Int
        switch context.remove(named: name, force: force) {
        case .success(let removed): (runtime, sessions) = removed
        case .failure(.notFound): throw TargetServerError("no target \(name)", code: .notFound)
        case .failure(.hasLUNs(let luns)):
            throw TargetServerError(
                "target \(name) has LUN\(luns.count == 1 ? "" : "s") \(luns.map(String.init).joined(separator: ", ")): "
                    + "remove or unmount \(luns.count == 1 ? "it" : "them") first", code: .conflict)
        case .failure(.hasSessions(let count)):
            throw TargetServerError(
                "target \(name) has \(count) session\(count == 1 ? "" : "s") logged in (force ends them)",
                code: .conflict)
        }
        if sessions > 0 { context.registry.closeAll(targetName: name) }
        await runtime.scsi.shutdown()
        logger.info("target removed", metadata: ["target": "\(name)", "sessions ended": "\(sessions)"])
        return sessions
    }

    /// The login policy (alias, CHAP, mutual CHAP, ACL) of target `name` now, nil when it is not served.
    public func loginPolicy(target name: String) -> LoginPolicy? { context.policy(of: name) }

    /// Changes the login policy of target `name` and returns the new one. Logins that start and SendTargets
    /// answers given from now on use it; sessions already logged in go on undisturbed. `.notFound` when the
    /// target is not served.
    @discardableResult
    public func updateLoginPolicy(target name: String, _ change: (inout LoginPolicy) -> Void)
        throws(TargetServerError) -> LoginPolicy
    {
        guard let policy = context.updatePolicy(of: name, change) else {
            throw TargetServerError("no target \(name)", code: .notFound)
        }
        return policy
    }

    /// Number of sessions logged in to target `name`.
    public func sessionCount(target name: String) -> Int { context.registry.count(targetName: name) }

    private static func describe(_ error: any Error) -> String {
        if let io = error as? IOError {
            switch io.errnoCode {
            case EADDRINUSE: return "address already in use"
            case EADDRNOTAVAIL: return "address not available on this host"
            case EACCES: return "permission denied"
            default: return "\(io)"
            }
        }
        return "\(error)"
    }
}
