import TargetServer

/// The configuration's rules for what the control API changes while the daemon runs (targets, ACLs, CHAP,
/// raw LUNs): the same names, credentials and backing stores are accepted as in the file, refused with the same
/// words, each message starting with the field of the request it is about.
public enum ControlChecks {
    /// LUN numbers a target accepts: the flat space addressing range (SAM-5 §4.7.7).
    public static var lunRange: ClosedRange<UInt64> { Checks.lunRange }

    /// Logical block sizes a raw LUN may have.
    public static var blockSizes: [Int] { Checks.blockSizes }

    /// The shortest CHAP secret the API accepts: RFC 7143 §12.1.3 asks for at least 12 bytes (96 bits) unless
    /// IPsec protects the connection, which LiveMount does not do. The file only warns (`--check` shows it); the
    /// API, which has no place for a warning, refuses.
    public static let minimumCHAPSecretBytes = 12

    /// Why `name` is not an iSCSI name (RFC 7143 §4.2.7), as `field: reason`; nil when it is one.
    public static func iscsiNameProblem(_ name: String, field: String) -> String? {
        Checks.iscsiNameProblem(name).map { "\(field): \($0)" }
    }

    /// Why `alias` is not a TargetAlias (RFC 7143 §13.6); nil when it is one.
    public static func aliasProblem(_ alias: String, field: String) -> String? {
        Checks.aliasProblem(alias).map { "\(field): \($0)" }
    }

    /// What is wrong with CHAP credentials (RFC 7143 §12.1.3): the file's errors (empty or over-long user or
    /// secret, control characters) and a secret shorter than `minimumCHAPSecretBytes`. Empty when they are fine.
    public static func chapProblems(_ credentials: CHAPCredentials, userField: String, secretField: String)
        -> [String]
    {
        var diagnostics = Diagnostics()
        Checks.checkCHAP(
            credentials, userField: FieldRef(field: userField), secretField: FieldRef(field: secretField),
            into: &diagnostics)
        var problems = diagnostics.errors.map(\.description)
        let length = credentials.secret.utf8.count
        if length > 0 && length < minimumCHAPSecretBytes {
            problems.append(
                "\(secretField): \(length) bytes is shorter than the \(minimumCHAPSecretBytes) bytes (96 bits) "
                    + "RFC 7143 §12.1.3 requires unless IPsec is used")
        }
        return problems
    }

    /// Why `mutual` cannot go with `chap` (RFC 7143 §12.1.3: mutual CHAP needs one-way CHAP, and a secret that
    /// authenticates initiators must not authenticate the target); nil when it can.
    public static func mutualCHAPProblem(chap: CHAPCredentials?, mutual: CHAPCredentials?, field: String) -> String? {
        guard let mutual else { return nil }
        guard let chap else {
            return "\(field): mutual CHAP requires one-way CHAP: set chap as well (RFC 7143 §12.1.3)"
        }
        if chap.secret == mutual.secret {
            return "\(field): must differ from the one-way CHAP secret: a secret used to authenticate initiators "
                + "must not authenticate the target (RFC 7143 §12.1.3)"
        }
        return nil
    }

    /// Why the image file or block device at `path` cannot back a LUN opened this way (absolute path, exists,
    /// regular file or block device, a whole number of blocks, opens with these flags); nil when it can.
    public static func backingStoreProblem(path: String, readOnly: Bool, direct: Bool, blockSize: Int, field: String)
        -> String?
    {
        let problem =
            Checks.absolutePathProblem(path)
            ?? Checks.backingStoreProblem(
                path: path, readOnly: readOnly, direct: direct, blockSize: blockSize, syntax: .controlAPI)
        return problem.map { "\(field): \($0)" }
    }

    /// Whether two paths name the same file or device (same device and inode), to keep a writable backing
    /// store from being served by two LUNs at once.
    public static func sameBackingStore(_ a: String, _ b: String) -> Bool {
        guard let first = Checks.fileIdentity(a), let second = Checks.fileIdentity(b) else { return false }
        return first == second
    }
}
