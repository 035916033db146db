import CLibAIO
import Foundation
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - Operations

/// One caller-level request (a read, a write or a flush) split into segments,
/// each of which becomes one iocb.
///
/// The caller fills `segments` and sets either `continuation` or `completion`
/// before handing the operation to the engine; from then on only the engine's
/// I/O thread touches it, until it resumes the continuation or calls the
/// completion exactly once. The caller reads the segments again only after
/// that, which orders the accesses; hence `@unchecked Sendable`.
final class AIOOperation: @unchecked Sendable {
    /// What the iocbs do.
    enum Kind {
        case read
        case write
        case fdsync
    }

    /// One contiguous transfer of at most the engine's maximum I/O size.
    struct Segment {
        /// Aligned bounce buffer (nil for `fdsync`).
        var buffer: AlignedBuffer?
        /// Bytes to transfer.
        var length: Int
        /// File offset of the first byte.
        var offset: Int64
        /// The descriptor to use (the O_DIRECT one, or the buffered one for unaligned writes).
        var fd: Int32
        /// `aio_rw_flags` (`RWF_DSYNC` for FUA writes).
        var rwFlags: UInt32
        /// Bytes that must be transferred for success; a read widened for
        /// alignment past end of file may stop short of `length` but not of this.
        var required: Int
        /// Bytes transferred so far (partial completions are resubmitted).
        var done: Int = 0

        init(buffer: AlignedBuffer?, length: Int, offset: Int64, fd: Int32, rwFlags: UInt32 = 0, required: Int? = nil) {
            self.buffer = buffer
            self.length = length
            self.offset = offset
            self.fd = fd
            self.rwFlags = rwFlags
            self.required = required ?? length
        }
    }

    /// How the operation ended.
    enum Outcome: Sendable, Equatable {
        case success
        /// A segment failed with this errno (the first failure is kept).
        case failed(errno: Int32)
        /// A read hit end of file, or a write transferred nothing.
        case shortTransfer
        /// The engine is shutting down and did not accept the operation.
        case closed
    }

    let kind: Kind
    var segments: [Segment]
    var remaining: Int
    var outcome: Outcome = .success
    var continuation: UnsafeContinuation<Outcome, Never>?
    /// The alternative to `continuation`: called on the I/O thread when the
    /// last iocb completes (the callback read path, no task to resume).
    var completion: (@Sendable (Outcome) -> Void)?

    init(kind: Kind, segments: [Segment]) {
        self.kind = kind
        self.segments = segments
        self.remaining = segments.count
    }

    /// Records a failure, keeping the first one.
    func record(_ failure: Outcome) {
        if outcome == .success { outcome = failure }
    }
}

// MARK: - Engine

/// One Linux AIO context with its own I/O thread, modelled on tgt's
/// `usr/bs_aio.c`.
///
/// Callers enqueue operations on a mutex-protected submission queue and kick a
/// wake eventfd only when the I/O thread has announced (under the same lock)
/// that it is about to sleep, so a busy engine costs callers no system call. The I/O thread
/// drains the queue, submits every ready iocb with one `io_submit`, and sleeps
/// in `poll(2)` on the wake eventfd and the completion eventfd (each iocb is
/// tagged with `io_set_eventfd`). Completions are reaped with a non-blocking
/// `io_getevents` and resume the caller's continuation (or call its completion
/// closure, see `submit(_:completion:)`) directly from the I/O thread, so the
/// only thread hop per I/O is that one resume.
///
/// Mutable state other than `queue` is touched only by the I/O thread.
final class AIOEngine: @unchecked Sendable {
    /// Maximum iocbs in flight (the `io_setup` depth).
    let depth: Int

    private let context: io_context_t
    private let wakeFD: Int32
    private let completionFD: Int32

    /// State shared between callers and the I/O thread.
    private struct QueueState {
        var operations: [AIOOperation] = []
        var stopping = false
        /// The I/O thread found nothing to do and will sleep in poll: the next
        /// enqueue must write the wake eventfd.
        var sleeping = false
        var exited = false
        var exitWaiters: [CheckedContinuation<Void, Never>] = []
    }
    private let queue = Mutex(QueueState())

    // I/O-thread state.
    private let iocbs: UnsafeMutablePointer<iocb>
    private let submitList: UnsafeMutablePointer<UnsafeMutablePointer<iocb>?>
    private let events: UnsafeMutablePointer<io_event>
    private var slotUnits: [(operation: AIOOperation, segment: Int)?]
    private var freeSlots: [Int]
    private var pending = CircularBuffer<(operation: AIOOperation, segment: Int)>(initialCapacity: 64)
    private var inFlight = 0
    /// The kernel refused a batch with EAGAIN: wait for a completion before retrying.
    private var submitBlocked = false
    private var spareOperations: [AIOOperation] = []

    /// Sets up the io context and eventfds and starts the I/O thread.
    /// - Throws: the errno of the failing setup call.
    init(depth: Int = 256, name: String) throws(AIOEngineSetupError) {
        self.depth = depth
        var ctx: io_context_t?
        let setup = io_setup(Int32(depth), &ctx)
        guard setup == 0, let ctx else { throw AIOEngineSetupError(call: "io_setup", errno: -setup) }
        let wake = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard wake >= 0 else {
            let code = errno
            io_destroy(ctx)
            throw AIOEngineSetupError(call: "eventfd", errno: code)
        }
        let completion = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard completion >= 0 else {
            let code = errno
            Glibc.close(wake)
            io_destroy(ctx)
            throw AIOEngineSetupError(call: "eventfd", errno: code)
        }
        self.context = ctx
        self.wakeFD = wake
        self.completionFD = completion
        self.iocbs = .allocate(capacity: depth)
        self.iocbs.initialize(repeating: iocb(), count: depth)
        self.submitList = .allocate(capacity: depth)
        self.submitList.initialize(repeating: nil, count: depth)
        self.events = .allocate(capacity: depth)
        self.events.initialize(repeating: io_event(), count: depth)
        self.slotUnits = Array(repeating: nil, count: depth)
        self.freeSlots = Array((0..<depth).reversed())

        let thread = Thread { [self] in self.run() }
        thread.name = name
        thread.start()
    }

    deinit {
        iocbs.deallocate()
        submitList.deallocate()
        events.deallocate()
    }

    // MARK: Caller side

    /// Hands an operation (with its continuation set) to the I/O thread.
    /// Returns false when the engine is stopping; the caller then resumes the
    /// continuation itself.
    func enqueue(_ operation: AIOOperation) -> Bool {
        let (accepted, mustWake) = queue.withLock { state -> (Bool, Bool) in
            guard !state.stopping else { return (false, false) }
            state.operations.append(operation)
            defer { state.sleeping = false }
            return (true, state.sleeping)
        }
        if mustWake { wake() }
        return accepted
    }

    /// Runs `operation` and returns how it ended.
    func perform(_ operation: AIOOperation) async -> AIOOperation.Outcome {
        if operation.segments.isEmpty { return .success }
        return await withUnsafeContinuation { continuation in
            operation.continuation = continuation
            if !enqueue(operation) {
                operation.continuation = nil
                continuation.resume(returning: .closed)
            }
        }
    }

    /// Runs `operation` and calls `completion` with how it ended: on the I/O
    /// thread when the last iocb completes, or at once on the caller's thread
    /// when there is nothing to do or the engine is stopping (`.closed`).
    /// `completion` must be quick and must not block: it delays every other
    /// completion of this engine.
    func submit(_ operation: AIOOperation, completion: @escaping @Sendable (AIOOperation.Outcome) -> Void) {
        if operation.segments.isEmpty {
            completion(.success)
            return
        }
        operation.completion = completion
        if !enqueue(operation) {
            operation.completion = nil
            completion(.closed)
        }
    }

    /// Refuses new operations, waits for every accepted one to complete, stops
    /// the I/O thread and releases the io context and eventfds.
    func shutdown() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let alreadyExited = queue.withLock { state -> Bool in
                state.stopping = true
                if state.exited { return true }
                state.exitWaiters.append(continuation)
                return false
            }
            if alreadyExited {
                continuation.resume()
            } else {
                wake()
            }
        }
    }

    /// Asks the I/O thread to exit once idle without waiting for it (for
    /// `deinit` of an owner that was never closed; nothing can be in flight then).
    func requestStop() {
        queue.withLock { $0.stopping = true }
        wake()
    }

    private func wake() {
        var one: UInt64 = 1
        _ = LinuxSystem.retryingOnEINTR { Glibc.write(wakeFD, &one, 8) }
    }

    // MARK: I/O thread

    private func run() {
        var fds = [
            pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0),
            pollfd(fd: completionFD, events: Int16(POLLIN), revents: 0),
        ]
        while true {
            var stopping = false
            var idle = false
            queue.withLock { state in
                swap(&state.operations, &spareOperations)
                stopping = state.stopping
                // Nothing new and nothing submittable: announce the sleep while
                // holding the lock, so that the next enqueue wakes us.
                idle = spareOperations.isEmpty && (pending.isEmpty || freeSlots.isEmpty || submitBlocked)
                state.sleeping = idle
            }
            for operation in spareOperations {
                for index in operation.segments.indices { pending.append((operation, index)) }
            }
            spareOperations.removeAll(keepingCapacity: true)
            if !pending.isEmpty && !freeSlots.isEmpty && !submitBlocked { submitPending() }
            if stopping && pending.isEmpty && inFlight == 0 { break }
            if !idle {
                // More may have arrived while submitting; reap what is done
                // (a user-space ring check when nothing is) and look again.
                reapCompletions()
                continue
            }

            fds[0].revents = 0
            fds[1].revents = 0
            let ready = LinuxSystem.retryingOnEINTR { poll(&fds, 2, -1) }
            guard ready > 0 else { continue }
            var counter: UInt64 = 0
            if fds[0].revents & Int16(POLLIN) != 0 {
                _ = Glibc.read(wakeFD, &counter, 8)
            }
            if fds[1].revents & Int16(POLLIN) != 0 {
                _ = Glibc.read(completionFD, &counter, 8)
                reapCompletions()
            }
        }
        io_destroy(context)
        Glibc.close(wakeFD)
        Glibc.close(completionFD)
        let waiters = queue.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.exited = true
            defer { state.exitWaiters.removeAll() }
            return state.exitWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Prepares as many pending segments as there are free slots and submits
    /// them with one `io_submit` (more only when the kernel takes a partial batch).
    private func submitPending() {
        var count = 0
        while count < depth, !pending.isEmpty, let slot = freeSlots.popLast() {
            let unit = pending.removeFirst()
            prepare(iocbs + slot, for: unit)
            slotUnits[slot] = unit
            submitList[count] = iocbs + slot
            count += 1
        }
        var start = 0
        while start < count {
            let submitted = Int(io_submit(context, count - start, submitList + start))
            if submitted > 0 {
                inFlight += submitted
                start += submitted
            } else if submitted == -Int(EINTR) {
                continue
            } else if submitted == -Int(EAGAIN) || submitted == 0 {
                // The kernel is out of resources: put the rest back, in order,
                // and retry after the next completion.
                submitBlocked = inFlight > 0
                for index in (start..<count).reversed() {
                    let slot = slotIndex(of: submitList[index])
                    if let unit = slotUnits[slot] { pending.prepend(unit) }
                    slotUnits[slot] = nil
                    freeSlots.append(slot)
                }
                return
            } else {
                // The first iocb of the remainder was rejected; fail it alone.
                let slot = slotIndex(of: submitList[start])
                inFlight += 1
                complete(slot: slot, result: submitted)
                start += 1
            }
        }
    }

    private func slotIndex(of pointer: UnsafeMutablePointer<iocb>?) -> Int {
        guard let pointer else { return 0 }
        return pointer - iocbs
    }

    /// Fills one iocb for the unfinished part of a segment.
    private func prepare(_ control: UnsafeMutablePointer<iocb>, for unit: (operation: AIOOperation, segment: Int)) {
        let segment = unit.operation.segments[unit.segment]
        switch unit.operation.kind {
        case .fdsync:
            io_prep_fdsync(control, segment.fd)
        case .read, .write:
            let address = segment.buffer.map { $0.address + segment.done }
            let count = segment.length - segment.done
            let offset = segment.offset + Int64(segment.done)
            if unit.operation.kind == .read {
                io_prep_pread(control, segment.fd, address, count, offset)
            } else {
                io_prep_pwrite(control, segment.fd, address, count, offset)
                control.pointee.aio_rw_flags = segment.rwFlags
            }
        }
        io_set_eventfd(control, completionFD)
    }

    /// Reaps every available completion without blocking.
    private func reapCompletions() {
        var zero = timespec(tv_sec: 0, tv_nsec: 0)
        while inFlight > 0 {
            let count = Int(io_getevents(context, 0, depth, events, &zero))
            if count == -Int(EINTR) { continue }
            guard count > 0 else { return }
            for index in 0..<count {
                let event = events[index]
                complete(slot: slotIndex(of: event.obj), result: Int(bitPattern: event.res))
            }
            if count < depth { return }
        }
    }

    /// Accounts one finished iocb: `result` is bytes transferred or -errno.
    private func complete(slot: Int, result: Int) {
        guard let unit = slotUnits[slot] else { return }
        slotUnits[slot] = nil
        freeSlots.append(slot)
        inFlight -= 1
        submitBlocked = false
        let operation = unit.operation
        if result < 0 {
            operation.record(.failed(errno: Int32(truncatingIfNeeded: -result)))
        } else if operation.kind != .fdsync {
            operation.segments[unit.segment].done += result
            let segment = operation.segments[unit.segment]
            if segment.done < segment.length {
                if segment.done >= segment.required {
                    // End of file inside the alignment padding: enough was read.
                } else if result == 0 {
                    operation.record(.shortTransfer)
                } else {
                    // A partial transfer: submit the rest of this segment again.
                    pending.append(unit)
                    return
                }
            }
        }
        operation.remaining -= 1
        guard operation.remaining == 0 else { return }
        if let continuation = operation.continuation {
            operation.continuation = nil
            continuation.resume(returning: operation.outcome)
        } else if let completion = operation.completion {
            operation.completion = nil
            completion(operation.outcome)
        }
    }
}

/// A failure to set up an `AIOEngine`.
struct AIOEngineSetupError: Error {
    var call: String
    var errno: Int32
}
