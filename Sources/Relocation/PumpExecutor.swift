#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Where relocation pumps run (DESIGN.md invariant 4, foreground I/O first): a few threads of their own at a
/// lower scheduling priority (nice +10 relative to the daemon), so the pump's checksums, zero scans and buffer copies never run on the
/// event loops that serve the guests' connections and, when the CPU is short, give way to them.
///
/// A `TaskExecutor` (SE-0417): the pump's task and its child tasks prefer it, and continuations resumed from the
/// I/O thread come back here too.
public final class PumpExecutor: TaskExecutor, @unchecked Sendable {
    /// The pumps' executor: two threads (the copies themselves mostly wait on I/O).
    public static let shared = PumpExecutor(threads: 2, nice: 10)

    private struct Queue {
        var jobs: [UnownedJob] = []
        var head = 0
    }

    private let queue = Mutex(Queue())
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init(threads: Int, nice: Int32) {
        condition = .allocate(capacity: 1)
        mutex = .allocate(capacity: 1)
        pthread_cond_init(condition, nil)
        pthread_mutex_init(mutex, nil)
        for _ in 0..<max(1, threads) {
            let box = Unmanaged.passRetained(WorkerStart(executor: self, nice: nice))
            var thread = pthread_t()
            let created = pthread_create(&thread, nil, { argument in
                guard let argument else { return nil }
                let start = Unmanaged<WorkerStart>.fromOpaque(argument).takeRetainedValue()
                start.executor.work(nice: start.nice)
                return nil
            }, box.toOpaque())
            if created == 0 {
                pthread_detach(thread)
            } else {
                box.release()
            }
        }
    }

    private final class WorkerStart {
        let executor: PumpExecutor
        let nice: Int32
        init(executor: PumpExecutor, nice: Int32) {
            self.executor = executor
            self.nice = nice
        }
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        pthread_mutex_lock(mutex)
        queue.withLock { $0.jobs.append(unowned) }
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    private func work(nice: Int32) {
        // On Linux the nice value is per thread: setpriority(PRIO_PROCESS, 0) changes only the calling thread.
        // Relative to the process's (its main thread's) own, at most 19.
        let which = __priority_which_t(PRIO_PROCESS.rawValue)
        let base = getpriority(which, id_t(getpid()))
        _ = setpriority(which, 0, min(19, base + nice))
        let executor = asUnownedTaskExecutor()
        while true {
            pthread_mutex_lock(mutex)
            var job: UnownedJob?
            while true {
                job = queue.withLock { queue -> UnownedJob? in
                    guard queue.head < queue.jobs.count else { return nil }
                    defer {
                        queue.head += 1
                        if queue.head > 1024 && queue.head * 2 > queue.jobs.count {
                            queue.jobs.removeFirst(queue.head)
                            queue.head = 0
                        }
                    }
                    return queue.jobs[queue.head]
                }
                if job != nil { break }
                pthread_cond_wait(condition, mutex)
            }
            pthread_mutex_unlock(mutex)
            job?.runSynchronously(on: executor)
        }
    }
}
