// Temporary stand-ins for the Reservations/ExtendedCopy helper's types, with
// the agreed signatures. This file is deleted when that branch is merged.
import BlockDevice
import NIOCore

/// A unit attention one command establishes for another nexus.
struct UnitAttentionRequest: Sendable {
    var nexus: ITNexus
    var sense: SenseData
}

/// Stub: no reservations, every reservation command unsupported.
final class ReservationManager: Sendable {
    init(lunKey: String, stateDirectory: String?) throws {}
    func conflicts(cdb: [UInt8], nexus: ITNexus) -> Bool { false }
    func persistentReserveIn(cdb: [UInt8], nexus: ITNexus) -> SCSIResult { .checkCondition(.invalidOpcode) }
    func persistentReserveOut(cdb: [UInt8], parameters: ByteBuffer, nexus: ITNexus) -> (SCSIResult, [UnitAttentionRequest]) {
        (.checkCondition(.invalidOpcode), [])
    }
    func reserve(cdb: [UInt8], nexus: ITNexus) -> SCSIResult { .checkCondition(.invalidOpcode) }
    func release(cdb: [UInt8], nexus: ITNexus) -> SCSIResult { .checkCondition(.invalidOpcode) }
    func reset() {}
    func nexusReleased(_ nexus: ITNexus) {}
}

/// How EXTENDED COPY finds a copy source or destination.
struct CopyTargetDevice: Sendable {
    var device: any BlockDevice
    var readOnly: Bool
}

typealias CopyTargetResolver = @Sendable ([UInt8]) -> CopyTargetDevice?

/// Stub: EXTENDED COPY unsupported.
final class ExtendedCopyEngine: Sendable {
    init() {}
    func thirdPartyCopyVPD() -> [UInt8] { [0x00, 0x8F, 0x00, 0x00] }
    func extendedCopy(cdb: [UInt8], parameters: ByteBuffer, nexus: ITNexus, resolve: CopyTargetResolver) async -> SCSIResult {
        .checkCondition(.invalidOpcode)
    }
    func receiveCopyResults(cdb: [UInt8], nexus: ITNexus) -> SCSIResult { .checkCondition(.invalidOpcode) }
}
