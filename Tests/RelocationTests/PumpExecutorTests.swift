#if canImport(Glibc)
import Glibc
#endif
import Relocation
import Testing

/// The pumps' executor: their tasks, child tasks and resumed continuations run on its own threads, at nice +10,
/// never on the caller's (DESIGN.md invariant 4).
@Suite("Pump executor")
struct PumpExecutorTests {
    static func niceValue() -> Int32 {
        errno = 0
        return getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0)
    }

    @Test("a task preferring it, its child tasks and its resumed continuations run at nice +10")
    func lowerPriority() async throws {
        let outside = Self.niceValue()
        let values = await Task(executorPreference: PumpExecutor.shared) { () -> [Int32] in
            var values = [Self.niceValue()]
            await withTaskGroup(of: Int32.self) { group in
                for _ in 0..<8 { group.addTask { Self.niceValue() } }
                for await value in group { values.append(value) }
            }
            // After a suspension resumed from another thread.
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                var thread = pthread_t()
                let box = Unmanaged.passRetained(Box(continuation))
                _ = pthread_create(&thread, nil, { argument in
                    guard let argument else { return nil }
                    Unmanaged<Box>.fromOpaque(argument).takeRetainedValue().continuation.resume()
                    return nil
                }, box.toOpaque())
                pthread_detach(thread)
            }
            values.append(Self.niceValue())
            return values
        }.value
        #expect(values.count == 10)
        #expect(values.allSatisfy { $0 == min(19, outside + 10) }, "nice values \(values), outside \(outside)")
        #expect(Self.niceValue() == outside, "the caller's thread keeps its priority")
    }

    final class Box: @unchecked Sendable {
        let continuation: CheckedContinuation<Void, Never>
        init(_ continuation: CheckedContinuation<Void, Never>) { self.continuation = continuation }
    }
}
