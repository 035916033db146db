import Foundation
import Relocation
import Testing

@testable import LiveMountConfig

@Suite("Relocation configuration")
struct RelocationConfigurationTests {
    /// One image LUN (so the document is valid without a repository), `top` above the target.
    static func imageDocument(_ image: String, top: String = "", lunExtra: String = "") -> String {
        ConfigurationTests.document(image: image, top: top, lunExtra: lunExtra)
    }

    /// A backup LUN with a repository and cache in `scratch`; `lunExtra` goes into the LUN.
    static func backupDocument(_ scratch: Scratch, lunExtra: String = "") throws -> String {
        try FileManager.default.createDirectory(atPath: scratch.path + "/repo", withIntermediateDirectories: true)
        return """
            [repository]
            path = "\(scratch.path)/repo"
            [cache]
            path = "\(scratch.path)/cache.img"
            size = "64M"
            [[targets]]
            name = "iqn.2026-11.org.example:web"
              [[targets.luns]]
              lun = 0
              backup = "web01"
              \(lunExtra)
            """
    }

    /// Expects exactly one error, for `field`, whose message contains `message`.
    func expectIssue(_ text: String, field: String, message: String, sourceLocation: SourceLocation = #_sourceLocation)
    {
        ConfigurationTests().expectIssue(text, field: field, message: message, sourceLocation: sourceLocation)
    }

    @Test("without [relocation] the settings are the defaults")
    func defaults() throws {
        let scratch = try Scratch()
        let loaded = try DaemonConfiguration.parse(toml: Self.imageDocument(try scratch.image("a.img")))
        #expect(loaded.configuration.relocation == RelocationSettings())
        let empty = try DaemonConfiguration.parse(
            toml: Self.imageDocument(try scratch.image("b.img"), top: "[relocation]"))
        #expect(empty.configuration.relocation == RelocationSettings())
    }

    @Test("each [relocation] key sets its setting")
    func everyKey() throws {
        let scratch = try Scratch()
        let loaded = try DaemonConfiguration.parse(
            toml: Self.imageDocument(
                try scratch.image("a.img"),
                top: """
                    [relocation]
                    region_kib = 4096
                    max_in_flight = 8
                    max_rate_mib = 200
                    busy_rate_mib = 0
                    stage_ahead_mib = 128
                    checkpoint_seconds = 5
                    verify = false
                    """))
        var expected = RelocationSettings()
        expected.regionBytes = 4 << 20
        expected.maxInFlight = 8
        expected.maxRateMiB = 200
        expected.busyRateMiB = 0
        expected.stageAheadMiB = 128
        expected.checkpointSeconds = 5
        expected.verify = false
        #expect(loaded.configuration.relocation == expected)
        // Sub-second checkpoints as a decimal string (the TOML subset has no floats).
        let fast = try DaemonConfiguration.parse(
            toml: Self.imageDocument(try scratch.image("b.img"), top: "[relocation]\ncheckpoint_seconds = \"0.5\""))
        #expect(fast.configuration.relocation.checkpointSeconds == 0.5)
    }

    @Test("each bad [relocation] value names its key")
    func badValues() throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        let cases: [(String, String, String)] = [
            ("region_kib = 1000", "relocation.region_kib", "not a power of two in 64...16384"),
            ("region_kib = 32", "relocation.region_kib", "not a power of two"),
            ("region_kib = 32768", "relocation.region_kib", "not a power of two"),
            ("region_kib = \"1M\"", "relocation.region_kib", "expected an integer, found a string"),
            ("max_in_flight = 0", "relocation.max_in_flight", "out of range 1...64"),
            ("max_in_flight = 65", "relocation.max_in_flight", "out of range"),
            ("max_rate_mib = -1", "relocation.max_rate_mib", "must not be negative"),
            ("busy_rate_mib = -5", "relocation.busy_rate_mib", "must not be negative"),
            ("busy_rate_mib = true", "relocation.busy_rate_mib", "expected an integer, found a boolean"),
            ("stage_ahead_mib = 5000", "relocation.stage_ahead_mib", "out of range 0...4096"),
            ("checkpoint_seconds = 0", "relocation.checkpoint_seconds", "out of range 0.1...60"),
            ("checkpoint_seconds = 61", "relocation.checkpoint_seconds", "out of range"),
            ("checkpoint_seconds = \"0.05\"", "relocation.checkpoint_seconds", "out of range"),
            ("checkpoint_seconds = \"soon\"", "relocation.checkpoint_seconds", "is not a number of seconds"),
            ("checkpoint_seconds = \"nan\"", "relocation.checkpoint_seconds", "is not a number of seconds"),
            ("checkpoint_seconds = [1]", "relocation.checkpoint_seconds", "expected an integer or a decimal string"),
            ("verify = \"yes\"", "relocation.verify", "expected true or false, found a string"),
            ("region_kb = 1024", "relocation.region_kb", "unknown key (did you mean region_kib?)"),
            ("colour = 1", "relocation.colour", "unknown key (expected one of: region_kib, max_in_flight"),
        ]
        for (line, field, message) in cases {
            expectIssue(Self.imageDocument(image, top: "[relocation]\n\(line)"), field: field, message: message)
        }
        // A value far outside any int the settings hold is refused before it is used.
        expectIssue(
            Self.imageDocument(image, top: "[relocation]\nregion_kib = 9_000_000_000_000_000"),
            field: "relocation.region_kib", message: "out of range")
        // Several problems at once: each is reported on its own key.
        guard
            let error = configurationError(
                toml: Self.imageDocument(image, top: "[relocation]\nmax_in_flight = 0\nstage_ahead_mib = -1"))
        else {
            Issue.record("accepted two bad values")
            return
        }
        #expect(error.issues.map(\.field) == ["relocation.max_in_flight", "relocation.stage_ahead_mib"])
        #expect(error.issues.allSatisfy { $0.position != nil })
        // [relocation] must be a table.
        expectIssue(
            Self.imageDocument(image, top: "relocation = 1"), field: "relocation",
            message: "expected a table, found an integer")
    }

    @Test("relocate_to on a backup LUN is kept; it is checked only syntactically")
    func relocateTo() throws {
        for url in [
            "/dev/sdb", "file:///srv/primary/web01.img", "iscsi://admin%secret@10.0.0.5:3260/iqn.2026-11.org.san:vol/3",
        ] {
            let scratch = try Scratch()
            let loaded = try DaemonConfiguration.parse(
                toml: try Self.backupDocument(scratch, lunExtra: "relocate_to = \"\(url)\""))
            #expect(loaded.configuration.targets.first?.logicalUnits.first?.relocateTo == url)
        }
        let scratch = try Scratch()
        let plain = try DaemonConfiguration.parse(toml: try Self.backupDocument(scratch))
        #expect(plain.configuration.targets.first?.logicalUnits.first?.relocateTo == nil)
        for (url, message) in [
            ("", "must not be empty"), ("relative/path.img", "is not a destination"),
            ("http://example/x", "is not a destination"), ("nbd://host/x", "expected /path, file:///path or iscsi://"),
        ] {
            expectIssue(
                try Self.backupDocument(scratch, lunExtra: "relocate_to = \"\(url)\""),
                field: "targets[0].luns[0].relocate_to", message: message)
        }
        expectIssue(
            try Self.backupDocument(scratch, lunExtra: "relocate_to = 3"), field: "targets[0].luns[0].relocate_to",
            message: "expected a string, found an integer")
    }

    @Test("relocate_to on an image LUN is refused, naming the key")
    func relocateToImage() throws {
        let scratch = try Scratch()
        expectIssue(
            Self.imageDocument(try scratch.image("a.img"), lunExtra: "relocate_to = \"/dev/sdb\""),
            field: "targets[0].luns[0].relocate_to", message: "only a backup LUN (backup = ...) has relocate_to")
    }

    @Test("ad hoc --lun N=backup:VM,relocate=URL sets the LUN's destination")
    func adHoc() throws {
        let spec = try LUNSpecification.parse("0=backup:web01,relocate=iscsi://san:3260/iqn.2026-11.org.san:vol/3")
            .get()
        #expect(spec.relocateTo == "iscsi://san:3260/iqn.2026-11.org.san:vol/3")
        #expect(spec.backup == BackupReference(vm: "web01"))
        // A comma in the URL is written twice, as in any --lun value.
        let comma = try LUNSpecification.parse("1=backup:web01,relocate=/srv/a,,b.img,ro").get()
        #expect(comma.relocateTo == "/srv/a,b.img")
        #expect(comma.readOnly)

        let scratch = try Scratch()
        try FileManager.default.createDirectory(atPath: scratch.path + "/repo", withIntermediateDirectories: true)
        let loaded = try DaemonConfiguration.fromArguments(
            AdHocArguments(
                listen: ["127.0.0.1:0"], target: "iqn.2026-11.org.example:a",
                luns: ["0=backup:web01,relocate=file:///srv/web01.img", "1=backup:web01@2"],
                repository: scratch.path + "/repo", cache: scratch.path + "/cache.img,64M"))
        let units = try #require(loaded.configuration.targets.first?.logicalUnits)
        #expect(units.map(\.relocateTo) == ["file:///srv/web01.img", nil])
    }

    @Test("ad hoc relocate= is refused on an image LUN and for a URL of the wrong form")
    func adHocErrors() throws {
        let cases: [(String, String)] = [
            ("0=/d.img,relocate=/dev/sdb", "relocate=/dev/sdb: only a backup LUN (N=backup:VM) can be relocated"),
            ("0=backup:web01,relocate=", "relocate=: a destination URL must not be empty"),
            ("0=backup:web01,relocate=web.img", "relocate=web.img: \"web.img\" is not a destination"),
        ]
        for (spec, message) in cases {
            switch LUNSpecification.parse(spec) {
            case .success: Issue.record("\(spec) parsed")
            case .failure(let error): #expect(error.description.hasPrefix(message), "\(error)")
            }
            let error = configurationError(
                arguments: AdHocArguments(target: "iqn.2026-11.org.example:a", luns: [spec]))
            #expect(error?.issues.contains { $0.field == "--lun \(spec)" && $0.message.hasPrefix(message) } == true)
        }
        #expect(LUNSpecification.optionSummary.contains("relocate=URL"))
    }
}
