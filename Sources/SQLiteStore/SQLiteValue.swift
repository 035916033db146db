/// A value SQLite stores: one of its five storage classes.
public enum SQLiteValue: Sendable, Equatable, Hashable {
    case integer(Int64)
    case real(Double)
    case text(String)
    case blob([UInt8])
    case null

    /// The value as an integer, when it is one.
    public var int64Value: Int64? {
        if case .integer(let v) = self { return v }
        return nil
    }

    /// The value as a double; integers convert.
    public var doubleValue: Double? {
        switch self {
        case .real(let v): return v
        case .integer(let v): return Double(v)
        default: return nil
        }
    }

    /// The value as text, when it is text.
    public var stringValue: String? {
        if case .text(let v) = self { return v }
        return nil
    }

    /// The value as bytes; text converts to its UTF-8 bytes.
    public var blobValue: [UInt8]? {
        switch self {
        case .blob(let v): return v
        case .text(let v): return Array(v.utf8)
        default: return nil
        }
    }

    public var isNull: Bool { self == .null }
}

/// Something that binds to a statement parameter.
public protocol SQLiteBindable: Sendable {
    var sqliteValue: SQLiteValue { get }
}

extension Int64: SQLiteBindable {
    public var sqliteValue: SQLiteValue { .integer(self) }
}

extension Int: SQLiteBindable {
    public var sqliteValue: SQLiteValue { .integer(Int64(self)) }
}

extension Int32: SQLiteBindable {
    public var sqliteValue: SQLiteValue { .integer(Int64(self)) }
}

extension UInt32: SQLiteBindable {
    public var sqliteValue: SQLiteValue { .integer(Int64(self)) }
}

extension Bool: SQLiteBindable {
    public var sqliteValue: SQLiteValue { .integer(self ? 1 : 0) }
}

extension Double: SQLiteBindable {
    public var sqliteValue: SQLiteValue { .real(self) }
}

extension String: SQLiteBindable {
    public var sqliteValue: SQLiteValue { .text(self) }
}

extension Array: SQLiteBindable where Element == UInt8 {
    public var sqliteValue: SQLiteValue { .blob(self) }
}

extension Optional: SQLiteBindable where Wrapped: SQLiteBindable {
    public var sqliteValue: SQLiteValue { self?.sqliteValue ?? .null }
}

extension SQLiteValue: SQLiteBindable {
    public var sqliteValue: SQLiteValue { self }
}

/// One result row, copied out of SQLite: values by column index and name.
public struct SQLiteRow: Sendable, Equatable {
    /// Column names, in result order.
    public let columns: [String]
    /// Values, in result order.
    public let values: [SQLiteValue]

    public init(columns: [String], values: [SQLiteValue]) {
        self.columns = columns
        self.values = values
    }

    public subscript(index: Int) -> SQLiteValue {
        values.indices.contains(index) ? values[index] : .null
    }

    public subscript(name: String) -> SQLiteValue {
        guard let index = columns.firstIndex(of: name) else { return .null }
        return values[index]
    }

    public func int64(_ index: Int) -> Int64? { self[index].int64Value }
    public func double(_ index: Int) -> Double? { self[index].doubleValue }
    public func string(_ index: Int) -> String? { self[index].stringValue }
    public func blob(_ index: Int) -> [UInt8]? { self[index].blobValue }
    public func int64(_ name: String) -> Int64? { self[name].int64Value }
    public func double(_ name: String) -> Double? { self[name].doubleValue }
    public func string(_ name: String) -> String? { self[name].stringValue }
    public func blob(_ name: String) -> [UInt8]? { self[name].blobValue }
}
