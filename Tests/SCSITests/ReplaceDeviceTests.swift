import BlockDevice
import Logging
import NIOCore
import Synchronization
import Testing

@testable import SCSI

/// `SCSITarget.replaceDevice` (archive placeholders): the LU keeps its identity and state, raises no unit
/// attention, and the swap returns only after the commands already running on the old device finished.
@Suite("replace a LU's device")
struct ReplaceDeviceTests {
    @Test("a write running on the old device holds the swap until it completes; later commands use the new one")
    func waitsForRunningCommands() async throws {
        let slow = SlowWriteDevice(blocks: 2048)
        let config = LogicalUnitConfiguration(
            lun: 0, device: slow, serialNumber: "SER0001", naaIdentifier: 0x6001_4050_1234_5678)
        let target = try SCSITarget(
            name: "iqn.2024-01.test:t", logicalUnits: [config], stateDirectory: nil, logger: Logger(label: "test"))
        target.nexusEstablished(nexusA)
        let command = SCSICommand(
            cdb: write10(lba: 8, blocks: 1), nexus: nexusA, expectedDataTransferLength: 512, isWrite: true,
            isRead: false, dataOut: ByteBuffer(bytes: [UInt8](repeating: 0x77, count: 512)))
        // Clear the POWER ON unit attention first.
        _ = await target.execute(lun: 0, command: SCSICommand(
            cdb: [0, 0, 0, 0, 0, 0], nexus: nexusA, expectedDataTransferLength: 0, isWrite: false, isRead: false,
            dataOut: ByteBuffer()))
        let write = Task { await target.execute(lun: 0, command: command) }
        await slow.waitUntilWriting()

        let replacement = TestDevice(blocks: 2048, blockSize: 512, readOnly: false, supportsUnmap: true)
        let swapped = Atomic<Bool>(false)
        let swap = Task {
            let old = try await target.replaceDevice(lun: 0, with: replacement)
            swapped.store(true, ordering: .relaxed)
            return old
        }
        try await Task.sleep(for: .milliseconds(50))
        let early = swapped.load(ordering: .relaxed)
        #expect(!early, "the swap waits for the write running on the old device")
        slow.release()
        #expect(await write.value.status == .good)
        let old = try await swap.value
        #expect(old === slow)
        #expect(target.device(lun: 0) === replacement)

        // The next command goes to the new device, with no unit attention; identity unchanged.
        let read = await target.execute(lun: 0, command: SCSICommand(
            cdb: read10(lba: 8, blocks: 1), nexus: nexusA, expectedDataTransferLength: 512, isWrite: false,
            isRead: true, dataOut: ByteBuffer()))
        #expect(read.status == .good)
        #expect(read.bytes == [UInt8](repeating: 0, count: 512), "read from the replacement, not the old device")
        #expect(target.configuration(lun: 0)?.serialNumber == "SER0001")
    }

    @Test("a replacement of another size or block size is refused; an unknown LUN too")
    func refusesOtherGeometry() async throws {
        let f = try Fixture()
        await #expect(throws: SCSITargetError.self) {
            try await f.target.replaceDevice(
                lun: 0, with: TestDevice(blocks: 1024, blockSize: 512, readOnly: false, supportsUnmap: true))
        }
        await #expect(throws: SCSITargetError.self) {
            try await f.target.replaceDevice(
                lun: 3, with: TestDevice(blocks: 2048, blockSize: 512, readOnly: false, supportsUnmap: true))
        }
        #expect(f.target.device(lun: 0) === f.device)
    }
}

/// A memory device whose writes wait until `release()`.
final class SlowWriteDevice: BlockDevice, @unchecked Sendable {
    let blockSize = 512
    let blockCount: UInt64
    let isReadOnly = false
    let supportsUnmap = false
    private let memory: MemoryBlockDevice
    private let state = Mutex<(writing: Bool, released: Bool)>((false, false))

    init(blocks: UInt64) {
        blockCount = blocks
        memory = MemoryBlockDevice(blockSize: 512, blockCount: blocks)
    }

    func waitUntilWriting() async {
        while !state.withLock({ $0.writing }) { try? await Task.sleep(for: .milliseconds(1)) }
    }

    func release() { state.withLock { $0.released = true } }

    func read(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer {
        try await memory.read(offset: offset, length: length)
    }

    func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(BlockDeviceError) {
        state.withLock { $0.writing = true }
        while !state.withLock({ $0.released }) { try? await Task.sleep(for: .milliseconds(1)) }
        try await memory.write(offset: offset, data: data, fua: fua)
    }

    func flush() async throws(BlockDeviceError) {}
    func unmap(offset: UInt64, length: Int) async throws(BlockDeviceError) {}
    func close() async {}
}
