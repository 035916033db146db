import BlockDevice
import Dispatch
import Logging
import NIOCore
import Synchronization
import Testing

@testable import SCSI

/// An in-memory device with no data "at hand" (`readIfReady` is nil) that serves `readAsync` from another
/// thread, like an O_DIRECT file through libaio; reads can be made to fail with a chosen error.
final class CallbackDevice: BlockDevice, Sendable {
    private struct State {
        var bytes: [UInt8]
        var failure: BlockDeviceError?
        var asyncReads = 0
        var declineAsync = false
    }

    let blockSize = 512
    let blockCount: UInt64
    let isReadOnly = false
    let supportsUnmap = false
    private let state: Mutex<State>
    private let queue = DispatchQueue(label: "callback-device")

    init(blocks: UInt64) {
        blockCount = blocks
        state = Mutex(State(bytes: (0..<Int(blocks) * 512).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }))
    }

    /// Makes every later read fail with `error` (nil: succeed again).
    func fail(with error: BlockDeviceError?) { state.withLock { $0.failure = error } }
    /// Makes `readAsync` decline (return false), as a device that cannot serve a read that way.
    func declineAsync() { state.withLock { $0.declineAsync = true } }
    /// How many reads went through `readAsync`.
    var asyncReads: Int { state.withLock { $0.asyncReads } }

    private func load(offset: UInt64, length: Int) -> Result<ByteBuffer, BlockDeviceError> {
        state.withLock { s in
            if let failure = s.failure { return .failure(failure) }
            return .success(ByteBuffer(bytes: s.bytes[Int(offset)..<Int(offset) + length]))
        }
    }

    func read(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer {
        try load(offset: offset, length: length).get()
    }

    func readAsync(
        offset: UInt64, length: Int, completion: @escaping @Sendable (Result<ByteBuffer, BlockDeviceError>) -> Void
    ) -> Bool {
        let accepted = state.withLock { s -> Bool in
            guard !s.declineAsync else { return false }
            s.asyncReads += 1
            return true
        }
        guard accepted else { return false }
        queue.async { completion(self.load(offset: offset, length: length)) }
        return true
    }

    func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(BlockDeviceError) {
        state.withLock { s in
            s.bytes.replaceSubrange(Int(offset)..<Int(offset) + data.readableBytes, with: data.readableBytesView)
        }
    }

    func flush() async throws(BlockDeviceError) {}
    func unmap(offset: UInt64, length: Int) async throws(BlockDeviceError) {}
    func close() async {}
}

/// A target with LU 0 over a `CallbackDevice`, the power-on unit attention of `nexusA` already consumed.
private func callbackTarget(blocks: UInt64 = 1024) async throws -> (SCSITarget, CallbackDevice) {
    let device = CallbackDevice(blocks: blocks)
    let config = LogicalUnitConfiguration(
        lun: 0, device: device, serialNumber: "SER0002", naaIdentifier: 0x6001_4050_1234_0002)
    let target = try SCSITarget(
        name: "iqn.2024-01.test:t", logicalUnits: [config], stateDirectory: nil, logger: Logger(label: "test"))
    target.nexusEstablished(nexusA)
    let tur = SCSICommand(cdb: testUnitReady, nexus: nexusA, expectedDataTransferLength: 0, isWrite: false, isRead: false)
    _ = await target.execute(lun: 0, command: tur)
    return (target, device)
}

/// Runs `executeWithCompletion` and waits for its completion; nil when it declined.
private func viaCallback(_ target: SCSITarget, lun: UInt64 = 0, _ command: SCSICommand) async -> SCSIResult? {
    await withCheckedContinuation { (continuation: CheckedContinuation<SCSIResult?, Never>) in
        let started = target.executeWithCompletion(lun: lun, command: command) { result in
            continuation.resume(returning: result)
        }
        if !started { continuation.resume(returning: nil) }
    }
}

private func readCommand(_ cdb: [UInt8], expected: UInt32) -> SCSICommand {
    SCSICommand(cdb: cdb, nexus: nexusA, expectedDataTransferLength: expected, isWrite: false, isRead: true)
}

@Suite("READ callback path")
struct ReadCallbackTests {
    @Test("executeWithCompletion answers a READ through readAsync exactly as execute does")
    func sameAnswer() async throws {
        let (target, device) = try await callbackTarget()
        for (cdb, expected) in [
            (read10(lba: 3, blocks: 8), UInt32(4096)),
            (cdb16(0x88, lba: 1000, blocks: 24), UInt32(24 * 512)),
            // EDTL shorter than the CDB's transfer: the residual must match too.
            (read10(lba: 0, blocks: 4), UInt32(1000)),
        ] {
            let command = readCommand(cdb, expected: expected)
            let fast = try #require(await viaCallback(target, command))
            let slow = await target.execute(lun: 0, command: command)
            #expect(fast.status == .good)
            #expect(fast.status == slow.status)
            #expect(fast.bytes == slow.bytes)
            #expect(fast.dataInLength == slow.dataInLength)
        }
        #expect(device.asyncReads == 3)
    }

    @Test("TRANSFER LENGTH 0 completes GOOD with no data and no device read")
    func zeroLength() async throws {
        let (target, device) = try await callbackTarget()
        let result = try #require(await viaCallback(target, readCommand(read10(lba: 5, blocks: 0), expected: 0)))
        #expect(result.status == .good)
        #expect(result.bytes.isEmpty)
        #expect(device.asyncReads == 0)
    }

    @Test("an LBA out of range declines, and execute answers LBA OUT OF RANGE")
    func outOfRange() async throws {
        let (target, device) = try await callbackTarget(blocks: 1024)
        let command = readCommand(read10(lba: 1020, blocks: 8), expected: 4096)
        #expect(await viaCallback(target, command) == nil)
        expectSense(await target.execute(lun: 0, command: command), .illegalRequest, 0x21, 0x00)
        #expect(device.asyncReads == 0)
    }

    @Test("a device read error is MEDIUM ERROR / UNRECOVERED READ ERROR with the LBA, as in execute")
    func mediumError() async throws {
        let (target, device) = try await callbackTarget()
        device.fail(with: .readFailed("injected", errno: 5))
        let command = readCommand(read10(lba: 77, blocks: 2), expected: 1024)
        let fast = try #require(await viaCallback(target, command))
        let slow = await target.execute(lun: 0, command: command)
        expectSense(fast, .mediumError, 0x11, 0x00)
        #expect(fast.sense == slow.sense)
        #expect(fast.sense?.information == slow.sense?.information)
        #expect(fast.bytes.isEmpty)

        device.fail(with: .notReady("switching"))
        let notReady = try #require(await viaCallback(target, command))
        #expect(notReady.sense == (await target.execute(lun: 0, command: command)).sense)
        #expect(notReady.sense?.key == .notReady)
    }

    @Test("a pending unit attention, a non-READ, an unknown LUN or a declining device go to execute")
    func declines() async throws {
        let (target, device) = try await callbackTarget()
        let read = readCommand(read10(lba: 0, blocks: 1), expected: 512)
        target.nexusEstablished(nexusB)  // queues POWER ON for nexusB: any pending UA sends READs to execute
        #expect(await viaCallback(target, read) == nil)
        let readB = SCSICommand(
            cdb: read10(lba: 0, blocks: 1), nexus: nexusB, expectedDataTransferLength: 512, isWrite: false,
            isRead: true)
        expectSense(await target.execute(lun: 0, command: readB), .unitAttention, 0x29, 0x00)
        #expect(await viaCallback(target, read) != nil)

        let tur = SCSICommand(cdb: testUnitReady, nexus: nexusA, expectedDataTransferLength: 0, isWrite: false, isRead: false)
        #expect(await viaCallback(target, tur) == nil)
        #expect(await viaCallback(target, lun: 9, read) == nil)
        device.declineAsync()
        #expect(await viaCallback(target, read) == nil)
        #expect(device.asyncReads == 1)
    }

    @Test("a device with its data at hand completes at once through readIfReady")
    func readyDevice() async throws {
        let f = try Fixture()
        f.device.fill(at: 1024, with: (0..<1024).map { UInt8($0 % 251) })
        _ = await f.run(testUnitReady)
        let command = readCommand(read10(lba: 2, blocks: 2), expected: 1024)
        let result = try #require(await viaCallback(f.target, command))
        #expect(result.status == .good)
        #expect(result.bytes == (0..<1024).map { UInt8($0 % 251) })
    }
}
