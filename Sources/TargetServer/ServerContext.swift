import ISCSIProtocol
import Logging
import NIOCore
import SCSI
import Synchronization

/// One served target at run time: its name and its SCSI target device. Its login policy lives beside it in
/// `ServerContext`, where it can change while the target serves.
final class TargetRuntime: Sendable {
    let name: String
    let scsi: SCSITarget

    init(name: String, scsi: SCSITarget) {
        self.name = name
        self.scsi = scsi
    }
}

/// What every connection of the server shares: the targets and their login policies (changeable while the
/// server runs), the session registry, the negotiation limits and the portal addresses for SendTargets.
final class ServerContext: Sendable {
    /// A served target and its current login policy.
    struct Entry: Sendable {
        let runtime: TargetRuntime
        var policy: LoginPolicy
    }

    /// The targets by name. Logins and SendTargets read it when they start; the control plane changes it.
    private let table: Mutex<[String: Entry]>
    let registry = SessionRegistry()
    let configuration: ServerConfiguration
    let logger: Logger
    /// The portal group tag of every portal (one portal group).
    static let portalGroupTag: UInt16 = 1
    let metrics: TargetMetrics
    /// The login configuration without targets: limits, discovery CHAP, portal group (fixed at start).
    private let loginBase: LoginConfiguration
    private let boundAddresses: PortalAddressList

    init(targets: [String: Entry], configuration: ServerConfiguration, logger: Logger) {
        self.table = Mutex(targets)
        self.configuration = configuration
        self.logger = logger
        self.metrics = TargetMetrics()
        self.boundAddresses = PortalAddressList()
        self.loginBase = Self.makeLoginBase(configuration, portalGroupTag: Self.portalGroupTag)
    }

    /// Addresses for SendTargets (`host:port,tpgt`), set once the listeners are bound.
    var portalAddresses: [String] {
        get { boundAddresses.value }
    }

    func setPortalAddresses(_ addresses: [String]) { boundAddresses.set(addresses) }

    // MARK: - The target table

    /// The target named `name` as served now, nil when there is none.
    func target(named name: String) -> TargetRuntime? { table.withLock { $0[name]?.runtime } }

    /// Every served target, by name.
    var targets: [TargetRuntime] { table.withLock { $0.values.map(\.runtime) }.sorted { $0.name < $1.name } }

    /// The login policy of `name` now, nil when there is no such target.
    func policy(of name: String) -> LoginPolicy? { table.withLock { $0[name]?.policy } }

    /// Serves a new target; false when one of that name (compared case-insensitively, RFC 3722) exists.
    func insert(_ runtime: TargetRuntime, policy: LoginPolicy) -> Bool {
        table.withLock { table in
            let folded = runtime.name.lowercased()
            guard !table.keys.contains(where: { $0.lowercased() == folded }) else { return false }
            table[runtime.name] = Entry(runtime: runtime, policy: policy)
            return true
        }
    }

    /// Why `remove(named:force:)` refused.
    enum RemovalRefusal: Error {
        case notFound
        case hasLUNs([UInt64])
        case hasSessions(Int)
    }

    /// Stops serving `name` if it has no LU and, unless `force`, no session; retires its SCSI target so no LU
    /// can be added to it afterwards. Returns the runtime and the number of its sessions (which the caller ends).
    func remove(named name: String, force: Bool) -> Result<(TargetRuntime, Int), RemovalRefusal> {
        table.withLock { table in
            guard let entry = table[name] else { return .failure(.notFound) }
            let sessions = registry.count(targetName: name)
            if sessions > 0 && !force { return .failure(.hasSessions(sessions)) }
            let luns = entry.runtime.scsi.retireIfEmpty()
            guard luns.isEmpty else { return .failure(.hasLUNs(luns)) }
            table[name] = nil
            return .success((entry.runtime, sessions))
        }
    }

    /// Applies `change` to the policy of `name`; returns the new policy, nil when there is no such target.
    func updatePolicy(of name: String, _ change: (inout LoginPolicy) -> Void) -> LoginPolicy? {
        table.withLock { table in
            guard var entry = table[name] else { return nil }
            change(&entry.policy)
            table[name] = entry
            return entry.policy
        }
    }

    // MARK: - Login and discovery

    /// The login configuration for a login starting now (RFC 7143 §6, §12): the fixed limits with every
    /// target's current policy. The caller sets its TSIH and initial StatSN.
    func loginConfiguration() -> LoginConfiguration {
        func account(_ c: CHAPCredentials?) -> CHAPAccount? { c.map { CHAPAccount(user: $0.user, secret: $0.secret) } }
        var configuration = loginBase
        configuration.targets = table.withLock { table in
            table.mapValues { entry in
                TargetLoginPolicy(
                    alias: entry.policy.alias, chap: account(entry.policy.chap),
                    mutualChap: account(entry.policy.mutualChap),
                    allowedInitiators: entry.policy.allowedInitiators)
            }
        }
        return configuration
    }

    /// Targets for SendTargets as served now, each with its ACL and this server's portals.
    var discoveryTargets: [DiscoveryTarget] {
        let addresses = portalAddresses
        let entries = table.withLock { Array($0.values) }
        return entries.sorted { $0.runtime.name < $1.runtime.name }.map {
            DiscoveryTarget(
                name: $0.runtime.name, addresses: addresses, allowedInitiators: $0.policy.allowedInitiators)
        }
    }

    /// What every login shares: limits, discovery CHAP and the portal group tag.
    private static func makeLoginBase(_ configuration: ServerConfiguration, portalGroupTag: UInt16)
        -> LoginConfiguration
    {
        let l = configuration.limits
        let limits = TargetLimits(
            maxRecvDataSegmentLength: l.maxRecvDataSegmentLength, maxBurstLength: l.maxBurstLength,
            firstBurstLength: l.firstBurstLength, initialR2T: l.initialR2T, immediateData: l.immediateData,
            maxOutstandingR2T: l.maxOutstandingR2T, commandWindow: l.commandWindow)
        return LoginConfiguration(
            portalGroupTag: portalGroupTag, targets: [:],
            discoveryChap: configuration.discoveryChap.map { CHAPAccount(user: $0.user, secret: $0.secret) },
            limits: limits, newTSIH: 0, initialStatSN: 1)
    }
}

/// The bound portal addresses, set once the listeners are up and read by SendTargets.
final class PortalAddressList: Sendable {
    private let box = Synchronization.Mutex<[String]>([])
    var value: [String] { box.withLock { $0 } }
    func set(_ v: [String]) { box.withLock { $0 = v } }
}
