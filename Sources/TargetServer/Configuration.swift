import SCSI

/// A CHAP user name and secret (RFC 7143 §12.1.3).
public struct CHAPCredentials: Sendable, Equatable {
    public var user: String
    public var secret: String
    public init(user: String, secret: String) {
        self.user = user
        self.secret = secret
    }
}

/// One listening address (a network portal, RFC 7143 §4.4.1).
public struct PortalConfiguration: Sendable, Equatable {
    public var host: String
    public var port: Int
    public init(host: String, port: Int = 3260) {
        self.host = host
        self.port = port
    }
}

/// One iSCSI target: its name, LUs and who may log in.
public struct TargetConfiguration: Sendable {
    public var name: String
    public var alias: String?
    public var logicalUnits: [LogicalUnitConfiguration]
    /// CHAP credentials an initiator must prove (one-way CHAP); nil = AuthMethod=None allowed.
    public var chap: CHAPCredentials?
    /// Credentials the target proves to the initiator (mutual CHAP).
    public var mutualChap: CHAPCredentials?
    /// InitiatorNames allowed to log in; empty = any.
    public var allowedInitiators: [String]

    public init(
        name: String, alias: String? = nil, logicalUnits: [LogicalUnitConfiguration], chap: CHAPCredentials? = nil,
        mutualChap: CHAPCredentials? = nil, allowedInitiators: [String] = []
    ) {
        self.name = name
        self.alias = alias
        self.logicalUnits = logicalUnits
        self.chap = chap
        self.mutualChap = mutualChap
        self.allowedInitiators = allowedInitiators
    }
}

extension TargetConfiguration {
    /// The target's login policy (everything but its LUs).
    public var loginPolicy: LoginPolicy {
        get {
            LoginPolicy(alias: alias, chap: chap, mutualChap: mutualChap, allowedInitiators: allowedInitiators)
        }
        set {
            alias = newValue.alias
            chap = newValue.chap
            mutualChap = newValue.mutualChap
            allowedInitiators = newValue.allowedInitiators
        }
    }
}

/// What a target's logins are checked against: its alias, CHAP (RFC 7143 §12.1.3), mutual CHAP and initiator
/// ACL. `ISCSITargetServer.updateLoginPolicy(target:_:)` changes it while the target serves: new logins and
/// SendTargets answers use the new policy; sessions already logged in go on undisturbed.
public struct LoginPolicy: Sendable, Equatable {
    /// TargetAlias (RFC 7143 §13.6).
    public var alias: String?
    /// CHAP credentials an initiator must prove (one-way CHAP); nil = AuthMethod=None allowed.
    public var chap: CHAPCredentials?
    /// Credentials the target proves to the initiator (mutual CHAP).
    public var mutualChap: CHAPCredentials?
    /// InitiatorNames allowed to log in (compared case-insensitively, RFC 3722); empty = any.
    public var allowedInitiators: [String]

    public init(
        alias: String? = nil, chap: CHAPCredentials? = nil, mutualChap: CHAPCredentials? = nil,
        allowedInitiators: [String] = []
    ) {
        self.alias = alias
        self.chap = chap
        self.mutualChap = mutualChap
        self.allowedInitiators = allowedInitiators
    }
}

/// Limits the target declares in login negotiation (RFC 7143 §13).
public struct NegotiationLimits: Sendable, Equatable {
    /// Our MaxRecvDataSegmentLength.
    public var maxRecvDataSegmentLength = 262_144
    public var maxBurstLength = 1_048_576
    public var firstBurstLength = 262_144
    public var initialR2T = false
    public var immediateData = true
    public var maxOutstandingR2T = 1
    /// The CmdSN window: how many commands an initiator may have outstanding.
    public var commandWindow = 256
    public init() {}
}

/// Everything the iSCSI target server needs.
public struct ServerConfiguration: Sendable {
    public var portals: [PortalConfiguration]
    public var targets: [TargetConfiguration]
    /// CHAP for discovery sessions; nil = none required.
    public var discoveryChap: CHAPCredentials?
    public var limits: NegotiationLimits
    /// Where state that must survive restarts lives (persistent reservations); nil = memory only.
    public var stateDirectory: String?
    /// Seconds between target NOP-In pings on an idle connection; 0 disables (RFC 7143 §11.19).
    public var nopInInterval: Int
    /// Seconds without an answer to a ping before the connection is dropped.
    public var nopInTimeout: Int
    /// Seconds a new connection may take to complete its login before it is dropped.
    public var loginTimeout: Int

    public init(
        portals: [PortalConfiguration], targets: [TargetConfiguration], discoveryChap: CHAPCredentials? = nil,
        limits: NegotiationLimits = NegotiationLimits(), stateDirectory: String? = nil, nopInInterval: Int = 30,
        nopInTimeout: Int = 30, loginTimeout: Int = 30
    ) {
        self.portals = portals
        self.targets = targets
        self.discoveryChap = discoveryChap
        self.limits = limits
        self.stateDirectory = stateDirectory
        self.nopInInterval = nopInInterval
        self.nopInTimeout = nopInTimeout
        self.loginTimeout = loginTimeout
    }
}
