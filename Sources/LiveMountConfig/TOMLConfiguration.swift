import Logging
import Prefetch
import Relocation
import TargetServer

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

// MARK: - Entry points

extension DaemonConfiguration {
    /// Reads and validates the TOML configuration file at `path` (the format is documented in
    /// conf/livemount.toml).
    public static func load(contentsOfFile path: String) throws(ConfigurationError) -> LoadedConfiguration {
        let text: String
        switch readTextFile(path) {
        case .success(let contents): text = contents
        case .failure(let reason): throw .unreadable(path: path, reason: reason.message)
        }
        return try parse(toml: text)
    }

    /// Parses and validates a TOML configuration. Throws `.syntax` for the first TOML error, or `.invalid`
    /// with every configuration problem found, each naming its field (`portals[0].listen: ...`).
    public static func parse(toml text: String) throws(ConfigurationError) -> LoadedConfiguration {
        let document: TOMLTable
        do {
            document = try TOMLParser.parse(text)
        } catch {
            throw .syntax(error)
        }
        var mapper = TOMLMapper()
        let configuration = mapper.map(document)
        guard mapper.diagnostics.errors.isEmpty, let configuration else {
            throw .invalid(mapper.diagnostics.errors)
        }
        return LoadedConfiguration(configuration: configuration, warnings: mapper.diagnostics.warnings)
    }
}

/// Why a file could not be read.
struct ReadProblem: Error {
    var message: String
}

/// Reads a whole UTF-8 text file.
func readTextFile(_ path: String) -> Result<String, ReadProblem> {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return .failure(ReadProblem(message: Checks.errorText(errno))) }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 {
            if errno == EINTR { continue }
            return .failure(ReadProblem(message: Checks.errorText(errno)))
        }
        if count == 0 { break }
        bytes.append(contentsOf: chunk[0..<count])
        if bytes.count > 16 << 20 { return .failure(ReadProblem(message: "larger than 16 MiB")) }
    }
    guard let text = String(validating: bytes, as: UTF8.self) else {
        return .failure(ReadProblem(message: "not valid UTF-8"))
    }
    return .success(text)
}

// MARK: - Mapping

/// A table of the document and the field path it lives at (`targets[0].luns[1]`).
private struct Section {
    var table: TOMLTable
    var path: String

    func field(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }
    func ref(_ key: String) -> FieldRef {
        FieldRef(field: field(key), position: table.position(of: key) ?? table.position)
    }
}

/// Maps a parsed TOML document onto `DaemonConfiguration`, collecting every problem.
private struct TOMLMapper {
    var diagnostics = Diagnostics()

    static let rootKeys = [
        "daemon", "portals", "iscsi", "discovery", "repository", "cache", "prefetch", "relocation", "archive",
        "targets",
    ]
    static let archiveKeys = ["idle_seconds", "check_seconds"]
    static let prefetchKeys = [
        "prestage_bytes", "prestage_seconds", "prestage_timeout_seconds", "lead_bytes", "lead_seconds", "max_in_flight",
    ]
    static let relocationKeys = [
        "region_kib", "max_in_flight", "max_rate_mib", "busy_rate_mib", "stage_ahead_mib", "checkpoint_seconds",
        "verify",
    ]
    static let daemonKeys = ["state_dir", "log_level", "control_socket", "control_listen", "control_token_file"]
    static let repositoryKeys = ["path", "read_latency_ms", "read_bandwidth_mib"]
    static let cacheKeys = ["path", "size", "direct"]
    static let portalKeys = ["listen"]
    static let iscsiKeys = [
        "max_recv_data_segment_length", "max_burst_length", "first_burst_length", "immediate_data", "initial_r2t",
        "max_outstanding_r2t", "command_window", "nop_in_interval", "nop_in_timeout",
    ]
    static let discoveryKeys = ["chap"]
    static let targetKeys = ["name", "alias", "allow", "chap", "mutual_chap", "luns"]
    static let lunKeys = [
        "lun", "path", "backup", "read_only", "direct", "block_size", "serial", "write_cache", "profile", "prefetch",
        "record_boot", "relocate_to",
    ]
    static let chapKeys = ["user", "secret"]

    /// Data segment and burst lengths (RFC 7143 §13.12-13.14): 512 to 2^24-1.
    static let lengthRange: ClosedRange<Int64> = 512...16_777_215

    mutating func map(_ document: TOMLTable) -> DaemonConfiguration? {
        let root = Section(table: document, path: "")
        checkKeys(root, Self.rootKeys)

        var configuration = DaemonConfiguration(portals: [], targets: [])
        if let daemon = table(root, "daemon") {
            checkKeys(daemon, Self.daemonKeys)
            if let dir = string(daemon, "state_dir") {
                if let problem = Checks.absolutePathProblem(dir) ?? Checks.stateDirectoryProblem(dir) {
                    error(daemon.ref("state_dir"), problem)
                }
                configuration.stateDirectory = dir
            }
            if let socket = string(daemon, "control_socket") {
                if let problem = Checks.absolutePathProblem(socket) { error(daemon.ref("control_socket"), problem) }
                configuration.controlSocket = socket
            }
            if let listen = string(daemon, "control_listen") {
                switch Checks.parseControlListen(listen) {
                case .success(let value): configuration.controlListen = value
                case .failure(let problem): error(daemon.ref("control_listen"), problem.message)
                }
                if string(daemon, "control_token_file") == nil {
                    error(daemon.ref("control_listen"), "needs control_token_file (the bearer token TCP requests carry)")
                }
            }
            if let file = string(daemon, "control_token_file") {
                if let problem = Checks.absolutePathProblem(file) ?? Checks.tokenFileProblem(file) {
                    error(daemon.ref("control_token_file"), problem)
                }
                configuration.controlTokenFile = file
            }
            if let name = string(daemon, "log_level") {
                if let level = Checks.logLevel(name) {
                    configuration.logLevel = level
                } else {
                    error(daemon.ref("log_level"), "\"\(name)\" is not a log level (\(Checks.logLevelNames))")
                }
            }
        }

        if let portals = tables(root, "portals") {
            if portals.isEmpty { error(root.ref("portals"), "at least one portal is required") }
            for portal in portals {
                checkKeys(portal, Self.portalKeys)
                guard let listen = string(portal, "listen", required: true) else { continue }
                switch Checks.parsePortal(listen) {
                case .success(let value): configuration.portals.append(value)
                case .failure(let problem): error(portal.ref("listen"), problem.message)
                }
            }
        } else {
            configuration.portals = [DaemonConfiguration.defaultPortal]
        }

        if let iscsi = table(root, "iscsi") {
            mapLimits(iscsi, into: &configuration)
        }

        if let discovery = table(root, "discovery") {
            checkKeys(discovery, Self.discoveryKeys)
            configuration.discoveryChap = chap(discovery, "chap")
        }

        if let repository = table(root, "repository") {
            checkKeys(repository, Self.repositoryKeys)
            if let path = string(repository, "path", required: true) {
                if let problem = Checks.absolutePathProblem(path) ?? Checks.existingDirectoryProblem(path) {
                    error(repository.ref("path"), problem)
                }
                var settings = RepositorySettings(path: path)
                if let value = integer(repository, "read_latency_ms", 0...60_000, nil) {
                    settings.readLatencyMilliseconds = value
                }
                if let value = integer(repository, "read_bandwidth_mib", 0...1_000_000, nil) {
                    settings.readBandwidthMiBPerSecond = value
                }
                configuration.repository = settings
            }
        }

        if let cache = table(root, "cache") {
            checkKeys(cache, Self.cacheKeys)
            let path = string(cache, "path", required: true)
            var size = CacheSettings.defaultSize
            if let text = string(cache, "size") {
                if let value = CacheSettings.parseSize(text) {
                    size = value
                } else {
                    error(cache.ref("size"), "\"\(text)\" is not a size (e.g. \"4G\", \"512M\", bytes)")
                }
            }
            let direct = bool(cache, "direct") ?? true
            if let path {
                if let problem = CacheSettings.problem(path: path, size: size) { error(cache.ref("path"), problem) }
                configuration.cache = CacheSettings(path: path, size: size, direct: direct)
            }
        }

        if let prefetch = table(root, "prefetch") {
            checkKeys(prefetch, Self.prefetchKeys)
            var settings = PrefetchSettings()
            for key in ["prestage_bytes", "lead_bytes"] {
                guard let text = string(prefetch, key) else { continue }
                guard let value = CacheSettings.parseSize(text) else {
                    error(prefetch.ref(key), "\"\(text)\" is not a size (e.g. \"128M\", bytes)")
                    continue
                }
                if key == "prestage_bytes" { settings.prestageBytes = value } else { settings.leadBytes = value }
            }
            if let value = integer(prefetch, "prestage_seconds", 0...3600, nil) { settings.prestageSeconds = Double(value) }
            if let value = integer(prefetch, "prestage_timeout_seconds", 0...3600, nil) {
                settings.prestageTimeoutSeconds = Double(value)
            }
            if let value = integer(prefetch, "lead_seconds", 0...3600, nil) { settings.leadSeconds = Double(value) }
            if let value = integer(prefetch, "max_in_flight", 1...1024, nil) { settings.maxInFlight = value }
            configuration.prefetch = settings
        }

        if let relocation = table(root, "relocation") {
            configuration.relocation = mapRelocation(relocation)
        }

        if let archive = table(root, "archive") {
            checkKeys(archive, Self.archiveKeys)
            if let value = integer(archive, "idle_seconds", 0...(100 * 365 * 86_400), nil) {
                configuration.archive.idleSeconds = value
            }
            if let value = integer(archive, "check_seconds", 1...86_400, nil) { configuration.archive.checkSeconds = value }
        }

        if let targets = tables(root, "targets", required: true) {
            if targets.isEmpty { error(root.ref("targets"), "at least one target is required") }
            for target in targets {
                if let value = mapTarget(target) { configuration.targets.append(value) }
            }
        }
        for (t, target) in configuration.targets.enumerated() {
            guard let l = target.logicalUnits.firstIndex(where: { $0.backup != nil }) else { continue }
            let field = "targets[\(t)].luns[\(l)].backup"
            if configuration.repository == nil {
                error(FieldRef(field: field), "a backup LUN needs a [repository] table with its path")
            }
            if configuration.cache == nil {
                error(FieldRef(field: field), "a backup LUN needs a [cache] table (the SSD-tier cache file)")
            }
        }

        guard diagnostics.errors.isEmpty else { return nil }
        Checks.crossCheck(configuration, locator(document), into: &diagnostics)
        return diagnostics.errors.isEmpty ? configuration : nil
    }

    /// `[relocation]`: how relocation pumps run. Types are checked here; values by `RelocationSettings.problems()`,
    /// each problem reported on the key it names.
    private mutating func mapRelocation(_ relocation: Section) -> RelocationSettings {
        checkKeys(relocation, Self.relocationKeys)
        var settings = RelocationSettings()
        // Wide ranges only keep the arithmetic safe; the real limits are RelocationSettings' (problems() below).
        let wide = Int64(Int32.min)...Int64(Int32.max)
        if let kib = integer(relocation, "region_kib", wide, nil) { settings.regionBytes = kib << 10 }
        if let value = integer(relocation, "max_in_flight", wide, nil) { settings.maxInFlight = value }
        if let value = integer(relocation, "max_rate_mib", wide, nil) { settings.maxRateMiB = value }
        if let value = integer(relocation, "busy_rate_mib", wide, nil) { settings.busyRateMiB = value }
        if let value = integer(relocation, "stage_ahead_mib", wide, nil) { settings.stageAheadMiB = value }
        if let value = seconds(relocation, "checkpoint_seconds") { settings.checkpointSeconds = value }
        if let value = bool(relocation, "verify") { settings.verify = value }
        // The defaults are valid, so each problem is about a key the table sets.
        for problem in settings.keyedProblems() {
            error(relocation.ref(problem.key), problem.message)
        }
        return settings
    }

    /// `[iscsi]`: negotiation limits (RFC 7143 §13) and NOP-In keep-alive.
    private mutating func mapLimits(_ iscsi: Section, into configuration: inout DaemonConfiguration) {
        checkKeys(iscsi, Self.iscsiKeys)
        var limits = NegotiationLimits()
        if let value = integer(iscsi, "max_recv_data_segment_length", Self.lengthRange, "RFC 7143 §13.12") {
            limits.maxRecvDataSegmentLength = value
        }
        if let value = integer(iscsi, "max_burst_length", Self.lengthRange, "RFC 7143 §13.13") {
            limits.maxBurstLength = value
        }
        if let value = integer(iscsi, "first_burst_length", Self.lengthRange, "RFC 7143 §13.14") {
            limits.firstBurstLength = value
        }
        if limits.firstBurstLength > limits.maxBurstLength {
            error(
                iscsi.ref(iscsi.table["first_burst_length"] != nil ? "first_burst_length" : "max_burst_length"),
                "first_burst_length (\(limits.firstBurstLength)) must not exceed max_burst_length "
                    + "(\(limits.maxBurstLength)) (RFC 7143 §13.14)")
        }
        if let value = bool(iscsi, "immediate_data") { limits.immediateData = value }
        if let value = bool(iscsi, "initial_r2t") { limits.initialR2T = value }
        if let value = integer(iscsi, "max_outstanding_r2t", 1...65535, "RFC 7143 §13.17") {
            limits.maxOutstandingR2T = value
        }
        if let value = integer(iscsi, "command_window", 1...65535, nil) { limits.commandWindow = value }
        if let value = integer(iscsi, "nop_in_interval", 0...3600, nil) { configuration.nopInInterval = value }
        if let value = integer(iscsi, "nop_in_timeout", 1...3600, nil) { configuration.nopInTimeout = value }
        configuration.limits = limits
    }

    /// One `[[targets]]` table.
    private mutating func mapTarget(_ target: Section) -> TargetDefinition? {
        checkKeys(target, Self.targetKeys)
        let name = string(target, "name", required: true)
        if let name, let problem = Checks.iscsiNameProblem(name) { error(target.ref("name"), problem) }
        let alias = string(target, "alias")
        if let alias, let problem = Checks.aliasProblem(alias) { error(target.ref("alias"), problem) }
        var allowed: [String] = []
        if let names = stringArray(target, "allow") {
            for (i, initiator) in names.enumerated() {
                if let problem = Checks.iscsiNameProblem(initiator) {
                    error(
                        FieldRef(field: target.field("allow") + "[\(i)]", position: target.ref("allow").position),
                        problem)
                }
                allowed.append(initiator)
            }
        }
        let oneWay = chap(target, "chap")
        let mutual = chap(target, "mutual_chap")
        if mutual != nil, oneWay == nil, target.table["chap"] == nil {
            error(target.ref("mutual_chap"), "mutual CHAP requires one-way CHAP: set chap as well (RFC 7143 §12.1.3)")
        }
        var units: [LogicalUnitDefinition] = []
        if let luns = tables(target, "luns", required: true) {
            if luns.isEmpty { error(target.ref("luns"), "at least one LUN is required") }
            for lun in luns {
                if let unit = mapLUN(lun, targetName: name ?? "") { units.append(unit) }
            }
        }
        guard let name else { return nil }
        return TargetDefinition(
            name: name, alias: alias, allowedInitiators: allowed, chap: oneWay, mutualChap: mutual, logicalUnits: units)
    }

    /// One `[[targets.luns]]` table.
    private mutating func mapLUN(_ lun: Section, targetName: String) -> LogicalUnitDefinition? {
        checkKeys(lun, Self.lunKeys)
        let number = integer(
            lun, "lun", Int64(Checks.lunRange.lowerBound)...Int64(Checks.lunRange.upperBound), "SAM-5 §4.7.7",
            required: true)
        let backupText = string(lun, "backup")
        let path = string(lun, "path", required: backupText == nil)
        var backup: BackupReference?
        if let backupText {
            if path != nil {
                error(lun.ref("backup"), "give either path (an image or device) or backup (a live mount), not both")
            }
            switch BackupReference.parse(backupText) {
            case .success(let reference): backup = reference
            case .failure(let problem): error(lun.ref("backup"), problem.description)
            }
        }
        let readOnly = bool(lun, "read_only") ?? false
        let direct = bool(lun, "direct") ?? true
        var blockSize = 512
        if let value = integer(lun, "block_size", 0...Int64(Int32.max), nil) {
            if Checks.blockSizes.contains(value) {
                blockSize = value
            } else {
                error(lun.ref("block_size"), "\(value) is not a supported block size (512 or 4096)")
            }
        }
        let serial = string(lun, "serial")
        if let serial, let problem = Checks.serialProblem(serial) { error(lun.ref("serial"), problem) }
        let writeCache = bool(lun, "write_cache") ?? true
        if let path, backup == nil {
            if let problem = Checks.absolutePathProblem(path)
                ?? Checks.backingStoreProblem(
                    path: path, readOnly: readOnly, direct: direct, blockSize: blockSize, syntax: .toml)
            {
                error(lun.ref("path"), problem)
            }
        }
        var options = MountOptions()
        options.profile = string(lun, "profile")
        if options.profile?.isEmpty == true { error(lun.ref("profile"), "a profile name must not be empty") }
        options.prefetch = bool(lun, "prefetch") ?? true
        options.recordBootSeconds = integer(lun, "record_boot", 0...Int64(MountOptions.maximumRecordSeconds), nil) ?? 0
        let relocateTo = string(lun, "relocate_to")
        if let relocateTo, backup != nil, let problem = LogicalUnitDefinition.relocationDestinationProblem(relocateTo) {
            error(lun.ref("relocate_to"), problem)
        }
        if backup == nil {
            for key in ["profile", "prefetch", "record_boot", "relocate_to"] where lun.table[key] != nil {
                error(lun.ref(key), "only a backup LUN (backup = ...) has \(key)")
            }
        }
        guard let number, path != nil || backup != nil else { return nil }
        let lunNumber = UInt64(number)
        var definition = LogicalUnitDefinition(
            lun: lunNumber, path: backup == nil ? path ?? "" : "", readOnly: readOnly, direct: direct, blockSize: blockSize,
            serialNumber: serial ?? DeviceIdentifiers.serialNumber(targetName: targetName, lun: lunNumber),
            naaIdentifier: DeviceIdentifiers.naaIdentifier(targetName: targetName, lun: lunNumber),
            writeCacheEnabled: writeCache, backup: backup)
        definition.mountOptions = options
        definition.relocateTo = relocateTo
        return definition
    }

    /// `chap = { user = "...", secret = "..." }` (or a `[targets.chap]` table).
    private mutating func chap(_ section: Section, _ key: String) -> CHAPCredentials? {
        guard let credentials = table(section, key) else { return nil }
        checkKeys(credentials, Self.chapKeys)
        let user = string(credentials, "user", required: true)
        let secret = string(credentials, "secret", required: true)
        guard let user, let secret else { return nil }
        let value = CHAPCredentials(user: user, secret: secret)
        Checks.checkCHAP(
            value, userField: credentials.ref("user"), secretField: credentials.ref("secret"), into: &diagnostics)
        return value
    }

    /// Where each field is, for `Checks.crossCheck` (indices are those of the document's arrays, which the
    /// configuration keeps because elements with errors stop the mapping before the cross-checks run).
    private func locator(_ document: TOMLTable) -> FieldLocator {
        func element(_ table: TOMLTable?, _ key: String, _ index: Int) -> TOMLTable? {
            guard case .array(let values)? = table?[key], index < values.count, case .table(let t) = values[index]
            else {
                return nil
            }
            return t
        }
        func ref(_ field: String, _ table: TOMLTable?, _ key: String) -> FieldRef {
            FieldRef(field: field, position: table?.position(of: key) ?? table?.position)
        }
        return FieldLocator(
            portal: { p in ref("portals[\(p)].listen", element(document, "portals", p), "listen") },
            targetName: { t in ref("targets[\(t)].name", element(document, "targets", t), "name") },
            lun: { t, l in
                ref("targets[\(t)].luns[\(l)].lun", element(element(document, "targets", t), "luns", l), "lun")
            },
            lunPath: { t, l in
                ref("targets[\(t)].luns[\(l)].path", element(element(document, "targets", t), "luns", l), "path")
            },
            mutualChapSecret: { t in
                let target = element(document, "targets", t)
                guard case .table(let mutual)? = target?["mutual_chap"] else {
                    return ref("targets[\(t)].mutual_chap.secret", target, "mutual_chap")
                }
                return ref("targets[\(t)].mutual_chap.secret", mutual, "secret")
            },
            allow: { t, a in ref("targets[\(t)].allow[\(a)]", element(document, "targets", t), "allow") })
    }

    // MARK: Typed access

    private mutating func error(_ ref: FieldRef, _ message: String) {
        diagnostics.error(ref.field, message, at: ref.position)
    }

    /// Rejects keys the section does not know, suggesting the closest known key.
    private mutating func checkKeys(_ section: Section, _ known: [String]) {
        for key in section.table.keys where !known.contains(key) {
            var message = "unknown key"
            if let guess = Checks.suggestion(for: key, among: known) {
                message += " (did you mean \(guess)?)"
            } else {
                message += " (expected one of: \(known.joined(separator: ", ")))"
            }
            error(section.ref(key), message)
        }
    }

    private mutating func value(_ section: Section, _ key: String, required: Bool) -> TOMLValue? {
        guard let value = section.table[key] else {
            if required {
                error(FieldRef(field: section.field(key), position: section.table.position), "required key is missing")
            }
            return nil
        }
        return value
    }

    private mutating func mismatch(_ section: Section, _ key: String, expected: String, found: TOMLValue) {
        error(section.ref(key), "expected \(expected), found \(found.typeDescription)")
    }

    private mutating func string(_ section: Section, _ key: String, required: Bool = false) -> String? {
        guard let value = value(section, key, required: required) else { return nil }
        guard case .string(let string) = value else {
            mismatch(section, key, expected: "a string", found: value)
            return nil
        }
        return string
    }

    private mutating func bool(_ section: Section, _ key: String) -> Bool? {
        guard let value = value(section, key, required: false) else { return nil }
        guard case .boolean(let bool) = value else {
            mismatch(section, key, expected: "true or false", found: value)
            return nil
        }
        return bool
    }

    /// Seconds as an integer (`2`) or, since the TOML subset has no floats, a decimal string (`"0.5"`).
    private mutating func seconds(_ section: Section, _ key: String) -> Double? {
        guard let value = value(section, key, required: false) else { return nil }
        switch value {
        case .integer(let number): return Double(number)
        case .string(let text):
            guard let seconds = Double(text), seconds.isFinite else {
                error(section.ref(key), "\"\(text)\" is not a number of seconds (e.g. 2 or \"0.5\")")
                return nil
            }
            return seconds
        default:
            mismatch(section, key, expected: "an integer or a decimal string (e.g. 2 or \"0.5\")", found: value)
            return nil
        }
    }

    private mutating func integer(
        _ section: Section, _ key: String, _ range: ClosedRange<Int64>, _ citation: String?, required: Bool = false
    ) -> Int? {
        guard let value = value(section, key, required: required) else { return nil }
        guard case .integer(let number) = value else {
            mismatch(section, key, expected: "an integer", found: value)
            return nil
        }
        guard range.contains(number) else {
            let source = citation.map { ", \($0)" } ?? ""
            error(section.ref(key), "\(number) out of range (\(range.lowerBound)-\(range.upperBound)\(source))")
            return nil
        }
        return Int(number)
    }

    private mutating func stringArray(_ section: Section, _ key: String) -> [String]? {
        guard let value = value(section, key, required: false) else { return nil }
        guard case .array(let elements) = value else {
            mismatch(section, key, expected: "an array of strings", found: value)
            return nil
        }
        var strings: [String] = []
        for (i, element) in elements.enumerated() {
            guard case .string(let string) = element else {
                error(
                    FieldRef(field: section.field(key) + "[\(i)]", position: section.ref(key).position),
                    "expected a string, found \(element.typeDescription)")
                return nil
            }
            strings.append(string)
        }
        return strings
    }

    private mutating func table(_ section: Section, _ key: String) -> Section? {
        guard let value = value(section, key, required: false) else { return nil }
        guard case .table(let table) = value else {
            mismatch(section, key, expected: "a table", found: value)
            return nil
        }
        return Section(table: table, path: section.field(key))
    }

    /// An array of tables (`[[key]]` or `key = [{...}, {...}]`).
    private mutating func tables(_ section: Section, _ key: String, required: Bool = false) -> [Section]? {
        guard let value = value(section, key, required: required) else { return nil }
        guard case .array(let elements) = value else {
            mismatch(section, key, expected: "an array of tables ([[\(section.field(key))]])", found: value)
            return nil
        }
        var sections: [Section] = []
        for (i, element) in elements.enumerated() {
            guard case .table(let table) = element else {
                error(
                    FieldRef(field: section.field(key) + "[\(i)]", position: section.ref(key).position),
                    "expected a table, found \(element.typeDescription)")
                continue
            }
            sections.append(Section(table: table, path: section.field(key) + "[\(i)]"))
        }
        return sections
    }
}
