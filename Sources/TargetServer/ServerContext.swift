import Synchronization
import ISCSIProtocol
import Logging
import NIOCore
import SCSI

/// One configured target at run time: its configuration and its SCSI target device.
final class TargetRuntime: Sendable {
    let configuration: TargetConfiguration
    let scsi: SCSITarget

    init(configuration: TargetConfiguration, scsi: SCSITarget) {
        self.configuration = configuration
        self.scsi = scsi
    }

    var name: String { configuration.name }
}

/// What every connection of the server shares: the targets, the session
/// registry, the negotiation limits and the portal addresses for SendTargets.
final class ServerContext: Sendable {
    let targets: [String: TargetRuntime]
    let registry = SessionRegistry()
    let configuration: ServerConfiguration
    let logger: Logger
    /// The portal group tag of every portal (one portal group).
    static let portalGroupTag: UInt16 = 1
    let metrics: TargetMetrics
    /// The login configuration each connection copies (with its own TSIH).
    let loginTemplate: LoginConfiguration
    private let boundAddresses: PortalAddressList

    init(targets: [String: TargetRuntime], configuration: ServerConfiguration, logger: Logger) {
        self.targets = targets
        self.configuration = configuration
        self.logger = logger
        self.metrics = TargetMetrics()
        self.boundAddresses = PortalAddressList()
        self.loginTemplate = Self.makeLoginTemplate(configuration, portalGroupTag: Self.portalGroupTag)
    }

    /// Addresses for SendTargets (`host:port,tpgt`), set once the listeners are bound.
    var portalAddresses: [String] {
        get { boundAddresses.value }
    }

    func setPortalAddresses(_ addresses: [String]) { boundAddresses.set(addresses) }
}

/// The bound portal addresses, set once the listeners are up and read by SendTargets.
final class PortalAddressList: Sendable {
    private let box = Synchronization.Mutex<[String]>([])
    var value: [String] { box.withLock { $0 } }
    func set(_ v: [String]) { box.withLock { $0 = v } }
}
