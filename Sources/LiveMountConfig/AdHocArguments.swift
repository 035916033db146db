import Prefetch
import TargetServer

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The ad hoc command line form, like qemu-storage-daemon's or nbdkit's: one target given entirely by
/// arguments, as the strings the user typed. `DaemonConfiguration.fromArguments(_:)` validates it into the
/// same model as the TOML file, naming the argument in every error (`--lun 1=/x.img: file /x.img does not exist`).
public struct AdHocArguments: Sendable, Equatable {
    /// `--listen HOST:PORT`, repeatable; none = 0.0.0.0:3260.
    public var listen: [String]
    /// `--target NAME`.
    public var target: String?
    /// `--alias TEXT`.
    public var alias: String?
    /// `--lun N=PATH[,ro][,direct=off][,bs=4096][,serial=X][,wce=off]`, repeatable; a backup LUN is
    /// `N=backup:VM[@ID][/DISK]` with `profile=`, `prefetch=`, `record=` and `relocate=URL`.
    public var luns: [String]
    /// `--chap USER:SECRET`.
    public var chap: String?
    /// `--mutual-chap USER:SECRET`.
    public var mutualChap: String?
    /// `--allow INITIATOR-NAME`, repeatable.
    public var allow: [String]
    /// `--state-dir DIR`.
    public var stateDirectory: String?
    /// `--log-level LEVEL`.
    public var logLevel: String?
    /// `--repo DIR`: the backup repository for `backup:` LUNs.
    public var repository: String?
    /// `--cache FILE[,SIZE]`: the SSD-tier cache file for `backup:` LUNs.
    public var cache: String?
    /// `--repo-latency MS`: latency added per chunk read.
    public var repositoryLatency: Int?
    /// `--repo-bandwidth MIB`: repository read cap in MiB/s.
    public var repositoryBandwidth: Int?
    /// `--control-socket PATH`.
    public var controlSocket: String?
    /// `--control-listen HOST:PORT` (loopback only).
    public var controlListen: String?
    /// `--control-token-file PATH`.
    public var controlTokenFile: String?

    public init(
        listen: [String] = [], target: String? = nil, alias: String? = nil, luns: [String] = [], chap: String? = nil,
        mutualChap: String? = nil, allow: [String] = [], stateDirectory: String? = nil, logLevel: String? = nil,
        repository: String? = nil, cache: String? = nil, repositoryLatency: Int? = nil,
        repositoryBandwidth: Int? = nil, controlSocket: String? = nil, controlListen: String? = nil,
        controlTokenFile: String? = nil
    ) {
        self.controlListen = controlListen
        self.controlTokenFile = controlTokenFile
        self.repository = repository
        self.cache = cache
        self.repositoryLatency = repositoryLatency
        self.repositoryBandwidth = repositoryBandwidth
        self.controlSocket = controlSocket
        self.listen = listen
        self.target = target
        self.alias = alias
        self.luns = luns
        self.chap = chap
        self.mutualChap = mutualChap
        self.allow = allow
        self.stateDirectory = stateDirectory
        self.logLevel = logLevel
    }
}

/// A parsed `--lun` value.
public struct LUNSpecification: Sendable, Equatable {
    public var lun: UInt64
    public var path: String
    public var readOnly = false
    public var direct = true
    public var blockSize = 512
    public var serial: String?
    public var writeCache = true
    /// `N=backup:VM[@ID][/DISK]`: a live mount of a backup disk instead of an image path.
    public var backup: BackupReference?
    /// A backup LUN's `profile=NAME`, `prefetch=on|off` and `record=SECONDS`.
    public var mountOptions = MountOptions()
    /// A backup LUN's `relocate=URL`: the primary LUN it is relocated to once mounted.
    public var relocateTo: String?

    /// The options a `--lun` value accepts after the path, for messages and `--help`.
    public static let optionSummary =
        "ro, rw, direct=on|off, bs=512|4096, serial=TEXT, wce=on|off; for backup: profile=NAME, prefetch=on|off, "
        + "record=SECONDS, relocate=URL"

    /// Parses `N=PATH[,option]...`. A comma inside the path is written twice (`,,`), as in QEMU.
    public static func parse(_ spec: String) -> Result<LUNSpecification, LUNSpecificationError> {
        guard let equals = spec.firstIndex(of: "=") else {
            return .failure(.init("expected N=PATH[,\(optionSummary.replacingOccurrences(", ", "][,"))]"))
        }
        let numberText = spec[..<equals]
        guard !numberText.isEmpty, numberText.allSatisfy({ $0.isASCII && $0.isNumber }), numberText.count <= 10,
            let number = UInt64(numberText)
        else { return .failure(.init("\"\(numberText)\" is not a LUN number")) }
        guard Checks.lunRange.contains(number) else {
            return .failure(.init("LUN \(number) out of range (0-16383, SAM-5 §4.7.7)"))
        }
        let parts = splitOptions(spec[spec.index(after: equals)...])
        guard let path = parts.first, !path.isEmpty else {
            return .failure(.init("missing path after \"\(numberText)=\""))
        }
        var result = LUNSpecification(lun: number, path: path)
        if path.hasPrefix("backup:") {
            switch BackupReference.parse(String(path.dropFirst("backup:".count))) {
            case .success(let reference):
                result.backup = reference
                result.path = ""
            case .failure(let problem): return .failure(problem)
            }
        }
        for option in parts.dropFirst() {
            let (name, value) =
                option.firstIndex(of: "=").map {
                    (String(option[..<$0]), String(option[option.index(after: $0)...]))
                } ?? (option, nil)
            switch (name, value) {
            case ("ro", nil): result.readOnly = true
            case ("rw", nil): result.readOnly = false
            case ("direct", nil): result.direct = true
            case ("direct", let v?):
                guard let flag = onOff(v) else { return .failure(.init("direct=\(v): expected on or off")) }
                result.direct = flag
            case ("wce", let v?):
                guard let flag = onOff(v) else { return .failure(.init("wce=\(v): expected on or off")) }
                result.writeCache = flag
            case ("bs", let v?):
                guard let size = Int(v), Checks.blockSizes.contains(size) else {
                    return .failure(.init("bs=\(v): supported block sizes are 512 and 4096"))
                }
                result.blockSize = size
            case ("serial", let v?):
                if let problem = Checks.serialProblem(v) { return .failure(.init("serial: \(problem)")) }
                result.serial = v
            case ("profile", let v?) where result.backup != nil:
                guard !v.isEmpty else { return .failure(.init("profile=: a profile name must not be empty")) }
                result.mountOptions.profile = v
            case ("prefetch", let v?) where result.backup != nil:
                guard let flag = onOff(v) else { return .failure(.init("prefetch=\(v): expected on or off")) }
                result.mountOptions.prefetch = flag
            case ("record", let v?) where result.backup != nil:
                guard let seconds = Int(v), (1...MountOptions.maximumRecordSeconds).contains(seconds) else {
                    return .failure(.init("record=\(v): expected seconds, 1-\(MountOptions.maximumRecordSeconds)"))
                }
                result.mountOptions.recordBootSeconds = seconds
            case ("relocate", let v?):
                guard result.backup != nil else {
                    return .failure(.init("relocate=\(v): only a backup LUN (N=backup:VM) can be relocated"))
                }
                if let problem = LogicalUnitDefinition.relocationDestinationProblem(v) {
                    return .failure(.init("relocate=\(v): \(problem)"))
                }
                result.relocateTo = v
            default:
                return .failure(.init("unknown option \"\(option)\" (expected \(optionSummary))"))
            }
        }
        return .success(result)
    }

    /// Splits at single commas; `,,` stands for a literal comma.
    private static func splitOptions(_ text: Substring) -> [String] {
        var parts: [String] = []
        var current = ""
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            let next = text.index(after: index)
            if character == "," {
                if next < text.endIndex, text[next] == "," {
                    current.append(",")
                    index = text.index(after: next)
                    continue
                }
                parts.append(current)
                current = ""
            } else {
                current.append(character)
            }
            index = next
        }
        parts.append(current)
        return parts
    }

    private static func onOff(_ text: String) -> Bool? {
        switch text.lowercased() {
        case "on", "true", "yes", "1": true
        case "off", "false", "no", "0": false
        default: nil
        }
    }
}

/// Why a `--lun` value could not be parsed.
public struct LUNSpecificationError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

extension String {
    fileprivate func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}

extension DaemonConfiguration {
    /// Validates the ad hoc command line into a configuration. Relative LUN and state paths are resolved
    /// against `currentDirectory` (default: the process's working directory).
    public static func fromArguments(
        _ arguments: AdHocArguments, currentDirectory: String? = nil
    ) throws(ConfigurationError) -> LoadedConfiguration {
        var diagnostics = Diagnostics()
        let cwd = currentDirectory ?? workingDirectory()
        func absolute(_ path: String) -> String {
            path.hasPrefix("/") || path.isEmpty ? path : (cwd.hasSuffix("/") ? cwd : cwd + "/") + path
        }

        var configuration = DaemonConfiguration(portals: [], targets: [])
        for listen in arguments.listen {
            switch Checks.parsePortal(listen) {
            case .success(let portal): configuration.portals.append(portal)
            case .failure(let problem): diagnostics.error("--listen \(listen)", problem.message)
            }
        }
        if arguments.listen.isEmpty { configuration.portals = [defaultPortal] }

        if let name = arguments.logLevel {
            if let level = Checks.logLevel(name) {
                configuration.logLevel = level
            } else {
                diagnostics.error("--log-level \(name)", "not a log level (\(Checks.logLevelNames))")
            }
        }
        if let dir = arguments.stateDirectory {
            let path = absolute(dir)
            if dir.isEmpty {
                diagnostics.error("--state-dir", "must not be empty")
            } else if let problem = Checks.stateDirectoryProblem(path) {
                diagnostics.error("--state-dir \(dir)", problem)
            }
            configuration.stateDirectory = path
        }

        let name = arguments.target ?? ""
        if arguments.target == nil {
            diagnostics.error("--target", "required (or give a configuration file with --config FILE)")
        } else if let problem = Checks.iscsiNameProblem(name) {
            diagnostics.error("--target \(name)", problem)
        }
        if let alias = arguments.alias, let problem = Checks.aliasProblem(alias) {
            diagnostics.error("--alias", problem)
        }
        for initiator in arguments.allow {
            if let problem = Checks.iscsiNameProblem(initiator) { diagnostics.error("--allow \(initiator)", problem) }
        }
        let chap = credentials(arguments.chap, option: "--chap", into: &diagnostics)
        let mutual = credentials(arguments.mutualChap, option: "--mutual-chap", into: &diagnostics)
        if arguments.mutualChap != nil, arguments.chap == nil {
            diagnostics.error("--mutual-chap", "mutual CHAP requires one-way CHAP: give --chap USER:SECRET as well")
        }

        var units: [LogicalUnitDefinition] = []
        if arguments.luns.isEmpty, arguments.target != nil {
            diagnostics.error("--lun", "at least one LUN is required (--lun 0=/path/to/disk.img)")
        }
        for spec in arguments.luns {
            switch LUNSpecification.parse(spec) {
            case .failure(let problem):
                diagnostics.error("--lun \(spec)", problem.description)
            case .success(let lun) where lun.backup != nil:
                if arguments.repository == nil {
                    diagnostics.error("--lun \(spec)", "a backup LUN needs --repo DIR (the backup repository)")
                }
                if arguments.cache == nil {
                    diagnostics.error("--lun \(spec)", "a backup LUN needs --cache FILE[,SIZE] (the SSD-tier cache)")
                }
                var unit = LogicalUnitDefinition(
                    lun: lun.lun, path: "", readOnly: lun.readOnly, direct: lun.direct, blockSize: lun.blockSize,
                    serialNumber: lun.serial ?? DeviceIdentifiers.serialNumber(targetName: name, lun: lun.lun),
                    naaIdentifier: DeviceIdentifiers.naaIdentifier(targetName: name, lun: lun.lun),
                    writeCacheEnabled: lun.writeCache, backup: lun.backup)
                unit.mountOptions = lun.mountOptions
                unit.relocateTo = lun.relocateTo
                units.append(unit)
            case .success(let lun):
                let path = absolute(lun.path)
                if let problem = Checks.backingStoreProblem(
                    path: path, readOnly: lun.readOnly, direct: lun.direct, blockSize: lun.blockSize,
                    syntax: .commandLine)
                {
                    diagnostics.error("--lun \(spec)", problem)
                }
                units.append(
                    LogicalUnitDefinition(
                        lun: lun.lun, path: path, readOnly: lun.readOnly, direct: lun.direct, blockSize: lun.blockSize,
                        serialNumber: lun.serial ?? DeviceIdentifiers.serialNumber(targetName: name, lun: lun.lun),
                        naaIdentifier: DeviceIdentifiers.naaIdentifier(targetName: name, lun: lun.lun),
                        writeCacheEnabled: lun.writeCache))
            }
        }
        if let repository = arguments.repository {
            let path = absolute(repository)
            if let problem = Checks.existingDirectoryProblem(path) { diagnostics.error("--repo \(repository)", problem) }
            var settings = RepositorySettings(path: path)
            if let latency = arguments.repositoryLatency {
                if (0...60_000).contains(latency) {
                    settings.readLatencyMilliseconds = latency
                } else {
                    diagnostics.error("--repo-latency \(latency)", "out of range (0-60000 ms)")
                }
            }
            if let bandwidth = arguments.repositoryBandwidth {
                if (0...1_000_000).contains(bandwidth) {
                    settings.readBandwidthMiBPerSecond = bandwidth
                } else {
                    diagnostics.error("--repo-bandwidth \(bandwidth)", "out of range (0-1000000 MiB/s)")
                }
            }
            configuration.repository = settings
        } else if arguments.repositoryLatency != nil || arguments.repositoryBandwidth != nil {
            diagnostics.error("--repo-latency/--repo-bandwidth", "need --repo DIR")
        }
        if let cache = arguments.cache {
            let parts = cache.split(separator: ",", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let path = absolute(parts[0])
            var size = CacheSettings.defaultSize
            if parts.count == 2 {
                if let value = CacheSettings.parseSize(parts[1]) {
                    size = value
                } else {
                    diagnostics.error("--cache \(cache)", "\"\(parts[1])\" is not a size (e.g. 4G, 512M, bytes)")
                }
            }
            if let problem = CacheSettings.problem(path: path, size: size) {
                diagnostics.error("--cache \(cache)", problem)
            }
            configuration.cache = CacheSettings(path: path, size: size)
        }
        if let socket = arguments.controlSocket {
            configuration.controlSocket = absolute(socket)
        }
        if let listen = arguments.controlListen {
            switch Checks.parseControlListen(listen) {
            case .success(let value): configuration.controlListen = value
            case .failure(let problem): diagnostics.error("--control-listen \(listen)", problem.message)
            }
            if arguments.controlTokenFile == nil {
                diagnostics.error("--control-listen \(listen)", "needs --control-token-file (the bearer token TCP requests carry)")
            }
        }
        if let file = arguments.controlTokenFile {
            let path = absolute(file)
            if let problem = Checks.tokenFileProblem(path) { diagnostics.error("--control-token-file \(file)", problem) }
            configuration.controlTokenFile = path
        }

        configuration.targets = [
            TargetDefinition(
                name: name, alias: arguments.alias, allowedInitiators: arguments.allow, chap: chap, mutualChap: mutual,
                logicalUnits: units)
        ]
        guard diagnostics.errors.isEmpty else { throw .invalid(diagnostics.errors) }

        let listen = arguments.listen
        let luns = arguments.luns
        let allow = arguments.allow
        let locator = FieldLocator(
            portal: { FieldRef(field: "--listen \(listen[$0])") },
            targetName: { _ in FieldRef(field: "--target") },
            lun: { FieldRef(field: "--lun \(luns[$1])") },
            lunPath: { FieldRef(field: "--lun \(luns[$1])") },
            mutualChapSecret: { _ in FieldRef(field: "--mutual-chap") },
            allow: { FieldRef(field: "--allow \(allow[$1])") })
        Checks.crossCheck(configuration, locator, into: &diagnostics)
        guard diagnostics.errors.isEmpty else { throw .invalid(diagnostics.errors) }
        return LoadedConfiguration(configuration: configuration, warnings: diagnostics.warnings)
    }

    /// Parses `USER:SECRET`. The split is at the last colon, so a user name may be an iSCSI name
    /// (`iqn.1994-05.com.redhat:host1:secret`) but a secret may not contain ':'.
    private static func credentials(_ text: String?, option: String, into diagnostics: inout Diagnostics)
        -> CHAPCredentials?
    {
        guard let text else { return nil }
        guard let colon = text.lastIndex(of: ":") else {
            diagnostics.error(option, "expected USER:SECRET")
            return nil
        }
        let value = CHAPCredentials(user: String(text[..<colon]), secret: String(text[text.index(after: colon)...]))
        Checks.checkCHAP(
            value, userField: FieldRef(field: "\(option) user"), secretField: FieldRef(field: "\(option) secret"),
            into: &diagnostics)
        return value
    }

    /// The process's working directory, or "/" if it cannot be determined.
    private static func workingDirectory() -> String {
        guard let pointer = getcwd(nil, 0) else { return "/" }
        defer { free(pointer) }
        return String(cString: pointer)
    }
}
