import BlockDevice
import ControlPlane
import LiveMount
import LiveMountConfig
import SCSI
import TargetServer

// MARK: - Control API: targets, raw LUNs, ACLs and CHAP

/// The target calls (listed in `ControlPlane/TargetAPI.swift`, documented in docs/api.md#targets-acls-chap-and-raw-luns). A change
/// applies to logins and SendTargets from the moment it is answered; sessions already logged in go on
/// undisturbed (only a forced removal of a target ends its sessions). Every change runs alone
/// (`TargetControl.changes`) and is kept in `control.sqlite` before it is answered.
extension ControlRoutes {
    /// One changing call, parsed from the method and path before anything is looked up.
    private enum Change {
        case createTarget
        case removeTarget(String)
        case setACL(String)
        case allow(String)
        case disallow(String, initiator: String)
        case setCHAP(String)
        case clearCHAP(String)
        case addLUN(String)
        case removeLUN(String, lun: String)

        init?(method: String, path: [String]) {
            switch (method, path.count, path.count > 3 ? path[3] : "") {
            case ("POST", 2, _): self = .createTarget
            case ("DELETE", 3, _): self = .removeTarget(path[2])
            case ("PUT", 4, "acl"): self = .setACL(path[2])
            case ("POST", 4, "acl"): self = .allow(path[2])
            case ("DELETE", 5, "acl"): self = .disallow(path[2], initiator: path[4])
            case ("PUT", 4, "chap"): self = .setCHAP(path[2])
            case ("DELETE", 4, "chap"): self = .clearCHAP(path[2])
            case ("POST", 4, "luns"): self = .addLUN(path[2])
            case ("DELETE", 5, "luns"): self = .removeLUN(path[2], lun: path[4])
            default: return nil
            }
        }
    }

    /// Answers `/v1/targets...`; nil for any other path.
    func targetRoute(_ request: ControlRequest) async throws(ControlError) -> ControlResponse? {
        let path = request.pathSegments
        guard path.count >= 2, path[0] == "v1", path[1] == "targets" else { return nil }
        switch (request.method, path.count) {
        case ("GET", 2): return .json(server.targetNames.map { targetInfo($0) })
        case ("GET", 3):
            _ = try served(path[2])
            return .json(targetInfo(path[2]))
        default: break
        }
        guard let change = Change(method: request.method, path: path) else {
            throw ControlError(
                status: 404, "no such call: \(request.method) /\(request.pathSegments.joined(separator: "/"))")
        }
        return try await targetControl.changes.run { () async throws(ControlError) -> ControlResponse in
            try await apply(change, request)
        }
    }

    private func apply(_ change: Change, _ request: ControlRequest) async throws(ControlError) -> ControlResponse {
        guard let store = targetControl.store else {
            throw ControlError(
                status: 409,
                "changing targets, LUNs, ACLs or CHAP needs a state directory, where the change is kept across "
                    + "restarts: set [daemon] state_dir (or --state-dir)")
        }
        switch change {
        case .createTarget:
            return .json(
                try await createTarget(try request.decode(TargetCreateRequest.self), store: store), status: 201)
        case .removeTarget(let name):
            let force: Bool
            switch request.query["force"] {
            case nil, "false", "0": force = false
            case "", "true", "1": force = true
            case let other?: throw ControlError(status: 400, "force=\(other): expected true or false")
            }
            return .json(try await removeTarget(name, force: force, store: store))
        case .setACL(let name):
            let body = try request.decode(ACLRequest.self)
            try Self.checkInitiators(body.allowedInitiators, field: "allowedInitiators")
            return .json(try changeACL(name, store: store) { _ throws(ControlError) in body.allowedInitiators })
        case .allow(let name):
            let initiator = try request.decode(ACLEntryRequest.self).initiator
            if let problem = ControlChecks.iscsiNameProblem(initiator, field: "initiator") {
                throw ControlError(status: 400, problem)
            }
            return .json(
                try changeACL(name, store: store) { acl throws(ControlError) in
                    guard !acl.contains(where: { $0.lowercased() == initiator.lowercased() }) else {
                        throw ControlError(status: 409, "\(initiator) is already allowed to log in to \(name)")
                    }
                    return acl + [initiator]
                })
        case .disallow(let name, let initiator):
            return .json(
                try changeACL(name, store: store) { acl throws(ControlError) in
                    guard let index = acl.firstIndex(where: { $0.lowercased() == initiator.lowercased() }) else {
                        throw ControlError(status: 404, "\(initiator) is not in the ACL of \(name)")
                    }
                    // An empty ACL lets any initiator in: removing the last entry would open the target.
                    guard acl.count > 1 else {
                        throw ControlError(
                            status: 409,
                            "\(initiator) is the only initiator allowed to log in to \(name); without it any "
                                + "initiator could: set the ACL instead (PUT /v1/targets/\(name)/acl, "
                                + "livemount target acl set \(name) --any)")
                    }
                    var changed = acl
                    changed.remove(at: index)
                    return changed
                })
        case .setCHAP(let name):
            let setting = try Self.chapSetting(try request.decode(CHAPRequest.self))
            return .json(try changeCHAP(name, to: setting, store: store))
        case .clearCHAP(let name):
            return .json(try changeCHAP(name, to: ControlStore.CHAPSetting(), store: store))
        case .addLUN(let name):
            return .json(try await addLUN(name, try request.decode(LUNCreateRequest.self), store: store), status: 201)
        case .removeLUN(let name, let text):
            guard let lun = UInt64(text) else { throw ControlError(status: 400, "\"\(text)\" is not a LUN") }
            return .json(try await removeLUN(name, lun: lun, store: store))
        }
    }

    // MARK: - Targets

    private func createTarget(_ body: TargetCreateRequest, store: ControlStore) async throws(ControlError)
        -> TargetInfo
    {
        var problems: [String] = []
        if let problem = ControlChecks.iscsiNameProblem(body.name, field: "name") { problems.append(problem) }
        if let alias = body.alias, let problem = ControlChecks.aliasProblem(alias, field: "alias") {
            problems.append(problem)
        }
        let chap = body.chap.map { CHAPCredentials(user: $0.user, secret: $0.secret) }
        let mutual = body.mutualChap.map { CHAPCredentials(user: $0.user, secret: $0.secret) }
        if let chap { problems += ControlChecks.chapProblems(chap, userField: "chap.user", secretField: "chap.secret") }
        if let mutual {
            problems += ControlChecks.chapProblems(
                mutual, userField: "mutualChap.user", secretField: "mutualChap.secret")
        }
        if let problem = ControlChecks.mutualCHAPProblem(chap: chap, mutual: mutual, field: "mutualChap") {
            problems.append(problem)
        }
        guard problems.isEmpty else { throw ControlError(status: 400, problems.joined(separator: "; ")) }
        let allowed = body.allowedInitiators ?? []
        try Self.checkInitiators(allowed, field: "allowedInitiators")
        let policy = LoginPolicy(alias: body.alias, chap: chap, mutualChap: mutual, allowedInitiators: allowed)
        do {
            try server.addTarget(TargetConfiguration(name: body.name, logicalUnits: []).with(policy))
        } catch {
            throw Self.controlError(error)
        }
        do {
            try store.save(
                ControlStore.TargetRecord(
                    name: body.name, createdByAPI: true, alias: body.alias, allowedInitiators: allowed,
                    chap: ControlStore.CHAPSetting(chap: chap, mutualChap: mutual)))
        } catch {
            // Not kept, so not served: it would be gone after the next restart.
            _ = try? await server.removeTarget(name: body.name, force: true)
            throw ControlError(status: 500, "target \(body.name) not added: \(error)")
        }
        logger.info("target added through the control API", metadata: ["target": "\(body.name)"])
        return targetInfo(body.name)
    }

    private func removeTarget(_ name: String, force: Bool, store: ControlStore) async throws(ControlError)
        -> TargetInfo
    {
        let policy = try policy(of: name)
        guard !targetControl.configurationTargets.contains(name) else {
            throw ControlError(
                status: 409, "target \(name) comes from the configuration file: remove it there and restart")
        }
        var info = targetInfo(name)
        do {
            info.sessions = try await server.removeTarget(name: name, force: force)
        } catch {
            throw Self.controlError(error)
        }
        do {
            try store.deleteTarget(named: name)
        } catch {
            // Still kept, so served again: the next restart would bring it back anyway.
            try? server.addTarget(TargetConfiguration(name: name, logicalUnits: []).with(policy))
            throw ControlError(status: 500, "target \(name) not removed: \(error)")
        }
        logger.info(
            "target removed through the control API", metadata: ["target": "\(name)", "sessions": "\(info.sessions)"])
        return info
    }

    // MARK: - ACL and CHAP

    /// Replaces the ACL of `name` with what `change` makes of it, keeps it, and answers the target.
    private func changeACL(
        _ name: String, store: ControlStore, _ change: ([String]) throws(ControlError) -> [String]
    ) throws(ControlError) -> TargetInfo {
        let old = try policy(of: name)
        var new = old
        new.allowedInitiators = try change(old.allowedInitiators)
        try changePolicy(name, from: old, to: new, store: store) { $0.allowedInitiators = new.allowedInitiators }
        logger.info(
            "ACL changed",
            metadata: ["target": "\(name)", "allowed": "\(new.allowedInitiators.joined(separator: ", "))"])
        return targetInfo(name)
    }

    private func changeCHAP(_ name: String, to setting: ControlStore.CHAPSetting, store: ControlStore)
        throws(ControlError) -> TargetInfo
    {
        let old = try policy(of: name)
        var new = old
        new.chap = setting.chap
        new.mutualChap = setting.mutualChap
        try changePolicy(name, from: old, to: new, store: store) { $0.chap = setting }
        logger.info(
            "CHAP changed",
            metadata: [
                "target": "\(name)", "chap": "\(setting.chap?.user ?? "none")",
                "mutual": "\(setting.mutualChap?.user ?? "none")",
            ])
        return targetInfo(name)
    }

    /// Serves `new` as the login policy of `name` and keeps the change (`edit` applied to its row); back to
    /// `old` when it cannot be kept.
    private func changePolicy(
        _ name: String, from old: LoginPolicy, to new: LoginPolicy, store: ControlStore,
        edit: (inout ControlStore.TargetRecord) -> Void
    ) throws(ControlError) {
        do {
            try server.updateLoginPolicy(target: name) { $0 = new }
        } catch {
            throw Self.controlError(error)
        }
        do {
            var record =
                try store.target(named: name)
                ?? ControlStore.TargetRecord(
                    name: name, createdByAPI: !targetControl.configurationTargets.contains(name), alias: new.alias,
                    allowedInitiators: nil, chap: nil)
            edit(&record)
            try store.save(record)
        } catch {
            _ = try? server.updateLoginPolicy(target: name) { $0 = old }
            throw ControlError(status: 500, "target \(name) unchanged: \(error)")
        }
    }

    /// One-way and mutual CHAP from a `PUT .../chap` body, checked as the configuration file checks them.
    private static func chapSetting(_ body: CHAPRequest) throws(ControlError) -> ControlStore.CHAPSetting {
        let chap = CHAPCredentials(user: body.user, secret: body.secret)
        var problems = ControlChecks.chapProblems(chap, userField: "user", secretField: "secret")
        var mutual: CHAPCredentials?
        switch (body.mutualUser, body.mutualSecret) {
        case (let user?, let secret?):
            let credentials = CHAPCredentials(user: user, secret: secret)
            problems += ControlChecks.chapProblems(credentials, userField: "mutualUser", secretField: "mutualSecret")
            if let problem = ControlChecks.mutualCHAPProblem(chap: chap, mutual: credentials, field: "mutualSecret") {
                problems.append(problem)
            }
            mutual = credentials
        case (nil, nil): break
        case (nil, _?): problems.append("mutualUser: required with mutualSecret")
        case (_?, nil): problems.append("mutualSecret: required with mutualUser")
        }
        guard problems.isEmpty else { throw ControlError(status: 400, problems.joined(separator: "; ")) }
        return ControlStore.CHAPSetting(chap: chap, mutualChap: mutual)
    }

    /// Checks an ACL: iSCSI names (RFC 7143 §4.2.7), each listed once.
    private static func checkInitiators(_ names: [String], field: String) throws(ControlError) {
        var seen: Set<String> = []
        for (index, name) in names.enumerated() {
            if let problem = ControlChecks.iscsiNameProblem(name, field: "\(field)[\(index)]") {
                throw ControlError(status: 400, problem)
            }
            guard seen.insert(name.lowercased()).inserted else {
                throw ControlError(status: 400, "\(field)[\(index)]: \"\(name)\" is listed twice")
            }
        }
    }

    // MARK: - Raw LUNs

    private func addLUN(_ name: String, _ body: LUNCreateRequest, store: ControlStore) async throws(ControlError)
        -> LUNInfo
    {
        let scsi = try served(name)
        let blockSize = body.blockSize ?? 512
        guard ControlChecks.blockSizes.contains(blockSize) else {
            throw ControlError(status: 400, "blockSize: \(blockSize) is not a supported block size (512 or 4096)")
        }
        let readOnly = body.readOnly ?? false
        let direct = body.direct ?? true
        let used = Set(scsi.luns)
        let lun: UInt64
        if let requested = body.lun {
            guard ControlChecks.lunRange.contains(requested) else {
                throw ControlError(status: 400, "lun: \(requested) out of range (0-16383, SAM-5 §4.7.7)")
            }
            guard !used.contains(requested) else {
                throw ControlError(status: 409, "LUN \(requested) of target \(name) is in use")
            }
            lun = requested
        } else {
            guard let free = ControlChecks.lunRange.lazy.first(where: { !used.contains($0) }) else {
                throw ControlError(status: 409, "target \(name) has no free LUN")
            }
            lun = free
        }
        if let problem = ControlChecks.backingStoreProblem(
            path: body.path, readOnly: readOnly, direct: direct, blockSize: blockSize, field: "path")
        {
            throw ControlError(status: 400, problem)
        }
        if let (other, otherLUN, otherReadOnly) = servedBackingStore(body.path), !(readOnly && otherReadOnly) {
            throw ControlError(
                status: 409,
                "path: \(body.path) is served by LUN \(otherLUN) of \(other); a backing store shared by several "
                    + "LUNs must be read-only in all")
        }
        let record = ControlStore.LUNRecord(
            target: name, lun: lun, path: body.path, readOnly: readOnly, blockSize: blockSize, direct: direct)
        let device: any BlockDevice
        do {
            device = try openDevice(path: body.path, readOnly: readOnly, direct: direct, blockSize: blockSize)
        } catch {
            throw ControlError(status: 400, "path: cannot open \(body.path): \(error)")
        }
        do {
            try scsi.addLogicalUnit(TargetControl.unit(record, device: device))
        } catch {
            await device.close()
            throw ControlError(status: 409, "cannot add LUN \(lun) to \(name): \(error)")
        }
        do {
            try store.save(record)
        } catch {
            scsi.removeLogicalUnit(lun: lun)
            await device.close()
            throw ControlError(status: 500, "LUN \(lun) not added to \(name): \(error)")
        }
        logger.info("LUN added", metadata: ["target": "\(name)", "lun": "\(lun)", "path": "\(body.path)"])
        guard let info = lunInfo(target: name, lun: lun, scsi: scsi, context: lunContext()) else {
            throw ControlError(status: 409, "LUN \(lun) of \(name) was removed as it was added")
        }
        return info
    }

    private func removeLUN(_ name: String, lun: UInt64, store: ControlStore) async throws(ControlError) -> LUNInfo {
        let scsi = try served(name)
        let record: ControlStore.LUNRecord?
        do {
            record = try store.lun(target: name, lun: lun)
        } catch {
            throw ControlError(status: 500, "\(error)")
        }
        let context = lunContext()
        guard let device = scsi.device(lun: lun),
            let info = lunInfo(target: name, lun: lun, scsi: scsi, context: context)
        else {
            guard let record else { throw ControlError(status: 404, "no LUN \(lun) on target \(name)") }
            // Kept, but not served: its file was missing when the daemon started. Forget it.
            try forget(record, store: store)
            return LUNInfo(
                lun: lun, kind: "image", origin: "api", path: record.path, sizeBytes: 0, blockSize: record.blockSize,
                readOnly: record.readOnly)
        }
        guard info.kind != "archived" else {
            throw ControlError(
                status: 409,
                "LUN \(lun) of \(name) is archived (its data is in the repository only): recall it first "
                    + "(livemount archive recall \(name) \(lun)) and remove it once it is back on its image")
        }
        guard info.kind != "backup" else {
            throw ControlError(
                status: 409,
                "LUN \(lun) of \(name) is a live mount: use unmount (livemount unmount --target \(name) --lun \(lun))")
        }
        guard let record else {
            throw ControlError(
                status: 409, "LUN \(lun) of \(name) comes from the configuration file: remove it there and restart")
        }
        try forget(record, store: store)
        scsi.removeLogicalUnit(lun: lun)
        try? await device.flush()
        await device.close()
        logger.info("LUN removed", metadata: ["target": "\(name)", "lun": "\(lun)", "path": "\(record.path)"])
        return info
    }

    private func forget(_ record: ControlStore.LUNRecord, store: ControlStore) throws(ControlError) {
        do {
            try store.deleteLUN(target: record.target, lun: record.lun)
        } catch {
            throw ControlError(status: 500, "LUN \(record.lun) of \(record.target) not removed: \(error)")
        }
    }

    /// The served LUN whose backing store is the file or device at `path`: target, LUN, write-protected.
    private func servedBackingStore(_ path: String) -> (String, UInt64, Bool)? {
        for name in server.targetNames {
            guard let scsi = server.scsiTarget(named: name) else { continue }
            for lun in scsi.luns {
                guard let file = scsi.device(lun: lun) as? AIOFileDevice,
                    ControlChecks.sameBackingStore(file.path, path)
                else { continue }
                return (name, lun, scsi.isWriteProtected(lun: lun) ?? file.isReadOnly)
            }
        }
        return nil
    }

    // MARK: - What the calls answer

    /// What LUN answers need beyond the SCSI target: the live mounts and the raw LUNs the API added.
    private struct LUNContext {
        var mounts: [String: MountRecord]
        var apiLUNs: Set<String>
    }

    private func lunContext() -> LUNContext {
        var mounts: [String: MountRecord] = [:]
        for record in (try? runtime?.mounts.records()) ?? [] where record.state == .mounted {
            mounts["\(record.target)/\(record.lun)"] = record
        }
        let raw = (try? targetControl.store?.luns()) ?? []
        return LUNContext(mounts: mounts, apiLUNs: Set(raw.map { "\($0.target)/\($0.lun)" }))
    }

    /// Target `name` as the API shows it (an empty one when it is not served).
    func targetInfo(_ name: String) -> TargetInfo {
        let policy = server.loginPolicy(target: name) ?? LoginPolicy()
        let scsi = server.scsiTarget(named: name)
        let context = lunContext()
        let luns = (scsi?.luns ?? []).compactMap { lun in
            scsi.flatMap { lunInfo(target: name, lun: lun, scsi: $0, context: context) }
        }
        return TargetInfo(
            name: name, alias: policy.alias,
            origin: targetControl.configurationTargets.contains(name) ? "configuration" : "api", luns: luns,
            allowedInitiators: policy.allowedInitiators, chapUser: policy.chap?.user,
            mutualChapUser: policy.mutualChap?.user, sessions: server.sessionCount(target: name))
    }

    private func lunInfo(target: String, lun: UInt64, scsi: SCSITarget, context: LUNContext) -> LUNInfo? {
        guard let device = scsi.device(lun: lun) else { return nil }
        let key = "\(target)/\(lun)"
        let kind: String
        var path: String?
        var origin = context.apiLUNs.contains(key) ? "api" : "configuration"
        if let mount = context.mounts[key], mount.origin != .recall {
            kind = "backup"
            origin = mount.origin.rawValue
        } else if device is PlaceholderDevice {
            kind = "archived"
        } else if device is LiveMountDevice {
            kind = "backup"
        } else if let file = device as? AIOFileDevice {
            kind = "image"
            path = file.path
        } else {
            kind = "other"
        }
        return LUNInfo(
            lun: lun, kind: kind, origin: origin, path: path, sizeBytes: device.capacity, blockSize: device.blockSize,
            readOnly: scsi.isWriteProtected(lun: lun) ?? device.isReadOnly)
    }

    // MARK: - Helpers

    /// The SCSI side of target `name`; 404 naming the served targets when there is none.
    private func served(_ name: String) throws(ControlError) -> SCSITarget {
        guard let scsi = server.scsiTarget(named: name) else { throw unknownTarget(name) }
        return scsi
    }

    private func policy(of name: String) throws(ControlError) -> LoginPolicy {
        guard let policy = server.loginPolicy(target: name) else { throw unknownTarget(name) }
        return policy
    }

    private func unknownTarget(_ name: String) -> ControlError {
        let names = server.targetNames
        return ControlError(
            status: 404, "unknown target \(name) (served: \(names.isEmpty ? "none" : names.joined(separator: ", ")))")
    }

    private static func controlError(_ error: TargetServerError) -> ControlError {
        let status =
            switch error.code {
            case .notFound: 404
            case .conflict: 409
            case .failed: 500
            }
        return ControlError(status: status, error.description)
    }
}
