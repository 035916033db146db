// A small, strict TOML parser for the subset livemountd's configuration uses
// (TOML 1.0.0, https://toml.io/en/v1.0.0):
//
// - comments, `[table]` and `[[array.of.tables]]` headers, bare, quoted and dotted keys;
// - basic strings with escapes and literal strings (single line);
// - integers (decimal with `_` separators, `0x`, `0o`, `0b`), booleans;
// - arrays (may span lines, trailing comma allowed) and inline tables.
//
// Floats, dates/times and multi-line strings are rejected with a clear error
// rather than half-supported. Every error carries a 1-based line and column.

// MARK: - Values

/// A position in a TOML document: 1-based line and column (in Unicode scalars).
public struct TOMLPosition: Sendable, Equatable, Hashable, CustomStringConvertible {
    public var line: Int
    public var column: Int

    public init(line: Int, column: Int) {
        self.line = line
        self.column = column
    }

    public var description: String { "line \(line), column \(column)" }
}

/// A TOML value of the supported subset.
public indirect enum TOMLValue: Sendable, Equatable {
    case string(String)
    case integer(Int64)
    case boolean(Bool)
    case array([TOMLValue])
    case table(TOMLTable)

    /// The TOML name of the value's type, for error messages ("expected a string, found an integer").
    public var typeDescription: String {
        switch self {
        case .string: "a string"
        case .integer: "an integer"
        case .boolean: "a boolean"
        case .array: "an array"
        case .table: "a table"
        }
    }
}

/// A TOML table: keys in document order, each with its value and where the key was written.
public struct TOMLTable: Sendable, Equatable {
    /// Where the table was opened (its header, the `{` of an inline table, or the first dotted key).
    public var position: TOMLPosition
    /// Keys in the order they were first defined.
    public private(set) var keys: [String]
    private var entries: [String: Entry]

    private struct Entry: Sendable, Equatable {
        var value: TOMLValue
        var position: TOMLPosition
    }

    public init(position: TOMLPosition = TOMLPosition(line: 1, column: 1)) {
        self.position = position
        self.keys = []
        self.entries = [:]
    }

    /// The value for `key`, or nil.
    public subscript(key: String) -> TOMLValue? { entries[key]?.value }

    /// Where `key` was defined (for an array of tables, its first header).
    public func position(of key: String) -> TOMLPosition? { entries[key]?.position }

    /// Adds or replaces `key`.
    public mutating func set(_ key: String, _ value: TOMLValue, at position: TOMLPosition) {
        if entries[key] == nil { keys.append(key) }
        entries[key] = Entry(value: value, position: position)
    }
}

/// A syntax or structure error in a TOML document.
public struct TOMLError: Error, Sendable, Equatable, CustomStringConvertible {
    public var position: TOMLPosition
    public var message: String

    public init(_ message: String, at position: TOMLPosition) {
        self.message = message
        self.position = position
    }

    public var line: Int { position.line }
    public var column: Int { position.column }
    public var description: String { "\(position): \(message)" }
}

// MARK: - Parser

/// Parses a TOML document into a `TOMLTable`.
///
/// ```swift
/// let table = try TOMLParser.parse("[daemon]\nlog_level = \"info\"\n")
/// ```
public struct TOMLParser {
    private let bytes: [UInt8]
    private var index = 0
    private var line = 1
    private var column = 1

    /// The root table and the table that `key = value` lines currently go to.
    private let root: TableNode
    private var current: TableNode

    private init(_ text: String) {
        bytes = Array(text.utf8)
        root = TableNode(kind: .header, position: TOMLPosition(line: 1, column: 1))
        current = root
    }

    /// Parses `text`; throws the first error found, with its line and column.
    public static func parse(_ text: String) throws(TOMLError) -> TOMLTable {
        var parser = TOMLParser(text)
        try parser.parseDocument()
        return parser.root.freeze()
    }

    // MARK: Scanning

    private var position: TOMLPosition { TOMLPosition(line: line, column: column) }
    private var atEnd: Bool { index >= bytes.count }
    private var peek: UInt8? { index < bytes.count ? bytes[index] : nil }

    private func peek(_ offset: Int) -> UInt8? {
        index + offset < bytes.count ? bytes[index + offset] : nil
    }

    /// Consumes one byte, keeping line and column (columns count Unicode scalars, not bytes).
    private mutating func advance() {
        guard index < bytes.count else { return }
        let byte = bytes[index]
        index += 1
        if byte == UInt8(ascii: "\n") {
            line += 1
            column = 1
        } else if byte & 0xC0 != 0x80 {
            column += 1
        }
    }

    private func error(_ message: String, at position: TOMLPosition? = nil) -> TOMLError {
        TOMLError(message, at: position ?? self.position)
    }

    /// A printable rendering of the byte at the cursor, for "found ..." messages.
    private var found: String {
        guard let byte = peek else { return "end of file" }
        switch byte {
        case UInt8(ascii: "\n"), UInt8(ascii: "\r"): return "end of line"
        case 0x20...0x7E: return "'\(Character(UnicodeScalar(byte)))'"
        default:
            let rest = bytes[index...].prefix(4)
            if let scalar = String(decoding: rest, as: UTF8.self).unicodeScalars.first {
                return scalar.value < 0x20 || scalar.value == 0x7F
                    ? "control character \(Self.hex(scalar.value))" : "'\(Character(scalar))'"
            }
            return "byte \(Self.hex(UInt32(byte)))"
        }
    }

    private static func hex(_ value: UInt32) -> String {
        let digits = String(value, radix: 16, uppercase: true)
        return "U+" + String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }

    /// Skips spaces and tabs.
    private mutating func skipWhitespace() {
        while let byte = peek, byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") { advance() }
    }

    /// Skips a `#` comment up to (not including) the end of line; control characters are not allowed in comments.
    private mutating func skipComment() throws(TOMLError) {
        guard peek == UInt8(ascii: "#") else { return }
        while let byte = peek, byte != UInt8(ascii: "\n") {
            if byte == UInt8(ascii: "\r"), peek(1) == UInt8(ascii: "\n") { return }
            if (byte < 0x20 && byte != UInt8(ascii: "\t")) || byte == 0x7F {
                throw error("\(found) is not allowed in a comment")
            }
            advance()
        }
    }

    /// Consumes a newline (LF or CRLF) if one is at the cursor.
    private mutating func consumeNewline() -> Bool {
        if peek == UInt8(ascii: "\n") {
            advance()
            return true
        }
        if peek == UInt8(ascii: "\r"), peek(1) == UInt8(ascii: "\n") {
            advance()
            advance()
            return true
        }
        return false
    }

    /// Skips whitespace, comments and newlines (inside arrays).
    private mutating func skipWhitespaceCommentsAndNewlines() throws(TOMLError) {
        while true {
            skipWhitespace()
            try skipComment()
            if !consumeNewline() { return }
        }
    }

    /// After a header or key/value pair: only whitespace and a comment may follow on the line.
    private mutating func expectEndOfLine() throws(TOMLError) {
        skipWhitespace()
        try skipComment()
        if atEnd || consumeNewline() { return }
        throw error("expected end of line, found \(found)")
    }

    // MARK: Document

    private mutating func parseDocument() throws(TOMLError) {
        while true {
            skipWhitespace()
            try skipComment()
            if atEnd { return }
            if consumeNewline() { continue }
            if peek == UInt8(ascii: "[") {
                try parseHeader()
            } else {
                try parseKeyValue(into: current)
            }
            try expectEndOfLine()
        }
    }

    /// `[a.b]` or `[[a.b]]` (TOML 1.0 "Table", "Array of Tables").
    private mutating func parseHeader() throws(TOMLError) {
        let start = position
        advance()
        let isArray = peek == UInt8(ascii: "[")
        if isArray { advance() }
        skipWhitespace()
        let keyStart = position
        let path = try parseKey()
        skipWhitespace()
        guard peek == UInt8(ascii: "]") else { throw error("expected ']' to close the table header, found \(found)") }
        advance()
        if isArray {
            guard peek == UInt8(ascii: "]") else {
                throw error("expected ']]' to close the array-of-tables header, found \(found)")
            }
            advance()
        }
        var table = root
        for (depth, key) in path.dropLast().enumerated() {
            table = try descend(table, key, path: Array(path[...depth]), at: keyStart)
        }
        let last = path[path.count - 1]
        let name = Self.render(path)
        if isArray {
            switch table.entries[last] {
            case nil:
                table.insert(last, .tableArray([TableNode(kind: .header, position: start)]), at: start)
            case .tableArray(var elements)?:
                elements.append(TableNode(kind: .header, position: start))
                table.entries[last] = .tableArray(elements)
            case .table?:
                throw error("'\(name)' is already a table, it cannot become an array of tables", at: keyStart)
            case .value?:
                throw error("'\(name)' already has a value that is not an array of tables", at: keyStart)
            }
            current = table.arrayTail(last)
        } else {
            switch table.entries[last] {
            case nil:
                let node = TableNode(kind: .header, position: start)
                table.insert(last, .table(node), at: start)
                current = node
            case .table(let node)?:
                switch node.kind {
                case .implicit:
                    node.kind = .header
                    node.position = start
                    current = node
                case .header:
                    throw error("table [\(name)] is defined twice (first at \(node.position))", at: keyStart)
                case .dotted:
                    throw error("table [\(name)] was already defined by dotted keys at \(node.position)", at: keyStart)
                case .inline:
                    throw error(
                        "table [\(name)] was already defined as an inline table at \(node.position)", at: keyStart)
                }
            case .tableArray?:
                throw error("'\(name)' is an array of tables; use [[\(name)]] to add an element", at: keyStart)
            case .value?:
                throw error("'\(name)' already has a value; it cannot also be a table", at: keyStart)
            }
        }
    }

    /// For a header path: the child table `key` of `table`, created implicitly; the last element of an array
    /// of tables; an error for values and inline tables.
    private func descend(_ table: TableNode, _ key: String, path: [String], at position: TOMLPosition) throws(TOMLError)
        -> TableNode
    {
        switch table.entries[key] {
        case nil:
            let node = TableNode(kind: .implicit, position: position)
            table.insert(key, .table(node), at: position)
            return node
        case .table(let node)?:
            if node.kind == .inline {
                throw error("'\(Self.render(path))' is an inline table and cannot be extended", at: position)
            }
            return node
        case .tableArray?:
            return table.arrayTail(key)
        case .value?:
            throw error("'\(Self.render(path))' already has a value that is not a table", at: position)
        }
    }

    /// `key = value`, where key may be dotted; dotted keys create tables (TOML 1.0 "Keys").
    private mutating func parseKeyValue(into target: TableNode) throws(TOMLError) {
        let keyStart = position
        let path = try parseKey()
        skipWhitespace()
        guard peek == UInt8(ascii: "=") else {
            throw error("expected '=' after key '\(Self.render(path))', found \(found)")
        }
        advance()
        skipWhitespace()
        let valueStart = position
        let item = try parseValue()
        var table = target
        for (depth, key) in path.dropLast().enumerated() {
            let name = Self.render(Array(path[...depth]))
            switch table.entries[key] {
            case nil:
                let node = TableNode(kind: .dotted, position: keyStart)
                table.insert(key, .table(node), at: keyStart)
                table = node
            case .table(let node)?:
                switch node.kind {
                case .dotted, .implicit:
                    node.kind = .dotted
                    table = node
                case .header:
                    throw error(
                        "table '\(name)' was defined by a [\(name)] header at \(node.position); "
                            + "it cannot be extended with dotted keys", at: keyStart)
                case .inline:
                    throw error("'\(name)' is an inline table and cannot be extended", at: keyStart)
                }
            case .tableArray?:
                throw error("'\(name)' is an array of tables and cannot be extended with dotted keys", at: keyStart)
            case .value?:
                throw error("'\(name)' already has a value that is not a table", at: keyStart)
            }
        }
        let last = path[path.count - 1]
        if let existing = table.positions[last] {
            throw error("duplicate key '\(Self.render(path))' (first defined at \(existing))", at: keyStart)
        }
        table.insert(last, item, at: item.isTable ? valueStart : keyStart)
        if case .table(let node) = item { node.position = valueStart }
    }

    // MARK: Keys

    /// A possibly dotted key: `a`, `"a b".c`, `'x'.y`.
    private mutating func parseKey() throws(TOMLError) -> [String] {
        var path = [try parseSimpleKey()]
        while true {
            let save = (index, line, column)
            skipWhitespace()
            guard peek == UInt8(ascii: ".") else {
                (index, line, column) = save
                return path
            }
            advance()
            skipWhitespace()
            path.append(try parseSimpleKey())
        }
    }

    private mutating func parseSimpleKey() throws(TOMLError) -> String {
        switch peek {
        case UInt8(ascii: "\"")?:
            if peek(1) == UInt8(ascii: "\""), peek(2) == UInt8(ascii: "\"") {
                throw error("a multi-line string cannot be a key")
            }
            return try parseBasicString()
        case UInt8(ascii: "'")?:
            if peek(1) == UInt8(ascii: "'"), peek(2) == UInt8(ascii: "'") {
                throw error("a multi-line string cannot be a key")
            }
            return try parseLiteralString()
        default:
            var key: [UInt8] = []
            while let byte = peek, Self.isBareKeyByte(byte) {
                key.append(byte)
                advance()
            }
            if key.isEmpty { throw error("expected a key, found \(found)") }
            return String(decoding: key, as: UTF8.self)
        }
    }

    private static func isBareKeyByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"):
            true
        default: false
        }
    }

    /// Renders a key path for messages, quoting parts that are not bare keys.
    static func render(_ path: [String]) -> String {
        path.map { key in
            !key.isEmpty && key.utf8.allSatisfy(isBareKeyByte) ? key : "\"\(key)\""
        }.joined(separator: ".")
    }

    // MARK: Values

    private mutating func parseValue() throws(TOMLError) -> Item {
        switch peek {
        case UInt8(ascii: "\"")?:
            if peek(1) == UInt8(ascii: "\""), peek(2) == UInt8(ascii: "\"") {
                throw error("multi-line strings are not supported")
            }
            return .value(.string(try parseBasicString()))
        case UInt8(ascii: "'")?:
            if peek(1) == UInt8(ascii: "'"), peek(2) == UInt8(ascii: "'") {
                throw error("multi-line strings are not supported")
            }
            return .value(.string(try parseLiteralString()))
        case UInt8(ascii: "[")?:
            return .value(.array(try parseArray()))
        case UInt8(ascii: "{")?:
            return .table(try parseInlineTable())
        case nil, UInt8(ascii: "\n")?, UInt8(ascii: "\r")?, UInt8(ascii: "#")?:
            throw error("expected a value, found \(found)")
        default:
            return .value(try parseScalar())
        }
    }

    /// Booleans and integers; recognizes floats and dates only to reject them clearly.
    private mutating func parseScalar() throws(TOMLError) -> TOMLValue {
        let start = position
        var token: [UInt8] = []
        while let byte = peek, Self.isScalarByte(byte) {
            token.append(byte)
            advance()
        }
        let text = String(decoding: token, as: UTF8.self)
        if token.isEmpty { throw error("expected a value, found \(found)") }
        switch text {
        case "true": return .boolean(true)
        case "false": return .boolean(false)
        case "inf", "+inf", "-inf", "nan", "+nan", "-nan":
            throw error("floating-point numbers are not supported", at: start)
        default: break
        }
        guard let first = token.first, first == UInt8(ascii: "+") || first == UInt8(ascii: "-") || Self.isDigit(first)
        else {
            throw error(
                "expected a value (string, integer, boolean, array or inline table), found '\(text)'", at: start)
        }
        if token.count >= 5, token[0...3].allSatisfy(Self.isDigit), token[4] == UInt8(ascii: "-") {
            throw error("dates and times are not supported", at: start)
        }
        if token.contains(UInt8(ascii: ":")) { throw error("dates and times are not supported", at: start) }
        let isRadix = token.count > 1 && token[0] == UInt8(ascii: "0") && "xob".utf8.contains(token[1])
        if !isRadix,
            token.contains(where: { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") })
        {
            throw error("floating-point numbers are not supported", at: start)
        }
        return .integer(try Self.parseInteger(text, at: start))
    }

    private static func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    private static func isScalarByte(_ byte: UInt8) -> Bool {
        isBareKeyByte(byte) || byte == UInt8(ascii: "+") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: ":")
    }

    /// TOML 1.0 "Integer": optional sign (decimal only), `_` only between digits, no leading zeros,
    /// `0x`/`0o`/`0b` prefixes; must fit in 64 bits.
    static func parseInteger(_ text: String, at position: TOMLPosition) throws(TOMLError) -> Int64 {
        var digits = Substring(text)
        var radix = 10
        var negative = false
        if digits.hasPrefix("0x") || digits.hasPrefix("0o") || digits.hasPrefix("0b") {
            radix = digits.hasPrefix("0x") ? 16 : digits.hasPrefix("0o") ? 8 : 2
            digits = digits.dropFirst(2)
        } else if let sign = digits.first, sign == "+" || sign == "-" {
            negative = sign == "-"
            digits = digits.dropFirst()
        }
        guard !digits.isEmpty else { throw TOMLError("'\(text)' is not a valid integer", at: position) }
        if digits.first == "_" || digits.last == "_" || digits.contains("__") {
            throw TOMLError("'\(text)': '_' is only allowed between digits", at: position)
        }
        let clean = digits.filter { $0 != "_" }
        if radix == 10, clean.count > 1, clean.first == "0" {
            throw TOMLError("'\(text)': leading zeros are not allowed", at: position)
        }
        guard clean.allSatisfy({ $0.isASCII && $0.hexDigitValue.map { $0 < radix } == true }) else {
            throw TOMLError("'\(text)' is not a valid integer", at: position)
        }
        guard let magnitude = UInt64(clean, radix: radix) else {
            throw TOMLError("integer '\(text)' does not fit in 64 bits", at: position)
        }
        if negative {
            guard magnitude <= UInt64(Int64.max) + 1 else {
                throw TOMLError("integer '\(text)' does not fit in 64 bits", at: position)
            }
            return magnitude == UInt64(Int64.max) + 1 ? Int64.min : -Int64(magnitude)
        }
        guard magnitude <= UInt64(Int64.max) else {
            throw TOMLError("integer '\(text)' does not fit in 64 bits", at: position)
        }
        return Int64(magnitude)
    }

    /// `"..."` with escapes `\b \t \n \f \r \" \\ \uXXXX \UXXXXXXXX` (TOML 1.0 "String").
    private mutating func parseBasicString() throws(TOMLError) -> String {
        let start = position
        advance()
        var pending: [UInt8] = []
        while true {
            guard let byte = peek, byte != UInt8(ascii: "\n") else {
                throw error("unterminated string (opened at \(start))")
            }
            if byte == UInt8(ascii: "\"") {
                advance()
                break
            }
            if byte == UInt8(ascii: "\\") {
                let escapeStart = position
                advance()
                guard let code = peek else { throw error("unterminated string (opened at \(start))") }
                advance()
                let scalar: UnicodeScalar
                switch code {
                case UInt8(ascii: "b"): scalar = "\u{08}"
                case UInt8(ascii: "t"): scalar = "\t"
                case UInt8(ascii: "n"): scalar = "\n"
                case UInt8(ascii: "f"): scalar = "\u{0C}"
                case UInt8(ascii: "r"): scalar = "\r"
                case UInt8(ascii: "\""): scalar = "\""
                case UInt8(ascii: "\\"): scalar = "\\"
                case UInt8(ascii: "u"), UInt8(ascii: "U"):
                    let count = code == UInt8(ascii: "u") ? 4 : 8
                    var value: UInt32 = 0
                    for _ in 0..<count {
                        guard let digit = peek, let nibble = Character(UnicodeScalar(digit)).hexDigitValue else {
                            throw error(
                                "\\\(Character(UnicodeScalar(code))) needs \(count) hex digits", at: escapeStart)
                        }
                        value = value << 4 | UInt32(nibble)
                        advance()
                    }
                    guard let valid = UnicodeScalar(value) else {
                        throw error("\(Self.hex(value)) is not a Unicode scalar value", at: escapeStart)
                    }
                    scalar = valid
                default:
                    throw error("invalid escape sequence '\\\(Character(UnicodeScalar(code)))'", at: escapeStart)
                }
                pending.append(contentsOf: String(scalar).utf8)
                continue
            }
            if Self.isForbiddenControl(byte) { throw error("\(found) must be escaped in a string") }
            pending.append(byte)
            advance()
        }
        return String(decoding: pending, as: UTF8.self)
    }

    /// `'...'`: no escapes, no control characters except tab.
    private mutating func parseLiteralString() throws(TOMLError) -> String {
        let start = position
        advance()
        var pending: [UInt8] = []
        while true {
            guard let byte = peek, byte != UInt8(ascii: "\n") else {
                throw error("unterminated string (opened at \(start))")
            }
            if byte == UInt8(ascii: "'") {
                advance()
                break
            }
            if Self.isForbiddenControl(byte) { throw error("\(found) is not allowed in a literal string") }
            pending.append(byte)
            advance()
        }
        return String(decoding: pending, as: UTF8.self)
    }

    private static func isForbiddenControl(_ byte: UInt8) -> Bool {
        (byte < 0x20 && byte != UInt8(ascii: "\t")) || byte == 0x7F
    }

    /// `[ v, v, ]`: may span lines and hold comments; a trailing comma is allowed.
    private mutating func parseArray() throws(TOMLError) -> [TOMLValue] {
        advance()
        var elements: [TOMLValue] = []
        while true {
            try skipWhitespaceCommentsAndNewlines()
            if peek == UInt8(ascii: "]") {
                advance()
                return elements
            }
            let item = try parseValue()
            elements.append(item.frozen)
            try skipWhitespaceCommentsAndNewlines()
            if peek == UInt8(ascii: ",") {
                advance()
            } else if peek == UInt8(ascii: "]") {
                advance()
                return elements
            } else {
                throw error("expected ',' or ']' in array, found \(found)")
            }
        }
    }

    /// `{ k = v, k2 = v2 }` on one line, no trailing comma (TOML 1.0 "Inline Table").
    private mutating func parseInlineTable() throws(TOMLError) -> TableNode {
        let node = TableNode(kind: .inline, position: position)
        advance()
        skipWhitespace()
        if peek == UInt8(ascii: "}") {
            advance()
            return node
        }
        while true {
            skipWhitespace()
            if peek == UInt8(ascii: "}") { throw error("a trailing comma is not allowed in an inline table") }
            try parseKeyValue(into: node)
            skipWhitespace()
            if peek == UInt8(ascii: ",") {
                advance()
            } else if peek == UInt8(ascii: "}") {
                advance()
                return node
            } else {
                throw error("expected ',' or '}' in inline table, found \(found)")
            }
        }
    }
}

// MARK: - Build tree

/// How a table came to exist; decides whether a later header or dotted key may define or extend it.
private enum TableKind {
    /// Created as a parent of a header (`[a.b]` creates `a`); a later `[a]` may define it.
    case implicit
    /// Defined by its own header.
    case header
    /// Created by a dotted key (`a.b = 1` creates `a`).
    case dotted
    /// An inline table: closed once written.
    case inline
}

/// What a key holds while the document is parsed.
private enum Item {
    case value(TOMLValue)
    case table(TableNode)
    case tableArray([TableNode])

    var isTable: Bool {
        if case .table = self { return true }
        return false
    }

    var frozen: TOMLValue {
        switch self {
        case .value(let value): value
        case .table(let node): .table(node.freeze())
        case .tableArray(let nodes): .array(nodes.map { .table($0.freeze()) })
        }
    }
}

/// A mutable table during parsing (a reference, so headers can keep pointing into the tree).
private final class TableNode {
    var kind: TableKind
    var position: TOMLPosition
    var entries: [String: Item] = [:]
    var positions: [String: TOMLPosition] = [:]
    var order: [String] = []

    init(kind: TableKind, position: TOMLPosition) {
        self.kind = kind
        self.position = position
    }

    func insert(_ key: String, _ item: Item, at position: TOMLPosition) {
        if entries[key] == nil { order.append(key) }
        entries[key] = item
        positions[key] = position
    }

    /// The last table of the array of tables at `key` (which exists and is not empty).
    func arrayTail(_ key: String) -> TableNode {
        guard case .tableArray(let nodes)? = entries[key], let last = nodes.last else {
            preconditionFailure("arrayTail called on a key that is not an array of tables")
        }
        return last
    }

    func freeze() -> TOMLTable {
        var table = TOMLTable(position: position)
        for key in order {
            guard let item = entries[key], let position = positions[key] else { continue }
            table.set(key, item.frozen, at: position)
        }
        return table
    }
}
