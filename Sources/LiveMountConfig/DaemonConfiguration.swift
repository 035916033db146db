import BlockDevice
import Logging
import Prefetch
import Relocation
import SCSI
import TargetServer

// MARK: - Model

/// livemountd's validated configuration, from a TOML file (`DaemonConfiguration.parse(toml:)`) or from
/// the ad hoc command line (`DaemonConfiguration.fromArguments(_:)`).
///
/// Unlike `ServerConfiguration` it holds no open devices: a LUN is a path and how to open it, so the
/// whole configuration can be checked (`livemountd --check`) before anything is opened.
public struct DaemonConfiguration: Sendable, Equatable {
    /// Where state that must survive restarts lives (persistent reservations); nil = memory only.
    public var stateDirectory: String?
    /// Minimum level of log messages written to standard error.
    public var logLevel: Logger.Level
    /// Listening addresses (network portals, RFC 7143 §4.4.1).
    public var portals: [PortalConfiguration]
    /// Limits declared in login negotiation (RFC 7143 §13).
    public var limits: NegotiationLimits
    /// Seconds between NOP-In pings on an idle connection; 0 disables (RFC 7143 §11.19).
    public var nopInInterval: Int
    /// Seconds without an answer to a ping before the connection is dropped.
    public var nopInTimeout: Int
    /// CHAP an initiator must pass in a discovery session; nil = none.
    public var discoveryChap: CHAPCredentials?
    /// The targets, in configuration order.
    public var targets: [TargetDefinition]
    /// The backup repository live-mounted LUNs read from; required when a LUN names a backup.
    public var repository: RepositorySettings?
    /// The SSD-tier read cache; required when a LUN names a backup.
    public var cache: CacheSettings?
    /// The control API's Unix socket; nil = `control.sock` in the state directory (none without one).
    public var controlSocket: String?
    /// The control API also on TCP, on a loopback address (`control_listen`); nil = the socket only.
    public var controlListen: PortalConfiguration?
    /// The file holding the bearer token every TCP request must carry (`control_token_file`); required with
    /// `controlListen`.
    public var controlTokenFile: String?
    /// How live mounts pre-stage and prefetch (`[prefetch]`).
    public var prefetch = PrefetchSettings()
    /// How relocation pumps copy live mounts to their primary LUNs (`[relocation]`).
    public var relocation = RelocationSettings()
    /// When idle LUNs are archived to placeholders (`[archive]`).
    public var archive = ArchiveSettings()

    /// The bearer token of the TCP control listener, read from `controlTokenFile` (nil if unset or unreadable).
    public var controlToken: String? { controlTokenFile.flatMap(Checks.readToken) }

    /// Where the control API listens: the configured socket, else `STATE_DIR/control.sock`, else nowhere.
    public var effectiveControlSocket: String? {
        controlSocket ?? stateDirectory.map { ($0.hasSuffix("/") ? $0 : $0 + "/") + "control.sock" }
    }

    public init(
        stateDirectory: String? = nil, logLevel: Logger.Level = .info, portals: [PortalConfiguration],
        limits: NegotiationLimits = NegotiationLimits(), nopInInterval: Int = 30, nopInTimeout: Int = 30,
        discoveryChap: CHAPCredentials? = nil, targets: [TargetDefinition]
    ) {
        self.stateDirectory = stateDirectory
        self.logLevel = logLevel
        self.portals = portals
        self.limits = limits
        self.nopInInterval = nopInInterval
        self.nopInTimeout = nopInTimeout
        self.discoveryChap = discoveryChap
        self.targets = targets
    }

    /// The portal used when none is configured: all IPv4 addresses, the IANA iSCSI port (RFC 7143 §4.4.1).
    public static let defaultPortal = PortalConfiguration(host: "0.0.0.0", port: 3260)
}

/// One target as configured: its name, who may log in, and its LUNs as paths.
public struct TargetDefinition: Sendable, Equatable {
    /// The iSCSI TargetName (RFC 7143 §4.2.7), lowercase.
    public var name: String
    /// TargetAlias (RFC 7143 §13.6).
    public var alias: String?
    /// InitiatorNames allowed to log in; empty = any.
    public var allowedInitiators: [String]
    /// One-way CHAP: what the initiator must prove.
    public var chap: CHAPCredentials?
    /// Mutual CHAP: what the target proves to the initiator.
    public var mutualChap: CHAPCredentials?
    /// The logical units, in configuration order.
    public var logicalUnits: [LogicalUnitDefinition]

    public init(
        name: String, alias: String? = nil, allowedInitiators: [String] = [], chap: CHAPCredentials? = nil,
        mutualChap: CHAPCredentials? = nil, logicalUnits: [LogicalUnitDefinition]
    ) {
        self.name = name
        self.alias = alias
        self.allowedInitiators = allowedInitiators
        self.chap = chap
        self.mutualChap = mutualChap
        self.logicalUnits = logicalUnits
    }
}

/// One LUN as configured: the backing file or block device and how to present it.
public struct LogicalUnitDefinition: Sendable, Equatable {
    /// The LUN it answers on (0...16383, SAM-5 §4.7.7 flat space addressing).
    public var lun: UInt64
    /// Absolute path of the image file or block device; empty for a live mount of a backup.
    public var path: String
    /// The backup disk this LUN live-mounts (`backup = "VM[@ID][/DISK]"`); nil for an image or device.
    public var backup: BackupReference?
    /// Open read-only and report write protection (SBC-4 §4.11).
    public var readOnly: Bool
    /// Open with O_DIRECT (bypass the page cache).
    public var direct: Bool
    /// Logical block size in bytes: 512 or 4096.
    public var blockSize: Int
    /// Unit serial number (VPD 80h, SPC-4 §7.8.16).
    public var serialNumber: String
    /// NAA IEEE Registered designator (VPD 83h, SPC-4 §7.8.6.6.4).
    public var naaIdentifier: UInt64
    /// Whether the LU reports a volatile write cache (caching mode page WCE, SBC-4 §6.5.5).
    public var writeCacheEnabled: Bool
    /// A live mount's profile, prefetch and boot recording (`profile`, `prefetch`, `record_boot`).
    public var mountOptions = MountOptions()
    /// A backup LUN's primary LUN (`relocate_to`, ad hoc `relocate=URL`): once mounted, the daemon relocates it
    /// there. Checked only syntactically here (`relocationDestinationProblem(_:)`); the pump parses it fully.
    public var relocateTo: String?

    public init(
        lun: UInt64, path: String, readOnly: Bool = false, direct: Bool = true, blockSize: Int = 512,
        serialNumber: String, naaIdentifier: UInt64, writeCacheEnabled: Bool = true, backup: BackupReference? = nil
    ) {
        self.lun = lun
        self.path = path
        self.backup = backup
        self.readOnly = readOnly
        self.direct = direct
        self.blockSize = blockSize
        self.serialNumber = serialNumber
        self.naaIdentifier = naaIdentifier
        self.writeCacheEnabled = writeCacheEnabled
    }
}

/// A validated configuration together with the warnings found while validating it
/// (e.g. a CHAP secret shorter than RFC 7143 §12.1.3 recommends).
public struct LoadedConfiguration: Sendable {
    public var configuration: DaemonConfiguration
    public var warnings: [ConfigurationIssue]

    public init(configuration: DaemonConfiguration, warnings: [ConfigurationIssue]) {
        self.configuration = configuration
        self.warnings = warnings
    }
}

// MARK: - Opening devices

/// A LUN's device could not be opened.
public struct DeviceOpenError: Error, Sendable, CustomStringConvertible {
    /// Which LUN: `target iqn.2026-11.org.example:disk0 LUN 1`.
    public var field: String
    public var path: String
    public var reason: String

    public init(field: String, path: String, reason: String) {
        self.field = field
        self.path = path
        self.reason = reason
    }

    public var description: String { "\(field): cannot open \(path): \(reason)" }
}

extension DaemonConfiguration {
    /// How to open one LUN's device; defaults to `openDevice(path:readOnly:direct:blockSize:)`.
    public typealias DeviceOpener = @Sendable (TargetDefinition, LogicalUnitDefinition) async throws -> any BlockDevice

    /// Opens every LUN's device and builds the `ServerConfiguration`. If one device fails to open, those
    /// already opened are closed before the error is thrown.
    public func makeServerConfiguration(
        openingDevicesWith open: DeviceOpener = { _, lu in
            try openDevice(path: lu.path, readOnly: lu.readOnly, direct: lu.direct, blockSize: lu.blockSize)
        }
    ) async throws(DeviceOpenError) -> ServerConfiguration {
        var opened: [any BlockDevice] = []
        var targets: [TargetConfiguration] = []
        for target in self.targets {
            var units: [LogicalUnitConfiguration] = []
            for lu in target.logicalUnits {
                let device: any BlockDevice
                do {
                    device = try await open(target, lu)
                } catch {
                    for device in opened { await device.close() }
                    throw DeviceOpenError(
                        field: "target \(target.name) LUN \(lu.lun)", path: lu.backup.map { "backup \($0)" } ?? lu.path,
                        reason: "\(error)")
                }
                opened.append(device)
                units.append(
                    LogicalUnitConfiguration(
                        lun: lu.lun, device: device, readOnly: lu.readOnly, serialNumber: lu.serialNumber,
                        naaIdentifier: lu.naaIdentifier, writeCacheEnabled: lu.writeCacheEnabled))
            }
            targets.append(
                TargetConfiguration(
                    name: target.name, alias: target.alias, logicalUnits: units, chap: target.chap,
                    mutualChap: target.mutualChap, allowedInitiators: target.allowedInitiators))
        }
        return ServerConfiguration(
            portals: portals, targets: targets, discoveryChap: discoveryChap, limits: limits,
            stateDirectory: stateDirectory, nopInInterval: nopInInterval, nopInTimeout: nopInTimeout)
    }
}

extension DaemonConfiguration {
    /// Parses a log level name as `--log-level` and `daemon.log_level` accept it (trace ... critical).
    public static func logLevel(named name: String) -> Logger.Level? { Checks.logLevel(name) }

    /// The accepted log level names, comma-separated, for help and messages.
    public static var logLevelNames: String { Checks.logLevelNames }
}

/// `[archive]`: the policy that archives idle LUNs on primary storage to placeholders (issue 6).
public struct ArchiveSettings: Sendable, Equatable {
    /// Archive a LUN on primary storage (an image file or block device) once nothing has read or written it for
    /// this many seconds; 0 (the default) archives only what an operator names.
    public var idleSeconds = 0
    /// How often the policy looks for idle LUNs.
    public var checkSeconds = 300

    public init(idleSeconds: Int = 0, checkSeconds: Int = 300) {
        self.idleSeconds = idleSeconds
        self.checkSeconds = checkSeconds
    }
}
