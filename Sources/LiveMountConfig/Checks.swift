import Foundation
import Logging
import TargetServer

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

// MARK: - Diagnostics

/// Collects errors and warnings while a configuration is checked, so that every problem is reported at once.
struct Diagnostics {
    var errors: [ConfigurationIssue] = []
    var warnings: [ConfigurationIssue] = []

    mutating func error(_ field: String, _ message: String, at position: TOMLPosition? = nil) {
        errors.append(ConfigurationIssue(field: field, message: message, position: position))
    }

    mutating func warning(_ field: String, _ message: String, at position: TOMLPosition? = nil) {
        warnings.append(ConfigurationIssue(field: field, message: message, position: position))
    }
}

/// A field's name and, for the TOML file, where it is.
struct FieldRef {
    var field: String
    var position: TOMLPosition?
}

/// How option names are spelled in the source a configuration came from, for hints in messages.
enum ConfigurationSyntax {
    case toml
    case commandLine
    /// The control API's JSON bodies (and the `livemount` options that fill them).
    case controlAPI

    var readOnlyHint: String {
        switch self {
        case .toml: "read_only = true"
        case .commandLine: ",ro"
        case .controlAPI: "\"readOnly\": true, livemount lun add --read-only"
        }
    }

    var directOffHint: String {
        switch self {
        case .toml: "direct = false"
        case .commandLine: ",direct=off"
        case .controlAPI: "\"direct\": false, livemount lun add --no-direct"
        }
    }
}

// MARK: - Field checks

/// The checks shared by the TOML file and the command line. Each returns a message, or nil when the value
/// is fine; callers attach the field name.
enum Checks {
    /// LUN numbers the target accepts: the flat space addressing range (SAM-5 §4.7.7).
    static let lunRange: ClosedRange<UInt64> = 0...16383

    /// Logical block sizes a `BlockDevice` supports.
    static let blockSizes = [512, 4096]

    /// Checks an iSCSI name (RFC 7143 §4.2.7, RFC 3720 §3.2.6.3): `iqn.yyyy-mm.reversed.domain[:anything]`,
    /// `eui.` + 16 hex digits, or `naa.` + 16 or 32 hex digits; at most 223 bytes. Names are compared after
    /// RFC 3722 case folding, so `iqn.` names must be written in lowercase to be matched as written.
    static func iscsiNameProblem(_ name: String) -> String? {
        let invalid = "\"\(name)\" is not a valid iqn./eui./naa. name (RFC 7143 §4.2.7)"
        if name.isEmpty { return "must not be empty" }
        if name.utf8.count > 223 { return "\(invalid): longer than 223 bytes" }
        let lower = name.lowercased()
        if lower.hasPrefix("eui.") || lower.hasPrefix("naa.") {
            let hex = name.dropFirst(4)
            let counts = lower.hasPrefix("eui.") ? [16] : [16, 32]
            guard counts.contains(hex.count), hex.allSatisfy({ $0.isASCII && $0.isHexDigit }) else {
                let expected = counts.count == 1 ? "16" : "16 or 32"
                return "\(invalid): expected \(expected) hex digits after \"\(name.prefix(4))\""
            }
            return nil
        }
        guard lower.hasPrefix("iqn.") else { return "\(invalid): it must start with iqn., eui. or naa." }
        if name != lower {
            return "\(invalid): iSCSI names are case-folded (RFC 3722); write \"\(lower)\""
        }
        if let bad = name.first(where: { !($0.isASCII && ($0.isLetter || $0.isNumber || "-.:".contains($0))) }) {
            return "\(invalid): character '\(bad)' is not allowed (use a-z, 0-9, '-', '.', ':')"
        }
        let rest = Array(name.dropFirst(4).utf8)
        let isDigit = { (b: UInt8) in b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }
        guard rest.count >= 7, rest[0..<4].allSatisfy(isDigit), rest[4] == UInt8(ascii: "-"),
            rest[5..<7].allSatisfy(isDigit),
            let month = Int(String(decoding: rest[5..<7], as: UTF8.self)), (1...12).contains(month)
        else {
            return "\(invalid): expected a date yyyy-mm after \"iqn.\" (e.g. iqn.2026-11.org.example:disk0)"
        }
        let authorityAndName = String(decoding: rest[7...], as: UTF8.self)
        guard authorityAndName.hasPrefix(".") else {
            return "\(invalid): expected '.' and a reversed domain name after the date"
        }
        let authority = authorityAndName.dropFirst().prefix { $0 != ":" }
        if authority.isEmpty
            || authority.split(separator: ".", omittingEmptySubsequences: false).contains(where: \.isEmpty)
        {
            return "\(invalid): expected a reversed domain name after the date (e.g. org.example)"
        }
        return nil
    }

    /// Parses `host:port`, `[ipv6]:port`, or a bare host (port 3260). The host must be an IP address.
    static func parsePortal(_ text: String) -> Result<PortalConfiguration, PortalProblem> {
        var host: Substring
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return .failure(.init("missing ']' after IPv6 address")) }
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return .failure(.init("expected ':PORT' after ']'")) }
                portText = after.dropFirst()
            }
            guard isIPv6(String(host)) else { return .failure(.init("\"\(host)\" is not an IPv6 address")) }
        } else {
            let colons = text.filter { $0 == ":" }.count
            if colons > 1 { return .failure(.init("write IPv6 addresses in brackets, e.g. [\(text)]:3260")) }
            if let colon = text.firstIndex(of: ":") {
                host = text[..<colon]
                portText = text[text.index(after: colon)...]
            } else {
                host = Substring(text)
            }
            guard isIPv4(String(host)) else {
                return .failure(.init("\"\(host)\" is not an IP address (use e.g. 0.0.0.0, 127.0.0.1 or [::1])"))
            }
        }
        var port = 3260
        if let portText {
            guard !portText.isEmpty, portText.allSatisfy({ $0.isASCII && $0.isNumber }), portText.count <= 9,
                let value = Int(portText)
            else { return .failure(.init("\"\(portText)\" is not a port number")) }
            guard (0...65535).contains(value) else { return .failure(.init("port \(value) out of range (0-65535)")) }
            port = value
        }
        return .success(PortalConfiguration(host: String(host), port: port))
    }

    /// `control_listen`: like a portal, but only on a loopback address (the API can mount, unmount and relocate)
    /// and with an explicit port.
    static func parseControlListen(_ text: String) -> Result<PortalConfiguration, PortalProblem> {
        switch parsePortal(text) {
        case .failure(let problem): return .failure(problem)
        case .success(let portal):
            guard portal.host.hasPrefix("127.") || portal.host == "::1" else {
                return .failure(.init("\(portal.host) is not a loopback address (use 127.0.0.1 or [::1])"))
            }
            guard text.hasSuffix(":\(portal.port)") else { return .failure(.init("give a port, e.g. 127.0.0.1:9327")) }
            return .success(portal)
        }
    }

    /// Why a control token file cannot be used: missing, unreadable, empty, or readable by others.
    static func tokenFileProblem(_ path: String) -> String? {
        var status = stat()
        guard stat(path, &status) == 0 else { return "cannot read \(path): \(String(cString: strerror(errno)))" }
        guard status.st_mode & 0o077 == 0 else {
            return "\(path) is readable by others (mode \(String(status.st_mode & 0o777, radix: 8))): chmod 600 it"
        }
        guard let token = readToken(path) else { return "\(path) holds no token" }
        guard token.count >= 16 else { return "the token in \(path) is shorter than 16 characters" }
        return nil
    }

    /// The token in `path`: its contents without surrounding white space; nil if unreadable or empty.
    static func readToken(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return token.isEmpty ? nil : token
    }

    /// Why a portal address was rejected.
    struct PortalProblem: Error {
        var message: String
        init(_ message: String) { self.message = message }
    }

    static func isIPv4(_ text: String) -> Bool {
        var address = in_addr()
        return inet_pton(AF_INET, text, &address) == 1
    }

    static func isIPv6(_ text: String) -> Bool {
        var address = in6_addr()
        return inet_pton(AF_INET6, text, &address) == 1
    }

    /// Checks CHAP credentials (RFC 7143 §12.1.3). `field` is the credentials' field (`targets[0].chap`).
    static func checkCHAP(
        _ credentials: CHAPCredentials, userField: FieldRef, secretField: FieldRef, into diagnostics: inout Diagnostics
    ) {
        let user = credentials.user
        if user.isEmpty {
            diagnostics.error(userField.field, "must not be empty", at: userField.position)
        } else if user.utf8.count > 255 {
            diagnostics.error(userField.field, "longer than 255 bytes", at: userField.position)
        } else if user.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            diagnostics.error(userField.field, "must not contain control characters", at: userField.position)
        }
        let length = credentials.secret.utf8.count
        if length == 0 {
            diagnostics.error(secretField.field, "must not be empty (RFC 7143 §12.1.3)", at: secretField.position)
        } else if length > 255 {
            diagnostics.error(secretField.field, "longer than 255 bytes", at: secretField.position)
        } else if length < 12 {
            diagnostics.warning(
                secretField.field,
                "\(length) bytes is shorter than the 12 bytes (96 bits) RFC 7143 §12.1.3 requires unless IPsec is "
                    + "used; short secrets fall to offline dictionary attacks and some initiators refuse them",
                at: secretField.position)
        } else if length > 16 {
            diagnostics.warning(
                secretField.field,
                "\(length) bytes; some initiators (e.g. Microsoft's) accept only 12-16 byte secrets",
                at: secretField.position)
        }
    }

    /// Checks that `path` is an absolute path.
    static func absolutePathProblem(_ path: String) -> String? {
        if path.isEmpty { return "must not be empty" }
        return path.hasPrefix("/") ? nil : "\"\(path)\" must be an absolute path"
    }

    /// Checks that a LUN's backing store exists, is a regular file or block device, has a whole number of
    /// blocks, and opens with the flags the device will use (read-only or read-write, O_DIRECT), so that
    /// problems surface here with the field's name rather than when the target starts.
    static func backingStoreProblem(
        path: String, readOnly: Bool, direct: Bool, blockSize: Int, syntax: ConfigurationSyntax
    ) -> String? {
        var info = stat()
        if stat(path, &info) != 0 {
            let code = errno
            if code == ENOENT { return "file \(path) does not exist" }
            return "cannot access \(path): \(errorText(code))"
        }
        let kind = info.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFBLK else { return "\(path) is not a regular file or a block device" }
        if kind == S_IFREG {
            let size = Int64(info.st_size)
            if size == 0 { return "file \(path) is empty" }
            if size % Int64(blockSize) != 0 {
                return "size of \(path) (\(size) bytes) is not a multiple of the \(blockSize)-byte block size"
            }
        }
        var flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
        if direct { flags |= oDirect }
        let fd = open(path, flags)
        if fd < 0 {
            let code = errno
            switch code {
            case EACCES, EPERM:
                return readOnly
                    ? "cannot read \(path): permission denied"
                    : "cannot open \(path) for writing: permission denied (or set \(syntax.readOnlyHint))"
            case EROFS:
                return "\(path) is on a read-only file system (set \(syntax.readOnlyHint))"
            case EINVAL where direct:
                return "the file system holding \(path) does not support O_DIRECT (set \(syntax.directOffHint))"
            default:
                return "cannot open \(path): \(errorText(code))"
            }
        }
        close(fd)
        return nil
    }

    /// Identity of an existing file (device and inode), to find LUNs that share a backing store.
    static func fileIdentity(_ path: String) -> FileIdentity? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return FileIdentity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }

    struct FileIdentity: Hashable {
        var device: UInt64
        var inode: UInt64
    }

    /// Checks the state directory: it may not exist yet (the daemon creates it), but if it exists it must be
    /// a writable directory.
    static func stateDirectoryProblem(_ path: String) -> String? {
        var info = stat()
        if stat(path, &info) != 0 {
            let code = errno
            return code == ENOENT ? nil : "cannot access \(path): \(errorText(code))"
        }
        guard info.st_mode & S_IFMT == S_IFDIR else { return "\(path) exists and is not a directory" }
        if access(path, W_OK | X_OK) != 0 { return "directory \(path) is not writable" }
        return nil
    }

    /// Parses a log level name (swift-log's `Logger.Level` raw values).
    static func logLevel(_ name: String) -> Logger.Level? {
        Logger.Level(rawValue: name.lowercased())
    }

    static let logLevelNames = Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")

    /// Checks a TargetAlias (RFC 7143 §13.6): UTF-8 text of at most 255 bytes without control characters.
    static func aliasProblem(_ alias: String) -> String? {
        if alias.utf8.count > 255 { return "longer than 255 bytes" }
        if alias.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            return "must not contain control characters"
        }
        return nil
    }

    /// Checks a unit serial number (VPD 80h, SPC-4 §7.8.16): printable ASCII, 1-254 bytes.
    static func serialProblem(_ serial: String) -> String? {
        if serial.isEmpty { return "must not be empty" }
        if serial.utf8.count > 254 { return "longer than 254 characters" }
        if !serial.unicodeScalars.allSatisfy({ (0x20...0x7E).contains($0.value) }) {
            return "must be printable ASCII (SPC-4 §7.8.16)"
        }
        return nil
    }

    /// The closest of `candidates` to a mistyped `key`, when it is close enough to be a likely typo.
    static func suggestion(for key: String, among candidates: [String]) -> String? {
        let key = key.lowercased()
        if key.count >= 3, let extended = candidates.first(where: { $0.hasPrefix(key) || key.hasPrefix($0) }) {
            return extended
        }
        let scored = candidates.map { ($0, editDistance(key, $0)) }
        guard let best = scored.min(by: { $0.1 < $1.1 }), best.1 <= max(2, key.count / 3) else { return nil }
        return best.0
    }

    /// Levenshtein distance.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a)
        let b = Array(b)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var row = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = row
        }
        return previous[b.count]
    }

    static func errorText(_ code: Int32) -> String {
        guard let text = strerror(code) else { return "errno \(code)" }
        let message = String(cString: text)
        return message.prefix(1).lowercased() + message.dropFirst()
    }

    /// O_DIRECT, which Glibc's Swift overlay does not export (it needs _GNU_SOURCE).
    static var oDirect: Int32 {
        #if os(Linux) && (arch(arm64) || arch(arm))
            0o200000
        #elseif os(Linux)
            0o40000
        #else
            0
        #endif
    }
}

// MARK: - Cross-field checks

/// Where each field of a configuration was written, for the checks that compare fields with each other.
struct FieldLocator {
    var portal: (Int) -> FieldRef
    var targetName: (Int) -> FieldRef
    var lun: (Int, Int) -> FieldRef
    var lunPath: (Int, Int) -> FieldRef
    var mutualChapSecret: (Int) -> FieldRef
    var allow: (Int, Int) -> FieldRef
}

extension Checks {
    /// Checks that span fields: duplicate portals, target names and LUN numbers; several writable LUNs on
    /// one backing store; one secret used in both CHAP directions.
    static func crossCheck(
        _ configuration: DaemonConfiguration, _ locate: FieldLocator, into diagnostics: inout Diagnostics
    ) {
        var portals: [String: Int] = [:]
        for (p, portal) in configuration.portals.enumerated() {
            let key = "\(portal.host) \(portal.port)"
            if let first = portals[key] {
                let ref = locate.portal(p)
                diagnostics.error(ref.field, "duplicate of \(locate.portal(first).field)", at: ref.position)
            } else {
                portals[key] = p
            }
        }
        var names: [String: Int] = [:]
        var stores: [FileIdentity: [(target: Int, lun: Int, readOnly: Bool)]] = [:]
        for (t, target) in configuration.targets.enumerated() {
            if let first = names[target.name] {
                let ref = locate.targetName(t)
                diagnostics.error(
                    ref.field, "duplicate target name \"\(target.name)\" (also \(locate.targetName(first).field))",
                    at: ref.position)
            } else {
                names[target.name] = t
            }
            var luns: [UInt64: Int] = [:]
            for (l, unit) in target.logicalUnits.enumerated() {
                if let first = luns[unit.lun] {
                    let ref = locate.lun(t, l)
                    diagnostics.error(
                        ref.field, "LUN \(unit.lun) is already used by \(locate.lun(t, first).field)", at: ref.position)
                } else {
                    luns[unit.lun] = l
                }
                if let identity = fileIdentity(unit.path) {
                    stores[identity, default: []].append((t, l, unit.readOnly))
                }
            }
            if let chap = target.chap, let mutual = target.mutualChap, chap.secret == mutual.secret,
                !chap.secret.isEmpty
            {
                let ref = locate.mutualChapSecret(t)
                diagnostics.error(
                    ref.field,
                    "must differ from the one-way CHAP secret: a secret used to authenticate initiators must not "
                        + "authenticate the target (RFC 7143 §12.1.3)", at: ref.position)
            }
            var allowed: Set<String> = []
            for (a, name) in target.allowedInitiators.enumerated() where !allowed.insert(name).inserted {
                let ref = locate.allow(t, a)
                diagnostics.warning(ref.field, "\"\(name)\" is listed twice", at: ref.position)
            }
        }
        let shared = stores.values.filter { $0.count > 1 && $0.contains(where: { !$0.readOnly }) }
        for users in shared.sorted(by: { ($0[0].target, $0[0].lun) < ($1[0].target, $1[0].lun) }) {
            let first = locate.lunPath(users[0].target, users[0].lun)
            for user in users.dropFirst() {
                let ref = locate.lunPath(user.target, user.lun)
                diagnostics.error(
                    ref.field,
                    "same file as \(first.field); a backing store shared by several LUNs must be read-only in all",
                    at: ref.position)
            }
        }
    }
}

extension Checks {
    /// Checks that `path` is an existing, writable directory (the repository, the cache file's directory).
    static func existingDirectoryProblem(_ path: String) -> String? {
        var info = stat()
        if stat(path, &info) != 0 {
            let code = errno
            return code == ENOENT ? "directory \(path) does not exist" : "cannot access \(path): \(errorText(code))"
        }
        guard info.st_mode & S_IFMT == S_IFDIR else { return "\(path) is not a directory" }
        if access(path, W_OK | X_OK) != 0 { return "directory \(path) is not writable" }
        return nil
    }
}
