import BlockDevice
import Logging
import NIOCore
import Testing

@testable import SCSI

/// Two initiators' nexuses on the same target port.
let nexusA = ITNexus(initiatorName: "iqn.2024-01.test:a", isid: 0x23D0_0000_0001, targetName: "iqn.2024-01.test:t", portalGroupTag: 1)
let nexusB = ITNexus(initiatorName: "iqn.2024-01.test:b", isid: 0x23D0_0000_0002, targetName: "iqn.2024-01.test:t", portalGroupTag: 1)

/// A target with one LU 0 over a fresh `TestDevice`.
struct Fixture {
    let target: SCSITarget
    let device: TestDevice

    init(blocks: UInt64 = 2048, blockSize: Int = 512, readOnly: Bool = false, deviceReadOnly: Bool = false, unmap: Bool = true) throws {
        device = TestDevice(blocks: blocks, blockSize: blockSize, readOnly: deviceReadOnly, supportsUnmap: unmap)
        let config = LogicalUnitConfiguration(
            lun: 0, device: device, readOnly: readOnly, serialNumber: "SER0001", naaIdentifier: 0x6001_4050_1234_5678)
        target = try SCSITarget(name: "iqn.2024-01.test:t", logicalUnits: [config], stateDirectory: nil, logger: Logger(label: "test"))
    }

    /// Runs `cdb` (padded to its natural length) on `lun` from `nexus`.
    func run(_ cdb: [UInt8], data: [UInt8]? = nil, lun: UInt64 = 0, nexus: ITNexus = nexusA) async -> SCSIResult {
        let out = data.map { ByteBuffer(bytes: $0) } ?? ByteBuffer()
        let command = SCSICommand(
            cdb: cdb, nexus: nexus, expectedDataTransferLength: UInt32(data?.count ?? (16 << 20)), isWrite: data != nil,
            isRead: data == nil, dataOut: out)
        return await target.execute(lun: lun, command: command)
    }
}

extension SCSIResult {
    /// The Data-In bytes.
    var bytes: [UInt8] { dataIn.map { $0.getBytes(at: $0.readerIndex, length: $0.readableBytes) ?? [] } ?? [] }
}

/// Expects CHECK CONDITION with the given sense key and ASC/ASCQ.
func expectSense(
    _ r: SCSIResult, _ key: SenseKey, _ asc: UInt8, _ ascq: UInt8, sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(r.status == .checkCondition, sourceLocation: sourceLocation)
    #expect(r.sense?.key == key, sourceLocation: sourceLocation)
    #expect(r.sense?.asc == asc, sourceLocation: sourceLocation)
    #expect(r.sense?.ascq == ascq, sourceLocation: sourceLocation)
}

// MARK: - CDB builders

func read10(lba: UInt32, blocks: UInt16, flags: UInt8 = 0) -> [UInt8] {
    [0x28, flags, UInt8(lba >> 24), UInt8((lba >> 16) & 0xFF), UInt8((lba >> 8) & 0xFF), UInt8(lba & 0xFF), 0,
     UInt8(blocks >> 8), UInt8(blocks & 0xFF), 0]
}

func write10(lba: UInt32, blocks: UInt16, flags: UInt8 = 0) -> [UInt8] {
    var c = read10(lba: lba, blocks: blocks, flags: flags)
    c[0] = 0x2A
    return c
}

func cdb16(_ opcode: UInt8, lba: UInt64, blocks: UInt32, byte1: UInt8 = 0) -> [UInt8] {
    var c = [UInt8](repeating: 0, count: 16)
    c[0] = opcode
    c[1] = byte1
    for i in 0..<8 { c[2 + i] = UInt8((lba >> (56 - 8 * UInt64(i))) & 0xFF) }
    for i in 0..<4 { c[10 + i] = UInt8((blocks >> (24 - 8 * UInt32(i))) & 0xFF) }
    return c
}

func inquiry(evpd: Bool = false, page: UInt8 = 0, allocation: UInt16 = 255) -> [UInt8] {
    [0x12, evpd ? 1 : 0, page, UInt8(allocation >> 8), UInt8(allocation & 0xFF), 0]
}

let testUnitReady: [UInt8] = [0, 0, 0, 0, 0, 0]

func be32(_ b: [UInt8], _ i: Int) -> UInt32 {
    UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3])
}
