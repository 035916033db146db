import Testing

@testable import LiveMountConfig

/// Parses `text`, expecting an error; returns it.
private func parseError(_ text: String) -> TOMLError? {
    do {
        _ = try TOMLParser.parse(text)
        return nil
    } catch {
        return error
    }
}

@Suite("TOML parser")
struct TOMLParserTests {
    // MARK: - Valid documents

    @Test("parses tables, arrays of tables, strings, integers, booleans and arrays")
    func validDocument() throws {
        let text = """
            # comment
            title = "LiveMount" # trailing comment
            [daemon]
            state_dir = '/var/lib/livemount'
            count = 1_048_576
            negative = -42
            hex = 0xFF
            octal = 0o17
            binary = 0b101
            flag = true
            off = false
            list = ["a", "b",
              # comment inside an array
              "c",
            ]
            empty = []

            [[targets]]
            name = "t0"
              [[targets.luns]]
              lun = 0
              [[targets.luns]]
              lun = 1
            [[targets]]
            name = "t1"
            """
        let doc = try TOMLParser.parse(text)
        #expect(doc["title"] == .string("LiveMount"))
        guard case .table(let daemon)? = doc["daemon"] else {
            Issue.record("daemon is not a table")
            return
        }
        #expect(daemon["state_dir"] == .string("/var/lib/livemount"))
        #expect(daemon["count"] == .integer(1_048_576))
        #expect(daemon["negative"] == .integer(-42))
        #expect(daemon["hex"] == .integer(255))
        #expect(daemon["octal"] == .integer(15))
        #expect(daemon["binary"] == .integer(5))
        #expect(daemon["flag"] == .boolean(true))
        #expect(daemon["off"] == .boolean(false))
        #expect(daemon["list"] == .array([.string("a"), .string("b"), .string("c")]))
        #expect(daemon["empty"] == .array([]))
        #expect(
            daemon.keys == ["state_dir", "count", "negative", "hex", "octal", "binary", "flag", "off", "list", "empty"])
        guard case .array(let targets)? = doc["targets"], targets.count == 2, case .table(let t0) = targets[0],
            case .table(let t1) = targets[1], case .array(let luns)? = t0["luns"]
        else {
            Issue.record("targets has the wrong shape: \(String(describing: doc["targets"]))")
            return
        }
        #expect(t0["name"] == .string("t0"))
        #expect(t1["name"] == .string("t1"))
        #expect(t1["luns"] == nil)
        #expect(luns.count == 2)
        if case .table(let lun1) = luns[1] { #expect(lun1["lun"] == .integer(1)) }
        #expect(t0.position.line == 18)
        #expect(doc.position(of: "title") == TOMLPosition(line: 2, column: 1))
    }

    @Test("decodes every escape in basic strings and none in literal strings")
    func escapes() throws {
        let doc = try TOMLParser.parse(
            #"a = "q\"b\\t\tn\nr\rf\fb\be\u00E9\U0001F600"  "# + "\n" + #"b = 'C:\no\escape'"#)
        #expect(doc["a"] == .string("q\"b\\t\tn\nr\rf\u{0C}b\u{08}e\u{E9}\u{1F600}"))
        #expect(doc["b"] == .string(#"C:\no\escape"#))
    }

    @Test("inline tables, dotted keys and quoted keys")
    func inlineAndDotted() throws {
        let doc = try TOMLParser.parse(
            """
            chap = { user = "u", secret = "s" }
            empty = {}
            a.b.c = 1
            a.b.d = 2
            "quoted key".x = 'y'
            site."example.com" = true
            [t]
            inline = { nested.deep = 3 }
            """)
        if case .table(let chap)? = doc["chap"] {
            #expect(chap.keys == ["user", "secret"])
            #expect(chap["user"] == .string("u"))
            #expect(chap["secret"] == .string("s"))
            #expect(chap.position == TOMLPosition(line: 1, column: 8))
        } else {
            Issue.record("chap is not a table")
        }
        guard case .table(let a)? = doc["a"], case .table(let b)? = a["b"] else {
            Issue.record("a.b is not a table")
            return
        }
        #expect(b["c"] == .integer(1))
        #expect(b["d"] == .integer(2))
        if case .table(let quoted)? = doc["quoted key"] {
            #expect(quoted["x"] == .string("y"))
        } else {
            Issue.record("quoted key missing")
        }
        if case .table(let site)? = doc["site"] {
            #expect(site["example.com"] == .boolean(true))
        } else {
            Issue.record("site missing")
        }
        guard case .table(let t)? = doc["t"], case .table(let inline)? = t["inline"],
            case .table(let nested)? = inline["nested"]
        else {
            Issue.record("t.inline.nested missing")
            return
        }
        #expect(nested["deep"] == .integer(3))
        if case .table(let empty)? = doc["empty"] { #expect(empty.keys.isEmpty) }
    }

    @Test("a header may define a table that an earlier header created implicitly; CRLF line ends work")
    func implicitThenExplicit() throws {
        let doc = try TOMLParser.parse("[a.b]\r\nx = 1\r\n[a]\r\ny = 2\r\n")
        guard case .table(let a)? = doc["a"], case .table(let b)? = a["b"] else {
            Issue.record("a.b missing")
            return
        }
        #expect(a["y"] == .integer(2))
        #expect(b["x"] == .integer(1))
    }

    @Test("integer limits: Int64.min and Int64.max parse")
    func integerLimits() throws {
        let doc = try TOMLParser.parse("a = 9_223_372_036_854_775_807\nb = -9223372036854775808\nc = +0\nd = -0")
        #expect(doc["a"] == .integer(Int64.max))
        #expect(doc["b"] == .integer(Int64.min))
        #expect(doc["c"] == .integer(0))
        #expect(doc["d"] == .integer(0))
    }

    // MARK: - Errors, each with its line and column

    @Test(
        "every error says line and column",
        arguments: [
            ("a = 1\nb = ", 2, 5, "expected a value"),
            ("a = 1\na = 2", 2, 1, "duplicate key 'a'"),
            ("[t]\nx = 1\n[t]", 3, 2, "table [t] is defined twice"),
            ("a = \"open\n", 1, 10, "unterminated string"),
            ("a = 'open", 1, 10, "unterminated string"),
            ("a = \"bad \\q\"", 1, 10, "invalid escape sequence '\\q'"),
            ("a = \"\\u12\"", 1, 6, "\\u needs 4 hex digits"),
            ("a = \"\\uD800\"", 1, 6, "U+D800 is not a Unicode scalar value"),
            ("a = 1.5", 1, 5, "floating-point numbers are not supported"),
            ("a = 1e3", 1, 5, "floating-point numbers are not supported"),
            ("a = inf", 1, 5, "floating-point numbers are not supported"),
            ("a = 2026-11-01", 1, 5, "dates and times are not supported"),
            ("a = 07:32:00", 1, 5, "dates and times are not supported"),
            ("a = \"\"\"x\"\"\"", 1, 5, "multi-line strings are not supported"),
            ("a = 012", 1, 5, "leading zeros are not allowed"),
            ("a = 1__0", 1, 5, "'_' is only allowed between digits"),
            ("a = _1", 1, 5, "expected a value"),
            ("a = 1_", 1, 5, "'_' is only allowed between digits"),
            ("a = 9223372036854775808", 1, 5, "does not fit in 64 bits"),
            ("a = 0xZZ", 1, 5, "is not a valid integer"),
            ("a = yes", 1, 5, "expected a value"),
            ("a = [1, 2", 1, 10, "expected ',' or ']' in array"),
            ("a = [1 2]", 1, 8, "expected ',' or ']' in array"),
            ("a = { x = 1, }", 1, 14, "trailing comma is not allowed"),
            ("a = { x = 1\n}", 1, 12, "expected ',' or '}' in inline table"),
            ("a = 1 b = 2", 1, 7, "expected end of line"),
            ("[t", 1, 3, "expected ']' to close the table header"),
            ("[[t]\n", 1, 5, "expected ']]'"),
            ("= 1", 1, 1, "expected a key"),
            ("a 1", 1, 3, "expected '=' after key 'a'"),
            ("a = 1\n[a]", 2, 2, "'a' already has a value"),
            ("[a]\n[[a]]", 2, 3, "'a' is already a table"),
            ("[[a]]\n[a]", 2, 2, "'a' is an array of tables; use [[a]]"),
            ("a = [1]\n[[a]]", 2, 3, "'a' already has a value that is not an array of tables"),
            ("a = {x = 1}\n[a.b]", 2, 2, "'a' is an inline table and cannot be extended"),
            ("a = {x = 1}\na.y = 2", 2, 1, "'a' is an inline table and cannot be extended"),
            ("a.b = 1\n[a]", 2, 2, "table [a] was already defined by dotted keys"),
            ("[a]\nb.c = 1\n[a.b]", 3, 2, "table [a.b] was already defined by dotted keys"),
            ("[a.b]\nx = 1\n[a]\nb.y = 2", 4, 1, "it cannot be extended with dotted keys"),
            ("a = \"tab\u{01}\"", 1, 9, "control character U+0001 must be escaped"),
            ("# bad \u{7F} comment", 1, 7, "control character U+007F is not allowed in a comment"),
            ("a = 1\n  \n   x", 3, 5, "expected '=' after key 'x'"),
        ])
    func errors(text: String, line: Int, column: Int, message: String) {
        guard let error = parseError(text) else {
            Issue.record("no error for \(text.debugDescription)")
            return
        }
        #expect(error.line == line, "\(text.debugDescription): \(error)")
        #expect(error.column == column, "\(text.debugDescription): \(error)")
        #expect(error.message.contains(message), "\(text.debugDescription): \(error)")
        #expect(error.description.hasPrefix("line \(line), column \(column): "))
    }

    @Test("columns count characters, not bytes")
    func unicodeColumns() {
        let error = parseError("é = \"ü\" x")
        #expect(error?.position == TOMLPosition(line: 1, column: 1))
        let second = parseError("a = \"ü\" x")
        #expect(second?.position == TOMLPosition(line: 1, column: 9))
    }
}
