import BlockDevice
import Logging
import NIOCore

/// How one logical unit is presented to initiators.
public struct LogicalUnitConfiguration: Sendable {
    /// The LUN it answers on.
    public var lun: UInt64
    /// The data store.
    public var device: any BlockDevice
    /// Write-protected (SBC-4 §4.11): writes get DATA PROTECT / WRITE PROTECTED.
    public var readOnly: Bool
    /// Unit serial number (VPD 80h).
    public var serialNumber: String
    /// NAA IEEE Registered designator, 64 bits (VPD 83h); also the EXTENDED COPY identifier.
    public var naaIdentifier: UInt64
    /// T10 vendor identification (INQUIRY bytes 8-15).
    public var vendor: String
    /// Product identification (INQUIRY bytes 16-31).
    public var product: String
    /// Product revision level (INQUIRY bytes 32-35).
    public var revision: String
    /// Whether the LU reports a volatile write cache (caching mode page WCE).
    public var writeCacheEnabled: Bool

    public init(
        lun: UInt64, device: any BlockDevice, readOnly: Bool = false, serialNumber: String, naaIdentifier: UInt64,
        vendor: String = "LIVEMNT", product: String = "LiveMount LUN", revision: String = "0001",
        writeCacheEnabled: Bool = true
    ) {
        self.lun = lun
        self.device = device
        self.readOnly = readOnly
        self.serialNumber = serialNumber
        self.naaIdentifier = naaIdentifier
        self.vendor = vendor
        self.product = product
        self.revision = revision
        self.writeCacheEnabled = writeCacheEnabled
    }
}

/// Task management functions the transport forwards (SAM-5 §7, RFC 7143 §11.5.1).
public enum TaskManagementFunction: Sendable {
    case abortTaskSet
    case clearTaskSet
    case logicalUnitReset
    case targetWarmReset
    case targetColdReset
}

/// The SCSI target device: its logical units, addressed by LUN, and the state
/// they share (the nexus registry for unit attentions, the EXTENDED COPY
/// directory). The transport calls only this type.
public final class SCSITarget: Sendable {
    /// The target's name (the iSCSI TargetName), for VPD 83h target designators.
    public let name: String

    /// Builds the logical units. `stateDirectory` holds what must survive a
    /// restart (persistent reservations); nil keeps it in memory only.
    public init(name: String, logicalUnits: [LogicalUnitConfiguration], stateDirectory: String?, logger: Logger) throws {
        self.name = name
    }

    /// The configured LUNs, ascending.
    public var luns: [UInt64] { [] }

    /// Executes one command on `lun`. Never throws: every failure is a status
    /// and sense data. A LUN that does not exist answers INQUIRY with
    /// peripheral qualifier 011b, REPORT LUNS and REQUEST SENSE normally, and
    /// anything else with LOGICAL UNIT NOT SUPPORTED (SPC-4 §4.5.5, SAM-5 §5.9.6).
    public func execute(lun: UInt64, command: SCSICommand) async -> SCSIResult {
        .checkCondition(SenseData(key: .illegalRequest, asc: 0x20, ascq: 0x00))
    }

    /// Applies a task management function's effect on SCSI state (SAM-5 §7):
    /// LUN and target resets release SPC-2 reservations and establish a
    /// unit attention for every other nexus. Returns false when the LUN does
    /// not exist. The transport aborts its own tasks before calling this.
    public func taskManagement(_ function: TaskManagementFunction, lun: UInt64, nexus: ITNexus) async -> Bool {
        false
    }

    /// A new I_T nexus exists (a session logged in). The first command on it
    /// gets POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    public func nexusEstablished(_ nexus: ITNexus) {}

    /// The I_T nexus is gone (session ended). Persistent reservations stay.
    public func nexusReleased(_ nexus: ITNexus) {}

    /// Releases every logical unit's device.
    public func shutdown() async {}
}
