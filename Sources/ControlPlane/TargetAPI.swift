// MARK: - Targets, raw LUNs, ACLs and CHAP (shared by livemountd and the livemount CLI)
//
// GET /v1/targets, GET /v1/targets/NAME         → [TargetInfo], TargetInfo
// POST /v1/targets                              → TargetInfo (201)
// DELETE /v1/targets/NAME[?force=true]          → TargetInfo (what was removed; sessions = sessions ended)
// PUT /v1/targets/NAME/acl, POST .../acl        → TargetInfo
// DELETE /v1/targets/NAME/acl/INITIATOR         → TargetInfo
// PUT /v1/targets/NAME/chap, DELETE .../chap    → TargetInfo
// POST /v1/targets/NAME/luns                    → LUNInfo (201)
// DELETE /v1/targets/NAME/luns/N                → LUNInfo (what was removed)

/// A CHAP user name and secret in a request (RFC 7143 §12.1.3). Secrets go in, never out: no answer of the API
/// carries one.
public struct CHAPSecret: Codable, Sendable, Equatable {
    public var user: String
    public var secret: String

    public init(user: String, secret: String) {
        self.user = user
        self.secret = secret
    }
}

/// `POST /v1/targets`: serve a new target (with no LUN yet) from now on.
public struct TargetCreateRequest: Codable, Sendable, Equatable {
    /// The iSCSI name (RFC 7143 §4.2.7), lowercase for `iqn.` names.
    public var name: String
    /// TargetAlias (RFC 7143 §13.6).
    public var alias: String?
    /// InitiatorNames allowed to log in; nil or empty = any.
    public var allowedInitiators: [String]?
    /// One-way CHAP: what initiators must prove.
    public var chap: CHAPSecret?
    /// Mutual CHAP: what the target proves (needs `chap`).
    public var mutualChap: CHAPSecret?

    public init(
        name: String, alias: String? = nil, allowedInitiators: [String]? = nil, chap: CHAPSecret? = nil,
        mutualChap: CHAPSecret? = nil
    ) {
        self.name = name
        self.alias = alias
        self.allowedInitiators = allowedInitiators
        self.chap = chap
        self.mutualChap = mutualChap
    }
}

/// `PUT /v1/targets/NAME/acl`: the whole initiator ACL; empty = any initiator may log in.
public struct ACLRequest: Codable, Sendable, Equatable {
    public var allowedInitiators: [String]

    public init(allowedInitiators: [String]) {
        self.allowedInitiators = allowedInitiators
    }
}

/// `POST /v1/targets/NAME/acl`: allow one more initiator.
public struct ACLEntryRequest: Codable, Sendable, Equatable {
    public var initiator: String

    public init(initiator: String) {
        self.initiator = initiator
    }
}

/// `PUT /v1/targets/NAME/chap`: require CHAP from initiators (and prove the target with mutual CHAP).
public struct CHAPRequest: Codable, Sendable, Equatable {
    public var user: String
    public var secret: String
    /// Mutual CHAP: the user name the target answers with; needs `mutualSecret`.
    public var mutualUser: String?
    public var mutualSecret: String?

    public init(user: String, secret: String, mutualUser: String? = nil, mutualSecret: String? = nil) {
        self.user = user
        self.secret = secret
        self.mutualUser = mutualUser
        self.mutualSecret = mutualSecret
    }
}

/// `POST /v1/targets/NAME/luns`: serve a raw image file or block device as a LUN.
public struct LUNCreateRequest: Codable, Sendable, Equatable {
    /// nil = the lowest free LUN of the target.
    public var lun: UInt64?
    /// Absolute path of the image file or block device.
    public var path: String
    public var readOnly: Bool?
    /// 512 (default) or 4096.
    public var blockSize: Int?
    /// Open with O_DIRECT (default true; false for tmpfs).
    public var direct: Bool?

    public init(lun: UInt64? = nil, path: String, readOnly: Bool? = nil, blockSize: Int? = nil, direct: Bool? = nil) {
        self.lun = lun
        self.path = path
        self.readOnly = readOnly
        self.blockSize = blockSize
        self.direct = direct
    }
}

/// One LUN of a target as the API shows it.
public struct LUNInfo: Codable, Sendable, Equatable {
    public var lun: UInt64
    /// `image` (a raw file or block device), `backup` (a live mount), `archived` (a placeholder: archived, or
    /// being recalled) or `other`.
    public var kind: String
    /// `configuration` (the file) or `api` (a control API call: `POST .../luns` or a mount).
    public var origin: String
    /// The image file or block device, for `image` LUNs.
    public var path: String?
    public var sizeBytes: UInt64
    public var blockSize: Int
    public var readOnly: Bool

    public init(
        lun: UInt64, kind: String, origin: String, path: String?, sizeBytes: UInt64, blockSize: Int, readOnly: Bool
    ) {
        self.lun = lun
        self.kind = kind
        self.origin = origin
        self.path = path
        self.sizeBytes = sizeBytes
        self.blockSize = blockSize
        self.readOnly = readOnly
    }
}

/// One target as the API shows it (never with a CHAP secret).
public struct TargetInfo: Codable, Sendable, Equatable {
    public var name: String
    public var alias: String?
    /// `configuration` (the file) or `api` (`POST /v1/targets`).
    public var origin: String
    public var luns: [LUNInfo]
    /// InitiatorNames allowed to log in; empty = any.
    public var allowedInitiators: [String]
    /// The CHAP user initiators must log in as; nil = no CHAP.
    public var chapUser: String?
    /// The user name the target proves itself as with mutual CHAP; nil = none.
    public var mutualChapUser: String?
    /// Sessions logged in now (after a removal: the sessions it ended).
    public var sessions: Int

    public init(
        name: String, alias: String?, origin: String, luns: [LUNInfo], allowedInitiators: [String],
        chapUser: String?, mutualChapUser: String?, sessions: Int
    ) {
        self.name = name
        self.alias = alias
        self.origin = origin
        self.luns = luns
        self.allowedInitiators = allowedInitiators
        self.chapUser = chapUser
        self.mutualChapUser = mutualChapUser
        self.sessions = sessions
    }
}
