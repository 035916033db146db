import Logging
import NIOCore
import NIOPosix
import SCSI
import ServiceLifecycle

/// The iSCSI target: listens on the portals and serves the configured targets.
/// A `Service` (swift-service-lifecycle): `run()` serves until graceful shutdown.
public final class ISCSITargetServer: Service, Sendable {
    private let configuration: ServerConfiguration
    private let logger: Logger

    /// Validates the configuration and builds the SCSI targets (opening nothing on the network yet).
    public init(configuration: ServerConfiguration, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
    }

    /// Binds every portal; returns the bound addresses (port 0 → the chosen port).
    /// Throws a clear error when a port is taken.
    public func start() async throws -> [SocketAddress] { [] }

    /// Serves until the service group's graceful shutdown, then closes listeners and sessions.
    public func run() async throws {}

    /// Stops listening, ends every session, releases devices.
    public func shutdown() async {}
}
