import Logging
import NIOCore
import NIOPosix
import SCSI
import ServiceLifecycle
import Synchronization

/// Why the server could not start.
public struct TargetServerError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
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
        var runtimes: [String: TargetRuntime] = [:]
        for target in configuration.targets {
            guard runtimes[target.name] == nil else {
                throw TargetServerError("target \(target.name) is configured twice")
            }
            let scsi = try SCSITarget(
                name: target.name, logicalUnits: target.logicalUnits, stateDirectory: configuration.stateDirectory,
                logger: logger)
            runtimes[target.name] = TargetRuntime(configuration: target, scsi: scsi)
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
        for target in context.targets.values { await target.scsi.shutdown() }
        logger.info("target stopped")
    }

    /// Number of live sessions.
    public var sessionCount: Int { context.registry.count }

    /// The names of the targets served, sorted.
    public var targetNames: [String] { context.targets.keys.sorted() }

    /// The SCSI side of target `name` (to add or remove logical units while serving), nil if not served.
    public func scsiTarget(named name: String) -> SCSITarget? { context.targets[name]?.scsi }

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
