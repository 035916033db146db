import Foundation
import Logging
import TargetServer
import Testing

@testable import LiveMountConfig

@Suite("TOML configuration")
struct ConfigurationTests {
    /// A minimal valid configuration around one image; `extra` goes into the target, `lunExtra` into its LUN.
    static func document(image: String, top: String = "", extra: String = "", lunExtra: String = "") -> String {
        """
        \(top)
        [[targets]]
        name = "iqn.2026-11.org.example:disk0"
        \(extra)
          [[targets.luns]]
          lun = 0
          path = "\(image)"
          direct = false
          \(lunExtra)
        """
    }

    /// Expects exactly one error, for `field`, whose message contains `message`.
    func expectIssue(_ text: String, field: String, message: String, sourceLocation: SourceLocation = #_sourceLocation)
    {
        guard let error = configurationError(toml: text) else {
            Issue.record("accepted:\n\(text)", sourceLocation: sourceLocation)
            return
        }
        let issues = error.issues
        #expect(issues.count == 1, "\(error)", sourceLocation: sourceLocation)
        #expect(issues.first?.field == field, "\(error)", sourceLocation: sourceLocation)
        #expect(issues.first?.message.contains(message) == true, "\(error)", sourceLocation: sourceLocation)
    }

    @Test("a full configuration maps onto the model")
    func fullConfiguration() throws {
        let scratch = try Scratch()
        let a = try scratch.image("a.img")
        let b = try scratch.image("b.img", size: 8192)
        let text = """
            [daemon]
            state_dir = "\(scratch.path)/state"
            log_level = "debug"
            [[portals]]
            listen = "127.0.0.1:3260"
            [[portals]]
            listen = "[::1]:0"
            [iscsi]
            max_recv_data_segment_length = 65_536
            max_burst_length = 524288
            first_burst_length = 65536
            immediate_data = false
            initial_r2t = true
            max_outstanding_r2t = 4
            command_window = 64
            nop_in_interval = 0
            nop_in_timeout = 10
            [discovery]
            chap = { user = "disc", secret = "discoverysecret" }
            [[targets]]
            name = "iqn.2026-11.org.example:disk0"
            alias = "disk zero"
            allow = ["iqn.1994-05.com.redhat:host1", "eui.0123456789ABCDEF"]
            chap = { user = "iqn.1994-05.com.redhat:host1", secret = "initiator-secret" }
            mutual_chap = { user = "target", secret = "target-secret!" }
              [[targets.luns]]
              lun = 3
              path = "\(a)"
              direct = false
              block_size = 4096
              serial = "SER-1"
              write_cache = false
              [[targets.luns]]
              lun = 0
              path = "\(b)"
              read_only = true
              direct = false
            """
        let loaded = try DaemonConfiguration.parse(toml: text)
        #expect(loaded.warnings.isEmpty, "\(loaded.warnings)")
        let c = loaded.configuration
        #expect(c.stateDirectory == scratch.path + "/state")
        #expect(c.logLevel == .debug)
        #expect(
            c.portals == [
                PortalConfiguration(host: "127.0.0.1", port: 3260), PortalConfiguration(host: "::1", port: 0),
            ])
        #expect(c.limits.maxRecvDataSegmentLength == 65536)
        #expect(c.limits.maxBurstLength == 524_288)
        #expect(c.limits.firstBurstLength == 65536)
        #expect(c.limits.immediateData == false)
        #expect(c.limits.initialR2T == true)
        #expect(c.limits.maxOutstandingR2T == 4)
        #expect(c.limits.commandWindow == 64)
        #expect(c.nopInInterval == 0)
        #expect(c.nopInTimeout == 10)
        #expect(c.discoveryChap == CHAPCredentials(user: "disc", secret: "discoverysecret"))
        #expect(c.targets.count == 1)
        let t = try #require(c.targets.first)
        #expect(t.name == "iqn.2026-11.org.example:disk0")
        #expect(t.alias == "disk zero")
        #expect(t.allowedInitiators == ["iqn.1994-05.com.redhat:host1", "eui.0123456789ABCDEF"])
        #expect(t.chap == CHAPCredentials(user: "iqn.1994-05.com.redhat:host1", secret: "initiator-secret"))
        #expect(t.mutualChap == CHAPCredentials(user: "target", secret: "target-secret!"))
        #expect(
            t.logicalUnits == [
                LogicalUnitDefinition(
                    lun: 3, path: a, readOnly: false, direct: false, blockSize: 4096, serialNumber: "SER-1",
                    naaIdentifier: DeviceIdentifiers.naaIdentifier(targetName: t.name, lun: 3), writeCacheEnabled: false
                ),
                LogicalUnitDefinition(
                    lun: 0, path: b, readOnly: true, direct: false, blockSize: 512,
                    serialNumber: DeviceIdentifiers.serialNumber(targetName: t.name, lun: 0),
                    naaIdentifier: DeviceIdentifiers.naaIdentifier(targetName: t.name, lun: 0), writeCacheEnabled: true),
            ])
    }

    @Test("defaults: no portals means 0.0.0.0:3260, no [iscsi] means NegotiationLimits()")
    func defaults() throws {
        let scratch = try Scratch()
        let loaded = try DaemonConfiguration.parse(toml: Self.document(image: try scratch.image("d.img")))
        let c = loaded.configuration
        #expect(c.portals == [PortalConfiguration(host: "0.0.0.0", port: 3260)])
        #expect(c.limits == NegotiationLimits())
        #expect(c.stateDirectory == nil)
        #expect(c.logLevel == .info)
        #expect(c.discoveryChap == nil)
        #expect(c.targets.first?.logicalUnits.first?.direct == false)
        #expect(c.targets.first?.logicalUnits.first?.writeCacheEnabled == true)
    }

    @Test("the shipped conf/livemount.toml is valid once its image and repository exist")
    func shippedConfiguration() throws {
        let here = URL(fileURLWithPath: #filePath)
        let conf = here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("conf/livemount.toml").path
        let text = try String(contentsOfFile: conf, encoding: .utf8)
        let scratch = try Scratch()
        let image = try scratch.image("disk0.img")
        try FileManager.default.createDirectory(atPath: scratch.path + "/repository", withIntermediateDirectories: true)
        let loaded = try DaemonConfiguration.parse(
            toml: text.replacingOccurrences(of: "/var/tmp/livemount/disk0.img", with: image)
                .replacingOccurrences(of: "/var/tmp/livemount/state", with: scratch.path + "/state")
                .replacingOccurrences(of: "/var/tmp/livemount/repository", with: scratch.path + "/repository")
                .replacingOccurrences(of: "/var/tmp/livemount/cache.img", with: scratch.path + "/cache.img"))
        #expect(loaded.warnings.isEmpty)
        #expect(loaded.configuration.repository == RepositorySettings(path: scratch.path + "/repository"))
        #expect(loaded.configuration.cache == CacheSettings(path: scratch.path + "/cache.img", size: 1 << 30))
        #expect(
            loaded.configuration.targets.first?.logicalUnits.map(\.backup)
                == [BackupReference(vm: "demo"), nil])
        #expect(loaded.configuration.portals == [PortalConfiguration(host: "127.0.0.1", port: 3260)])
        #expect(loaded.configuration.targets.map(\.name) == ["iqn.2026-11.org.example:disk0"])
        #expect(loaded.configuration.limits == NegotiationLimits())
    }

    // MARK: - Errors that name the field

    @Test("a missing image file names the LUN's path field")
    func missingFile() throws {
        let scratch = try Scratch()
        let present = try scratch.image("a.img")
        let text = """
            [[targets]]
            name = "iqn.2026-11.org.example:a"
              [[targets.luns]]
              lun = 0
              path = "\(present)"
              direct = false
            [[targets]]
            name = "iqn.2026-11.org.example:b"
              [[targets.luns]]
              lun = 0
              path = "/nonexistent/x/y.img"
            """
        expectIssue(text, field: "targets[1].luns[0].path", message: "file /nonexistent/x/y.img does not exist")
        #expect(configurationError(toml: text)?.issues.first?.position == TOMLPosition(line: 11, column: 3))
    }

    @Test("port out of range, malformed listen addresses")
    func portals() throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        let cases: [(String, String)] = [
            ("0.0.0.0:70000", "port 70000 out of range"),
            ("0.0.0.0:", "is not a port number"),
            ("0.0.0.0:http", "is not a port number"),
            ("example.org:3260", "\"example.org\" is not an IP address"),
            ("::1", "write IPv6 addresses in brackets"),
            ("[::1", "missing ']'"),
            ("[1.2.3.4]:3260", "is not an IPv6 address"),
            ("[::1]3260", "expected ':PORT'"),
        ]
        for (listen, message) in cases {
            expectIssue(
                Self.document(image: image, top: "[[portals]]\nlisten = \"\(listen)\""), field: "portals[0].listen",
                message: message)
        }
        expectIssue(
            Self.document(
                image: image, top: "[[portals]]\nlisten = \"127.0.0.1:3260\"\n[[portals]]\nlisten = \"127.0.0.1:3260\""),
            field: "portals[1].listen", message: "duplicate of portals[0].listen")
        expectIssue(Self.document(image: image, top: "portals = []"), field: "portals", message: "at least one portal")
    }

    @Test("target names must be iqn./eui./naa. names")
    func targetNames() throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        let bad: [(String, String)] = [
            ("foo", "\"foo\" is not a valid iqn./eui./naa. name (RFC 7143 §4.2.7)"),
            ("iqn.2026-13.org.example:x", "expected a date yyyy-mm"),
            ("iqn.26-11.org.example", "expected a date yyyy-mm"),
            ("iqn.2026-11", "expected '.' and a reversed domain name"),
            ("iqn.2026-11.:x", "expected a reversed domain name"),
            ("iqn.2026-11.org..example", "expected a reversed domain name"),
            ("iqn.2026-11.org.Example:X", "write \"iqn.2026-11.org.example:x\""),
            ("iqn.2026-11.org.example:a b", "character ' ' is not allowed"),
            ("eui.0123", "expected 16 hex digits"),
            ("naa.0123456789abcdeg", "expected 16 or 32 hex digits"),
            ("iqn.2026-11.org.example:" + String(repeating: "x", count: 200), "longer than 223 bytes"),
            ("", "must not be empty"),
        ]
        for (name, message) in bad {
            let text = Self.document(image: image).replacingOccurrences(
                of: "iqn.2026-11.org.example:disk0", with: name)
            expectIssue(text, field: "targets[0].name", message: message)
        }
        for good in [
            "iqn.2026-11.org.example", "eui.02004567A425678D", "naa.52004567BA64678D",
            "naa.62004567BA64678D62004567BA64678D", "iqn.1994-05.com.redhat:4a1b2c-3d:x.y",
        ] {
            #expect(Checks.iscsiNameProblem(good) == nil, "\(good)")
        }
    }

    @Test("duplicate target names and duplicate LUN numbers")
    func duplicates() throws {
        let scratch = try Scratch()
        let a = try scratch.image("a.img")
        let b = try scratch.image("b.img")
        expectIssue(
            """
            [[targets]]
            name = "iqn.2026-11.org.example:t"
              [[targets.luns]]
              lun = 0
              path = "\(a)"
              direct = false
            [[targets]]
            name = "iqn.2026-11.org.example:t"
              [[targets.luns]]
              lun = 0
              path = "\(b)"
              direct = false
            """, field: "targets[1].name",
            message: "duplicate target name \"iqn.2026-11.org.example:t\" (also targets[0].name)")
        expectIssue(
            """
            [[targets]]
            name = "iqn.2026-11.org.example:t"
              [[targets.luns]]
              lun = 7
              path = "\(a)"
              direct = false
              [[targets.luns]]
              lun = 7
              path = "\(b)"
              direct = false
            """, field: "targets[0].luns[1].lun", message: "LUN 7 is already used by targets[0].luns[0].lun")
    }

    @Test("one writable file behind two LUNs is rejected; read-only sharing is fine")
    func sharedBackingStore() throws {
        let scratch = try Scratch()
        let a = try scratch.image("a.img")
        func text(_ readOnly: Bool) -> String {
            """
            [[targets]]
            name = "iqn.2026-11.org.example:t"
              [[targets.luns]]
              lun = 0
              path = "\(a)"
              direct = false
              read_only = \(readOnly)
              [[targets.luns]]
              lun = 1
              path = "\(scratch.path)/./a.img"
              direct = false
              read_only = true
            """
        }
        expectIssue(text(false), field: "targets[0].luns[1].path", message: "same file as targets[0].luns[0].path")
        #expect(configurationError(toml: text(true)) == nil)
    }

    @Test("[prefetch] sets how live mounts pre-stage and prefetch; bad values name their field")
    func prefetchTable() throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        let loaded = try DaemonConfiguration.parse(
            toml: Self.document(
                image: image,
                top: """
                    [prefetch]
                    prestage_bytes = "64M"
                    prestage_seconds = 5
                    prestage_timeout_seconds = 12
                    lead_bytes = "1G"
                    lead_seconds = 20
                    max_in_flight = 2
                    """))
        let prefetch = loaded.configuration.prefetch
        #expect(prefetch.prestageBytes == 64 << 20)
        #expect(prefetch.prestageSeconds == 5)
        #expect(prefetch.prestageTimeoutSeconds == 12)
        #expect(prefetch.leadBytes == 1 << 30)
        #expect(prefetch.leadSeconds == 20)
        #expect(prefetch.maxInFlight == 2)
        expectIssue(
            Self.document(image: image, top: "[prefetch]\nlead_bytes = \"lots\""), field: "prefetch.lead_bytes",
            message: "is not a size")
        expectIssue(
            Self.document(image: image, top: "[prefetch]\nmax_in_flight = 0"), field: "prefetch.max_in_flight",
            message: "out of range")
        // Boot recording and profiles belong to backup LUNs only.
        expectIssue(
            Self.document(image: image, lunExtra: "record_boot = 60"), field: "targets[0].luns[0].record_boot",
            message: "only a backup LUN")
    }

    @Test("unknown keys are rejected by name, with a suggestion for typos")
    func unknownKeys() throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        expectIssue(
            Self.document(image: image, lunExtra: "blocksize = 512"), field: "targets[0].luns[0].blocksize",
            message: "unknown key (did you mean block_size?)")
        expectIssue(
            Self.document(image: image, extra: "alais = \"x\""), field: "targets[0].alais",
            message: "did you mean alias?")
        expectIssue(
            Self.document(image: image, top: "[daemon]\nstate_directory = \"/x\""), field: "daemon.state_directory",
            message: "unknown key")
        expectIssue(
            Self.document(image: image, top: "[iscsi]\nmax_burst = 4096"), field: "iscsi.max_burst",
            message: "did you mean max_burst_length?")
        expectIssue(
            Self.document(image: image, top: "colour = 1"), field: "colour",
            message: "unknown key (expected one of: daemon, portals, iscsi, discovery, repository, cache, prefetch, relocation, archive, targets)")
        expectIssue(
            Self.document(image: image, extra: "chap = { user = \"u\", secret = \"0123456789abc\", salt = 1 }"),
            field: "targets[0].chap.salt", message: "unknown key")
    }

    @Test("wrong types and missing required keys name the field")
    func typesAndRequired() throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        expectIssue(
            Self.document(image: image, lunExtra: "read_only = \"yes\""), field: "targets[0].luns[0].read_only",
            message: "expected true or false, found a string")
        expectIssue(
            Self.document(image: image, top: "[daemon]\nlog_level = 3"), field: "daemon.log_level",
            message: "expected a string, found an integer")
        expectIssue(
            Self.document(image: image, extra: "allow = [\"iqn.2026-11.org.example:h\", 5]"),
            field: "targets[0].allow[1]", message: "expected a string, found an integer")
        expectIssue(
            Self.document(image: image, extra: "allow = [\"host1\"]"), field: "targets[0].allow[0]",
            message: "\"host1\" is not a valid")
        expectIssue("targets = 1", field: "targets", message: "expected an array of tables")
        expectIssue("[daemon]\nlog_level = \"info\"", field: "targets", message: "required key is missing")
        expectIssue(
            "[[targets]]\nname = \"iqn.2026-11.org.example:t\"", field: "targets[0].luns",
            message: "required key is missing")
        expectIssue(
            "[[targets]]\n[[targets.luns]]\nlun = 0\npath = \"\(image)\"\ndirect = false", field: "targets[0].name",
            message: "required key is missing")
        expectIssue(
            "[[targets]]\nname = \"iqn.2026-11.org.example:t\"\n[[targets.luns]]\npath = \"\(image)\"\ndirect = false",
            field: "targets[0].luns[0].lun", message: "required key is missing")
        expectIssue(
            Self.document(image: image, top: "[daemon]\nlog_level = \"loud\""), field: "daemon.log_level",
            message: "\"loud\" is not a log level (trace, debug, info, notice, warning, error, critical)")
    }

    @Test("LUN fields: number range, block size, relative path, empty and misaligned files, serial, O_DIRECT")
    func lunFields() throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        expectIssue(
            Self.document(image: image).replacingOccurrences(of: "lun = 0", with: "lun = 16384"),
            field: "targets[0].luns[0].lun", message: "16384 out of range (0-16383, SAM-5 §4.7.7)")
        expectIssue(
            Self.document(image: image, lunExtra: "block_size = 1024"), field: "targets[0].luns[0].block_size",
            message: "1024 is not a supported block size (512 or 4096)")
        expectIssue(
            Self.document(image: "disk.img"), field: "targets[0].luns[0].path",
            message: "\"disk.img\" must be an absolute path")
        let empty = try scratch.image("empty.img", size: 0)
        expectIssue(Self.document(image: empty), field: "targets[0].luns[0].path", message: "file \(empty) is empty")
        let odd = try scratch.image("odd.img", size: 4096 + 512)
        expectIssue(
            Self.document(image: odd, lunExtra: "block_size = 4096"), field: "targets[0].luns[0].path",
            message: "(4608 bytes) is not a multiple of the 4096-byte block size")
        expectIssue(
            Self.document(image: scratch.path), field: "targets[0].luns[0].path",
            message: "is not a regular file or a block device")
        expectIssue(
            Self.document(image: image, lunExtra: "serial = \"tab\\there\""), field: "targets[0].luns[0].serial",
            message: "printable ASCII")
        expectIssue(
            Self.document(image: image).replacingOccurrences(of: "lun = 0", with: "lun = -1"),
            field: "targets[0].luns[0].lun", message: "-1 out of range")
        expectIssue(
            Self.document(image: image, top: "[[targets]]\nluns = []\nname = \"iqn.2026-11.org.example:empty\""),
            field: "targets[0].luns", message: "at least one LUN is required")
    }

    @Test("O_DIRECT is checked where the file system refuses it")
    func directOnTmpfs() throws {
        // /dev/shm is tmpfs on Linux, which has no O_DIRECT; skip where it does not exist.
        guard FileManager.default.fileExists(atPath: "/dev/shm") else { return }
        let path = "/dev/shm/livemount-config-test-\(getpid()).img"
        guard FileManager.default.createFile(atPath: path, contents: Data(count: 4096)) else { return }
        defer { try? FileManager.default.removeItem(atPath: path) }
        let problem = Checks.backingStoreProblem(
            path: path, readOnly: false, direct: true, blockSize: 512, syntax: .toml)
        let withoutDirect = Checks.backingStoreProblem(
            path: path, readOnly: false, direct: false, blockSize: 512, syntax: .toml)
        #expect(withoutDirect == nil)
        if let problem { #expect(problem.contains("does not support O_DIRECT (set direct = false)")) }
    }

    @Test("CHAP: empty secret rejected, short secret warned, mutual needs one-way, mutual secret must differ")
    func chap() throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        expectIssue(
            Self.document(image: image, extra: "chap = { user = \"u\", secret = \"\" }"),
            field: "targets[0].chap.secret", message: "must not be empty (RFC 7143 §12.1.3)")
        expectIssue(
            Self.document(image: image, extra: "chap = { user = \"\", secret = \"0123456789abc\" }"),
            field: "targets[0].chap.user", message: "must not be empty")
        expectIssue(
            Self.document(image: image, extra: "chap = { user = \"u\" }"), field: "targets[0].chap.secret",
            message: "required key is missing")
        expectIssue(
            Self.document(image: image, extra: "mutual_chap = { user = \"t\", secret = \"0123456789abc\" }"),
            field: "targets[0].mutual_chap", message: "mutual CHAP requires one-way CHAP")
        expectIssue(
            Self.document(
                image: image,
                extra:
                    "chap = { user = \"u\", secret = \"0123456789abc\" }\nmutual_chap = { user = \"t\", secret = \"0123456789abc\" }"
            ),
            field: "targets[0].mutual_chap.secret", message: "must differ from the one-way CHAP secret")
        expectIssue(
            Self.document(image: image, top: "[discovery]\nchap = { user = \"d\", secret = \"\" }"),
            field: "discovery.chap.secret", message: "must not be empty")

        let short = try DaemonConfiguration.parse(
            toml: Self.document(image: image, extra: "chap = { user = \"u\", secret = \"short\" }"))
        #expect(short.warnings.map(\.field) == ["targets[0].chap.secret"])
        #expect(short.warnings.first?.message.contains("5 bytes is shorter than the 12 bytes") == true)
        let long = try DaemonConfiguration.parse(
            toml: Self.document(image: image, extra: "chap = { user = \"u\", secret = \"0123456789abcdefXYZ\" }"))
        #expect(long.warnings.first?.message.contains("12-16") == true)
        let good = try DaemonConfiguration.parse(
            toml: Self.document(image: image, extra: "chap = { user = \"u\", secret = \"0123456789abcd\" }"))
        #expect(good.warnings.isEmpty)
    }

    @Test("[iscsi] ranges cite RFC 7143 and first_burst_length <= max_burst_length")
    func limits() throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        expectIssue(
            Self.document(image: image, top: "[iscsi]\nmax_recv_data_segment_length = 511"),
            field: "iscsi.max_recv_data_segment_length", message: "511 out of range (512-16777215, RFC 7143 §13.12)")
        expectIssue(
            Self.document(image: image, top: "[iscsi]\nmax_burst_length = 16777216"),
            field: "iscsi.max_burst_length", message: "out of range")
        expectIssue(
            Self.document(image: image, top: "[iscsi]\nfirst_burst_length = 2097152"),
            field: "iscsi.first_burst_length", message: "must not exceed max_burst_length (1048576)")
        expectIssue(
            Self.document(image: image, top: "[iscsi]\ncommand_window = 0"), field: "iscsi.command_window",
            message: "0 out of range (1-65535)")
        expectIssue(
            Self.document(image: image, top: "[iscsi]\nimmediate_data = 1"), field: "iscsi.immediate_data",
            message: "expected true or false, found an integer")
    }

    @Test("several problems are reported together, in document order, with positions")
    func severalProblems() throws {
        let text = """
            [[portals]]
            listen = "1.2.3.4:99999"
            [[targets]]
            name = "bad"
              [[targets.luns]]
              lun = 0
              path = "/nonexistent.img"
            """
        let error = try #require(configurationError(toml: text))
        #expect(error.issues.map(\.field) == ["portals[0].listen", "targets[0].name", "targets[0].luns[0].path"])
        #expect(error.issues.map { $0.position?.line } == [2, 4, 7])
        #expect(
            error.messages(file: "x.toml").first == "x.toml:2:1: portals[0].listen: port 99999 out of range (0-65535)")
    }

    @Test("a TOML syntax error becomes .syntax with line and column")
    func syntaxError() {
        let error = configurationError(toml: "[daemon]\nlog_level = info\n")
        #expect(
            error
                == .syntax(
                    TOMLError(
                        "expected a value (string, integer, boolean, array or inline table), found 'info'",
                        at: TOMLPosition(line: 2, column: 13))))
        #expect(
            error?.messages(file: "c.toml") == [
                "c.toml:2:13: expected a value (string, integer, boolean, array or inline table), found 'info'"
            ])
    }

    @Test("a missing file is .unreadable")
    func unreadable() {
        do {
            _ = try DaemonConfiguration.load(contentsOfFile: "/nonexistent/livemount.toml")
            Issue.record("loaded a missing file")
        } catch {
            #expect(error == .unreadable(path: "/nonexistent/livemount.toml", reason: "no such file or directory"))
        }
    }

    @Test("state_dir must be absolute and, if it exists, a directory")
    func stateDirectory() throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        expectIssue(
            Self.document(image: image, top: "[daemon]\nstate_dir = \"state\""), field: "daemon.state_dir",
            message: "must be an absolute path")
        expectIssue(
            Self.document(image: image, top: "[daemon]\nstate_dir = \"\(image)\""), field: "daemon.state_dir",
            message: "exists and is not a directory")
    }

    @Test("control_listen: loopback only, with a port and a private token file of 16 characters or more")
    func controlListen() throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        let token = scratch.path + "/token"
        _ = FileManager.default.createFile(atPath: token, contents: Data("  s3cret-token-0123456789\n".utf8))
        chmod(token, 0o600)
        func daemon(_ lines: String) -> String { Self.document(image: image, top: "[daemon]\n" + lines) }

        let loaded = try DaemonConfiguration.parse(
            toml: daemon("control_listen = \"127.0.0.1:9327\"\ncontrol_token_file = \"\(token)\""))
        #expect(loaded.configuration.controlListen == PortalConfiguration(host: "127.0.0.1", port: 9327))
        #expect(loaded.configuration.controlToken == "s3cret-token-0123456789")

        let withToken = "\ncontrol_token_file = \"\(token)\""
        expectIssue(
            daemon("control_listen = \"0.0.0.0:9327\"" + withToken), field: "daemon.control_listen",
            message: "not a loopback address")
        expectIssue(
            daemon("control_listen = \"127.0.0.1\"" + withToken), field: "daemon.control_listen", message: "give a port")
        expectIssue(
            daemon("control_listen = \"127.0.0.1:9327\""), field: "daemon.control_listen",
            message: "needs control_token_file")
        chmod(token, 0o644)
        expectIssue(
            daemon("control_listen = \"127.0.0.1:9327\"" + withToken), field: "daemon.control_token_file",
            message: "readable by others")
        _ = FileManager.default.createFile(atPath: token, contents: Data("short\n".utf8))
        chmod(token, 0o600)
        expectIssue(
            daemon("control_listen = \"127.0.0.1:9327\"" + withToken), field: "daemon.control_token_file",
            message: "shorter than 16")
        expectIssue(
            daemon("control_listen = \"[::1]:9327\"\ncontrol_token_file = \"\(scratch.path)/none\""),
            field: "daemon.control_token_file", message: "cannot read")
    }
}

@Suite("Opening devices")
struct OpenDeviceTests {
    @Test("openDevice opens the image on libaio with the configured geometry")
    func opensImage() async throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        let loaded = try DaemonConfiguration.parse(toml: ConfigurationTests.document(image: image))
        let server = try await loaded.configuration.makeServerConfiguration()
        let lu = try #require(server.targets.first?.logicalUnits.first)
        let size = try FileManager.default.attributesOfItem(atPath: image)[.size] as? UInt64
        #expect(lu.device.capacity == size)
        #expect(lu.device.blockSize == 512)
        for target in server.targets { for unit in target.logicalUnits { await unit.device.close() } }
    }

    @Test("an image that vanished after validation fails with the LUN named")
    func vanished() async throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        let loaded = try DaemonConfiguration.parse(toml: ConfigurationTests.document(image: image))
        try FileManager.default.removeItem(atPath: image)
        do {
            _ = try await loaded.configuration.makeServerConfiguration()
            Issue.record("opened a device that does not exist")
        } catch {
            #expect(error.field == "target iqn.2026-11.org.example:disk0 LUN 0")
            #expect(error.reason.contains(image))
        }
    }
}

// MARK: - Backup LUNs

@Suite("Backup LUN configuration")
struct BackupLUNConfigurationTests {
    @Test("VM[@ID][/DISK] parses, and bad references name what is wrong")
    func references() throws {
        #expect(try BackupReference.parse("web01").get() == BackupReference(vm: "web01"))
        #expect(try BackupReference.parse("web01@7").get() == BackupReference(vm: "web01", backupID: 7))
        #expect(try BackupReference.parse("web01@7/data").get() == BackupReference(vm: "web01", backupID: 7, disk: "data"))
        #expect(try BackupReference.parse("web01/data").get() == BackupReference(vm: "web01", disk: "data"))
        #expect(BackupReference(vm: "web01", backupID: 7, disk: "data").description == "web01@7/data")
        for bad in ["", "@7", "web01@", "web01@x", "web01@0", "web01/"] {
            guard case .failure = BackupReference.parse(bad) else {
                Issue.record("\(bad) parsed")
                continue
            }
        }
    }

    @Test("sizes accept bytes and binary units, and reject junk")
    func sizes() {
        #expect(CacheSettings.parseSize("1048576") == 1 << 20)
        #expect(CacheSettings.parseSize("512M") == 512 << 20)
        #expect(CacheSettings.parseSize("4G") == 4 << 30)
        #expect(CacheSettings.parseSize("2GiB") == 2 << 30)
        #expect(CacheSettings.parseSize("1T") == 1 << 40)
        #expect(CacheSettings.parseSize("G") == nil)
        #expect(CacheSettings.parseSize("1.5G") == nil)
        #expect(CacheSettings.parseSize("99999999999999999999T") == nil)
    }

    @Test("a backup LUN without [repository] and [cache] names both, and path with backup is refused")
    func backupNeedsRepositoryAndCache() throws {
        let text = """
            [[targets]]
            name = "iqn.2026-11.org.example:a"
              [[targets.luns]]
              lun = 0
              backup = "web01"
            """
        #expect {
            try DaemonConfiguration.parse(toml: text)
        } throws: { error in
            guard case .invalid(let issues) = error as? ConfigurationError else { return false }
            let messages = issues.map(\.description).joined(separator: "\n")
            return messages.contains("targets[0].luns[0].backup") && messages.contains("[repository]")
                && messages.contains("[cache]")
        }
        let both = """
            [[targets]]
            name = "iqn.2026-11.org.example:a"
              [[targets.luns]]
              lun = 0
              backup = "web01"
              path = "/x.img"
            """
        #expect {
            try DaemonConfiguration.parse(toml: both)
        } throws: { error in
            guard case .invalid(let issues) = error as? ConfigurationError else { return false }
            return issues.contains { $0.description.contains("either path") }
        }
    }

    @Test("ad hoc backup LUNs take --repo and --cache FILE,SIZE; a missing repository is named")
    func adHoc() throws {
        let scratch = try Scratch()
        try FileManager.default.createDirectory(atPath: scratch.path + "/repo", withIntermediateDirectories: true)
        let loaded = try DaemonConfiguration.fromArguments(
            AdHocArguments(
                listen: ["127.0.0.1:0"], target: "iqn.2026-11.org.example:a",
                luns: ["0=backup:web01@3/data,ro", "1=backup:web01"], repository: scratch.path + "/repo",
                cache: scratch.path + "/cache.img,64M", repositoryLatency: 10))
        let units = try #require(loaded.configuration.targets.first?.logicalUnits)
        #expect(units.map(\.backup) == [BackupReference(vm: "web01", backupID: 3, disk: "data"), BackupReference(vm: "web01")])
        #expect(units.map(\.readOnly) == [true, false])
        #expect(loaded.configuration.cache == CacheSettings(path: scratch.path + "/cache.img", size: 64 << 20))
        #expect(loaded.configuration.repository?.readLatencyMilliseconds == 10)
        #expect {
            try DaemonConfiguration.fromArguments(
                AdHocArguments(
                    listen: ["127.0.0.1:0"], target: "iqn.2026-11.org.example:a", luns: ["0=backup:web01"],
                    repository: scratch.path + "/nope", cache: scratch.path + "/cache.img,1M"))
        } throws: { error in
            guard case .invalid(let issues) = error as? ConfigurationError else { return false }
            let messages = issues.map(\.description).joined(separator: "\n")
            return messages.contains("--repo") && messages.contains("does not exist")
                && messages.contains("below the minimum")
        }
    }
}
