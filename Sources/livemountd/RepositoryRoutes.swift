import ControlPlane
import Foundation
import Prefetch
import Repository

// The control API's views of the repository, the trace store and the cache (issue 6, Control plane): what the
// `livemount backup` and `livemount trace` tools do on the files, here over HTTP for a remote operator.
//
//   GET /v1/backups[?vm=VM]            the backups, newest first
//   GET /v1/backups/ID                 one backup
//   DELETE /v1/backups/ID[?force=true] delete a backup (409 while held, unless forced)
//   GET /v1/traces[?profile=P]         trace summaries
//   GET /v1/traces/ID                  one trace's summary
//   GET /v1/traces/ID/csv              the trace as CSV (text/csv)
//   DELETE /v1/traces/ID               delete a trace
//   GET /v1/profiles/P/plan            the profile's prefetch plan
//   POST /v1/profiles/P/train          train it (TrainRequest) and answer the plan
//   GET /v1/cache                      the cache's counters
extension ControlRoutes {
    /// Answers the calls above; nil when `request` is none of them.
    func repositoryRoute(_ request: ControlRequest) async throws(ControlError) -> ControlResponse? {
        let path = request.pathSegments
        guard path.count >= 2, path[0] == "v1", ["backups", "traces", "profiles", "cache"].contains(path[1]) else {
            return nil
        }
        let runtime = try requireRuntime()
        switch (request.method, path.count, path[1]) {
        case ("GET", 2, "backups"):
            let backups = try repository { try runtime.repository.listBackups(vm: request.query["vm"]) }
            return .json(backups.map { view($0, runtime) })
        case ("GET", 3, "backups"):
            let id = try Self.identifier(path[2], "backup")
            return .json(view(try repository { try runtime.repository.backup(id: id) }, runtime))
        case ("DELETE", 3, "backups"):
            let id = try Self.identifier(path[2], "backup")
            let force = request.query["force"] == "true"
            try repository { try runtime.repository.delete(backupID: id, force: force) }
            logger.info("backup deleted", metadata: ["backup": "\(id)", "force": "\(force)"])
            return .json(["deleted": id])
        case ("GET", 2, "traces"):
            return .json(try traces { try runtime.traces.summaries(profile: request.query["profile"]) })
        case ("GET", 3, "traces"):
            let id = try Self.identifier(path[2], "trace")
            guard let summary = try traces({ try runtime.traces.summaries() }).first(where: { $0.info.id == id }) else {
                throw ControlError(status: 404, "no trace with id \(id)")
            }
            return .json(summary)
        case ("GET", 4, "traces") where path[3] == "csv":
            let id = try Self.identifier(path[2], "trace")
            guard let trace = try traces({ try runtime.traces.trace(id: id) }) else {
                throw ControlError(status: 404, "no trace with id \(id)")
            }
            return ControlResponse(status: 200, body: Array(TraceCSV.export(trace).utf8), contentType: "text/csv")
        case ("DELETE", 3, "traces"):
            let id = try Self.identifier(path[2], "trace")
            guard try traces({ try runtime.traces.delete(id: id) }) else {
                throw ControlError(status: 404, "no trace with id \(id)")
            }
            return .json(["deleted": id])
        case ("GET", 4, "profiles") where path[3] == "plan":
            guard let plan = try traces({ try runtime.traces.plan(profile: path[2]) }) else {
                throw ControlError(status: 404, "profile \(path[2]) has no plan (train it)")
            }
            return .json(plan)
        case ("POST", 4, "profiles") where path[3] == "train":
            return .json(try train(profile: path[2], try request.decode(TrainRequest.self), runtime.traces), status: 201)
        case ("GET", 2, "cache"):
            let s = runtime.cache.statistics
            return .json(
                StatusInfo.Cache(
                    hits: s.hits, misses: s.misses, fetches: s.fetches, bytesFetched: s.bytesFetched,
                    evictions: s.evictions, slotsUsed: s.slotsUsed, slotCount: s.slotCount))
        default:
            return nil
        }
    }

    private func train(profile: String, _ body: TrainRequest, _ store: TraceStore) throws(ControlError) -> PrefetchPlan {
        let minSupport = body.minSupport ?? 0.25
        guard (0...1).contains(minSupport) else { throw ControlError(status: 400, "minSupport: \(minSupport): expected 0...1") }
        if let granularity = body.granularity, granularity <= 0 {
            throw ControlError(status: 400, "granularity: \(granularity) must be positive")
        }
        var chosen: [Trace] = []
        if let ids = body.traces {
            for id in ids {
                guard let trace = try traces({ try store.trace(id: id) }) else {
                    throw ControlError(status: 404, "no trace with id \(id)")
                }
                guard trace.info.profile == profile else {
                    throw ControlError(status: 400, "trace \(id) belongs to profile \(trace.info.profile), not \(profile)")
                }
                chosen.append(trace)
            }
        } else {
            for summary in try traces({ try store.summaries(profile: profile) }) {
                if let trace = try traces({ try store.trace(id: summary.info.id) }) { chosen.append(trace) }
            }
        }
        guard !chosen.isEmpty else { throw ControlError(status: 404, "profile \(profile) has no traces to train from") }
        let sizes = Set(chosen.map(\.info.chunkSize))
        guard let granularity = body.granularity ?? (sizes.count == 1 ? sizes.first : nil) else {
            throw ControlError(status: 400, "the traces have different chunk sizes: give granularity")
        }
        let plan = PlanTrainer.train(
            chosen, profile: profile, granularity: granularity, minSupport: minSupport,
            now: Int64(Date().timeIntervalSince1970))
        try traces { try store.save(plan) }
        return plan
    }

    private func view(_ backup: BackupInfo, _ runtime: LiveMountRuntime) -> BackupView {
        BackupView(
            id: backup.id, vm: backup.vm, createdAt: backup.createdAt.formatted(.iso8601),
            configurationName: backup.configurationName,
            disks: backup.disks.map {
                BackupView.Disk(
                    name: $0.name, sizeBytes: $0.size, chunkSize: $0.chunkSize, chunks: $0.chunkCount,
                    zeroChunks: $0.zeroChunks, storedBytes: $0.storedBytes)
            },
            holds: (try? runtime.repository.holds(backupID: backup.id)) ?? [])
    }

    private static func identifier(_ text: String, _ what: String) throws(ControlError) -> Int64 {
        guard let id = Int64(text), id > 0 else { throw ControlError(status: 400, "\"\(text)\" is not a \(what) id") }
        return id
    }

    /// A repository call, its error mapped to a status (404 unknown, 409 held, 400 invalid, 500 otherwise).
    private func repository<T>(_ body: () throws -> T) throws(ControlError) -> T {
        do {
            return try body()
        } catch let error as RepositoryError {
            let status =
                switch error.code {
                case .notFound: 404
                case .held, .busy: 409
                case .invalidArgument: 400
                default: 500
                }
            throw ControlError(status: status, error.message)
        } catch {
            throw ControlError(status: 500, "\(error)")
        }
    }

    private func traces<T>(_ body: () throws -> T) throws(ControlError) -> T {
        do {
            return try body()
        } catch {
            throw ControlError(status: 500, "\(error)")
        }
    }
}
