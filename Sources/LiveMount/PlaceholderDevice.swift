import BlockDevice
import NIOCore
import Synchronization

/// What stands behind an archived LUN (issue 6, Archive and recall): the initiator sees the same LU (same
/// size, same VPD 83h identifiers: the SCSI layer keeps the LU and swaps only the device), while its data lives
/// only in a backup.
///
/// Phases:
/// - `archiving`: the LUN is being backed up; every command still goes to the primary device, and writes are
///   counted, because a write after the backup started would not be in it (`seal` then refuses).
/// - `sealed`: the backup is taken and nothing was written; the primary is being released. Commands wait.
/// - `archived`: only the backup holds the data. The first read or write recalls it (`recall`, given by the
///   daemon: a live mount of the backup, relocated back to primary storage) and waits for it, as do the
///   commands behind it; no error reaches the initiator unless the recall itself fails.
/// - `recalled`: every command goes to the recalled device.
public final class PlaceholderDevice: BlockDevice {
    public typealias Recall = @Sendable () async throws -> any BlockDevice

    public let blockSize: Int
    public let blockCount: UInt64
    public let isReadOnly: Bool
    public let supportsUnmap: Bool

    enum Phase {
        case archiving(primary: any BlockDevice, writes: Int, inFlight: Int)
        case sealed(primary: any BlockDevice, inFlight: Int)
        case archived
        case recalling(Task<any BlockDevice, any Error>)
        case recalled(any BlockDevice)
    }

    /// The phase as callers see it.
    public enum State: String, Sendable {
        case archiving, sealed, archived, recalling, recalled
    }

    private let phase: Mutex<Phase>
    private let recall: Mutex<Recall?>
    /// Commands waiting for the end of `sealed`.
    private let sealedWaiters = Mutex<[CheckedContinuation<Void, Never>]>([])

    /// A placeholder in front of `primary` while it is archived (`archiving`).
    public init(archiving primary: any BlockDevice) {
        blockSize = primary.blockSize
        blockCount = primary.blockCount
        isReadOnly = primary.isReadOnly
        supportsUnmap = primary.supportsUnmap
        phase = Mutex(.archiving(primary: primary, writes: 0, inFlight: 0))
        recall = Mutex(nil)
    }

    /// An archived LUN's placeholder (at daemon start): `recall` runs on first access.
    public init(blockSize: Int, blockCount: UInt64, readOnly: Bool, supportsUnmap: Bool, recall: @escaping Recall) {
        self.blockSize = blockSize
        self.blockCount = blockCount
        self.isReadOnly = readOnly
        self.supportsUnmap = supportsUnmap
        phase = Mutex(.archived)
        self.recall = Mutex(recall)
    }

    /// A LUN recalled in an earlier run of the daemon, served by `device` from the start.
    public init(recalled device: any BlockDevice, supportsUnmap: Bool) {
        blockSize = device.blockSize
        blockCount = device.blockCount
        isReadOnly = device.isReadOnly
        self.supportsUnmap = supportsUnmap
        phase = Mutex(.recalled(device))
        recall = Mutex(nil)
    }

    public var state: State {
        phase.withLock { p in
            switch p {
            case .archiving: .archiving
            case .sealed: .sealed
            case .archived: .archived
            case .recalling: .recalling
            case .recalled: .recalled
            }
        }
    }

    /// The recalled device, once there is one.
    public var recalledDevice: (any BlockDevice)? {
        phase.withLock { p in
            if case .recalled(let device) = p { return device }
            return nil
        }
    }

    // MARK: - The archive's steps (the daemon calls these)

    /// Ends `archiving`: true (now `sealed`) when nothing wrote the LUN since the placeholder went in front of
    /// it, so the backup holds every acknowledged write; false when something did (the placeholder keeps
    /// forwarding to the primary; the archive is abandoned).
    public func seal() -> Bool {
        phase.withLock { p in
            guard case .archiving(let primary, let writes, let inFlight) = p, writes == 0 else { return false }
            p = .sealed(primary: primary, inFlight: inFlight)
            return true
        }
    }

    /// Undoes `seal` (the archive failed after it): commands go to the primary again.
    public func unseal() {
        phase.withLock { p in
            if case .sealed(let primary, let inFlight) = p { p = .archiving(primary: primary, writes: 0, inFlight: inFlight) }
        }
        resumeSealedWaiters()
    }

    private func resumeSealedWaiters() {
        for waiter in sealedWaiters.withLock({ w in
            let all = w
            w = []
            return all
        }) {
            waiter.resume()
        }
    }

    /// Waits until no command is running on the primary any more (after `seal`), so it can be closed.
    public func drainPrimary() async {
        while true {
            let busy = phase.withLock { p -> Bool in
                if case .sealed(_, let inFlight) = p { return inFlight > 0 }
                return false
            }
            guard busy else { return }
            try? await Task.sleep(for: .milliseconds(1))
        }
    }

    /// Ends `sealed` (the primary is released): from now on the first access runs `recall`.
    public func archived(recall: @escaping Recall) {
        self.recall.withLock { $0 = recall }
        phase.withLock { $0 = .archived }
        resumeSealedWaiters()
    }

    /// Starts the recall now (an operator asked), as a first access would; returns when it is done.
    @discardableResult
    public func recallNow() async throws(BlockDeviceError) -> any BlockDevice {
        try await backing(write: false).device
    }

    // MARK: - Routing

    private enum Route {
        case primary(any BlockDevice)
        case device(any BlockDevice)
        case wait
        case recall(Task<any BlockDevice, any Error>)
    }

    /// The device a command goes to; for the primary the caller must call `done` after it.
    private func backing(write: Bool) async throws(BlockDeviceError) -> (device: any BlockDevice, onPrimary: Bool) {
        while true {
            let route = phase.withLock { p -> Route in
                switch p {
                case .archiving(let primary, let writes, let inFlight):
                    p = .archiving(primary: primary, writes: writes + (write ? 1 : 0), inFlight: inFlight + 1)
                    return .primary(primary)
                case .sealed:
                    return .wait
                case .archived:
                    let recall = self.recall.withLock { $0 }
                    let task = Task<any BlockDevice, any Error> {
                        guard let recall else { throw BlockDeviceError(.notReady, "archived LUN has no recall") }
                        return try await recall()
                    }
                    p = .recalling(task)
                    return .recall(task)
                case .recalling(let task):
                    return .recall(task)
                case .recalled(let device):
                    return .device(device)
                }
            }
            switch route {
            case .primary(let device): return (device, true)
            case .device(let device): return (device, false)
            case .wait:
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let stillSealed = phase.withLock { p -> Bool in
                        if case .sealed = p { return true }
                        return false
                    }
                    if stillSealed {
                        sealedWaiters.withLock { $0.append(continuation) }
                        // `archived` may have run between the check and the append.
                        let now = phase.withLock { p -> Bool in
                            if case .sealed = p { return true }
                            return false
                        }
                        if !now { resumeSealedWaiters() }
                    } else {
                        continuation.resume()
                    }
                }
            case .recall(let task):
                do {
                    let device = try await task.value
                    phase.withLock { p in
                        if case .recalling = p { p = .recalled(device) }
                    }
                    return (device, false)
                } catch {
                    // Back to archived: the next command tries again.
                    phase.withLock { p in
                        if case .recalling = p { p = .archived }
                    }
                    throw BlockDeviceError(.notReady, "recall of the archived LUN failed: \(error)")
                }
            }
        }
    }

    /// A command that went to the primary finished.
    private func done() {
        phase.withLock { p in
            switch p {
            case .archiving(let primary, let writes, let inFlight):
                p = .archiving(primary: primary, writes: writes, inFlight: inFlight - 1)
            case .sealed(let primary, let inFlight):
                p = .sealed(primary: primary, inFlight: inFlight - 1)
            default:
                break
            }
        }
    }

    // MARK: - BlockDevice

    public func read(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer {
        let (device, onPrimary) = try await backing(write: false)
        defer { if onPrimary { done() } }
        return try await device.read(offset: offset, length: length)
    }

    public func readIfReady(offset: UInt64, length: Int) -> ByteBuffer? {
        recalledDevice?.readIfReady(offset: offset, length: length)
    }

    public func readAsync(
        offset: UInt64, length: Int, completion: @escaping @Sendable (Result<ByteBuffer, BlockDeviceError>) -> Void
    ) -> Bool {
        recalledDevice?.readAsync(offset: offset, length: length, completion: completion) ?? false
    }

    public func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(BlockDeviceError) {
        let (device, onPrimary) = try await backing(write: true)
        defer { if onPrimary { done() } }
        try await device.write(offset: offset, data: data, fua: fua)
    }

    public func flush() async throws(BlockDeviceError) {
        // Nothing to make durable while archived: a flush does not recall.
        let target = phase.withLock { p -> (any BlockDevice)? in
            switch p {
            case .recalled(let device): return device
            case .archiving(let primary, _, _): return primary
            default: return nil
            }
        }
        if let target { try await target.flush() }
    }

    public func unmap(offset: UInt64, length: Int) async throws(BlockDeviceError) {
        let (device, onPrimary) = try await backing(write: true)
        defer { if onPrimary { done() } }
        try await device.unmap(offset: offset, length: length)
    }

    public func allocationStatus(offset: UInt64, length: Int) async throws(BlockDeviceError) -> [AllocationExtent] {
        // GET LBA STATUS does not recall an archived LUN: it reports everything mapped.
        guard let device = recalledDevice else {
            return [AllocationExtent(offset: offset, length: UInt64(length), status: .mapped)]
        }
        return try await device.allocationStatus(offset: offset, length: length)
    }

    public func sessionStarted() {
        recalledDevice?.sessionStarted()
    }

    /// Closes the recalled device (the daemon closes a primary it released itself).
    public func close() async {
        let device = phase.withLock { p -> (any BlockDevice)? in
            switch p {
            case .recalled(let device): return device
            case .archiving(let primary, _, _): return primary
            default: return nil
            }
        }
        await device?.close()
    }
}
