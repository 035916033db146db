import Dispatch
import Foundation
import Logging
import Prefetch
import Synchronization

/// What listens to one live mount's reads: the trace recorder and the prefetcher (issue 4).
///
/// `LiveMountDevice` asks `begin` when a read arrives and calls `end` when it completes. With nobody listening
/// (no recording, no plan) `begin` is one atomic load and returns nil, so a warm read pays nothing more.
public final class MountActivity: Sendable {
    /// Recording of the first seconds of every boot, set per mount.
    public struct AutoRecord: Sendable {
        public var store: TraceStore
        /// Profile, VM, backup and disk, block and chunk size of the traces it makes.
        public var template: TraceInfo
        public var seconds: Int

        public init(store: TraceStore, template: TraceInfo, seconds: Int) {
            self.store = store
            self.template = template
            self.seconds = seconds
        }
    }

    /// A read in flight.
    public struct Ticket: Sendable {
        let issued: UInt64
        let offset: UInt64
        let length: Int
        let prefetched: Bool
    }

    private let listening = Atomic<Bool>(false)
    private let state = Mutex(State())
    private let blockSize: Int
    private let logger: Logger

    private struct State {
        var recorder: TraceRecorder?
        var recorderLimit: Int?
        var prefetcher: Prefetcher?
        var autoRecord: AutoRecord?
    }

    init(blockSize: Int, logger: Logger) {
        self.blockSize = blockSize
        self.logger = logger
    }

    // MARK: - Reads

    /// Whether a recorder or a prefetcher listens.
    var isListening: Bool { listening.load(ordering: .relaxed) }

    /// A read arrives: the prefetcher sees it (and moves its window) and the time is taken for the trace.
    /// Nil when nobody listens.
    func begin(offset: UInt64, length: Int, issued: UInt64? = nil) -> Ticket? {
        guard listening.load(ordering: .relaxed) else { return nil }
        let start = issued ?? now()
        let (prefetcher, recording) = state.withLock { ($0.prefetcher, $0.recorder != nil) }
        let prefetched = prefetcher?.guestRead(offset: offset, length: length) ?? false
        guard recording else { return nil }
        return Ticket(issued: start, offset: offset, length: length, prefetched: prefetched)
    }

    /// The clock traces use (monotonic nanoseconds).
    func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// Whether a recording is running (reads then work out where they are served from).
    var isRecording: Bool { state.withLock { $0.recorder.map { !$0.isStopped } ?? false } }

    /// The read completed, served from `source`.
    func end(_ ticket: Ticket, source: ReadSource) {
        let completed = DispatchTime.now().uptimeNanoseconds
        guard let recorder = state.withLock({ $0.recorder }) else { return }
        recorder.record(
            issued: ticket.issued, completed: completed, lba: ticket.offset / UInt64(blockSize),
            blocks: UInt32(clamping: ticket.length / blockSize), source: source, prefetched: ticket.prefetched)
    }

    // MARK: - Recording

    /// A session logged in: with auto-recording on and no recording running, a new boot's trace starts.
    func sessionStarted() {
        state.withLock { state in
            guard let auto = state.autoRecord else { return }
            if let recorder = state.recorder, !recorder.isStopped { return }
            var info = auto.template
            info.recordedAt = Self.unixNow()
            info.note = "boot, first \(auto.seconds) s"
            state.recorder = TraceRecorder(store: auto.store, info: info, limitSeconds: auto.seconds, logger: logger)
            state.recorderLimit = auto.seconds
        }
        updateListening()
    }

    /// Records every boot's first `seconds` (nil: stop doing so).
    public func setAutoRecord(_ auto: AutoRecord?) {
        state.withLock { $0.autoRecord = auto }
    }

    /// Starts recording now (for `seconds`, or until stopped). False if a recording is already running.
    public func startRecording(store: TraceStore, info: TraceInfo, seconds: Int?) -> Bool {
        let started = state.withLock { state -> Bool in
            if let recorder = state.recorder, !recorder.isStopped { return false }
            var info = info
            info.recordedAt = Self.unixNow()
            state.recorder = TraceRecorder(store: store, info: info, limitSeconds: seconds, logger: logger)
            state.recorderLimit = seconds
            return true
        }
        updateListening()
        return started
    }

    /// Stops the running recording (if any) and returns its trace id once everything is written.
    public func stopRecording() async -> Int64? {
        guard let recorder = state.withLock({ $0.recorder }) else { return nil }
        let id = await recorder.stop()
        state.withLock { state in
            if state.recorder === recorder { state.recorder = nil }
        }
        updateListening()
        return id
    }

    /// The recording in progress, if any.
    public var recording: RecordingStatus? {
        state.withLock { state in
            guard let recorder = state.recorder, !recorder.isStopped else { return nil }
            return RecordingStatus(
                trace: recorder.id, profile: recorder.info.profile, reads: recorder.count, limitSeconds: state.recorderLimit)
        }
    }

    // MARK: - Prefetch

    /// Attaches the mount's prefetcher.
    public func attach(_ prefetcher: Prefetcher) {
        state.withLock { $0.prefetcher = prefetcher }
        updateListening()
    }

    /// The mount's prefetcher, if it has a plan.
    public var prefetcher: Prefetcher? { state.withLock { $0.prefetcher } }

    /// Stops everything (unmount): the recording is written, the prefetcher's pins released.
    func close() async {
        _ = await stopRecording()
        state.withLock { $0.autoRecord = nil }
        prefetcher?.close()
    }

    private func updateListening() {
        let active = state.withLock { state in
            state.prefetcher != nil || (state.recorder.map { !$0.isStopped } ?? false)
        }
        listening.store(active, ordering: .relaxed)
    }

    private static func unixNow() -> Int64 { Int64(Date().timeIntervalSince1970) }
}
