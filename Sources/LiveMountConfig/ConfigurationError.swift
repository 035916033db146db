/// One problem with a configuration, naming the field it is about:
/// `targets[1].luns[0].path: file /x/y.img does not exist`.
public struct ConfigurationIssue: Sendable, Equatable, CustomStringConvertible {
    /// The field, as written in the file (`portals[0].listen`) or on the command line (`--lun 1=/x.img`).
    public var field: String
    public var message: String
    /// Where the field is in the TOML file, when it came from one.
    public var position: TOMLPosition?

    public init(field: String, message: String, position: TOMLPosition? = nil) {
        self.field = field
        self.message = message
        self.position = position
    }

    public var description: String { "\(field): \(message)" }
}

/// Why a configuration was rejected.
public enum ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file could not be read.
    case unreadable(path: String, reason: String)
    /// The file is not valid TOML (or uses TOML the parser does not support).
    case syntax(TOMLError)
    /// The document is TOML but the configuration is wrong; every problem found, in document order.
    case invalid([ConfigurationIssue])

    /// The problems, one per line; syntax errors as `line L, column C: message`.
    public var description: String {
        switch self {
        case .unreadable(let path, let reason): "cannot read \(path): \(reason)"
        case .syntax(let error): error.description
        case .invalid(let issues): issues.map(\.description).joined(separator: "\n")
        }
    }

    /// The problems, each formatted for a terminal with the file name and line in front
    /// (`conf/livemount.toml:12:10: portals[0].listen: port 70000 out of range`).
    public func messages(file: String?) -> [String] {
        func prefix(_ position: TOMLPosition?) -> String {
            switch (file, position) {
            case (let file?, let position?): "\(file):\(position.line):\(position.column): "
            case (let file?, nil): "\(file): "
            case (nil, _): ""
            }
        }
        switch self {
        case .unreadable: return [description]
        case .syntax(let error): return [prefix(error.position) + error.message]
        case .invalid(let issues): return issues.map { prefix($0.position) + $0.description }
        }
    }

    /// The issues of an `.invalid` error; empty otherwise.
    public var issues: [ConfigurationIssue] {
        if case .invalid(let issues) = self { return issues }
        return []
    }
}
