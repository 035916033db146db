import TargetServer
import Prefetch
import Testing

@testable import LiveMountConfig

@Suite("Ad hoc command line")
struct AdHocArgumentsTests {
    /// Expects exactly one error, for `field`, whose message contains `message`.
    func expectIssue(
        _ arguments: AdHocArguments, field: String, message: String, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        guard let error = configurationError(arguments: arguments) else {
            Issue.record("accepted \(arguments)", sourceLocation: sourceLocation)
            return
        }
        #expect(error.issues.count == 1, "\(error)", sourceLocation: sourceLocation)
        #expect(error.issues.first?.field == field, "\(error)", sourceLocation: sourceLocation)
        #expect(error.issues.first?.message.contains(message) == true, "\(error)", sourceLocation: sourceLocation)
    }

    @Test("maps onto the same model as the TOML file")
    func sameModelAsTOML() throws {
        let scratch = try Scratch()
        let a = try scratch.image("a.img")
        let b = try scratch.image("b.img", size: 8192)
        let name = "iqn.2026-11.org.example:disk0"
        let fromArguments = try DaemonConfiguration.fromArguments(
            AdHocArguments(
                listen: ["127.0.0.1:3260", "[::1]:0"], target: name, alias: "zero",
                luns: ["0=\(a),direct=off", "1=\(b),ro,direct=off,bs=4096,serial=S1,wce=off"],
                chap: "iqn.1994-05.com.redhat:host1:0123456789abcd", mutualChap: "target:abcdefghijklmn",
                allow: ["iqn.1994-05.com.redhat:host1"], stateDirectory: scratch.path + "/state", logLevel: "debug"))
        let fromTOML = try DaemonConfiguration.parse(
            toml: """
                [daemon]
                state_dir = "\(scratch.path)/state"
                log_level = "debug"
                [[portals]]
                listen = "127.0.0.1:3260"
                [[portals]]
                listen = "[::1]:0"
                [[targets]]
                name = "\(name)"
                alias = "zero"
                allow = ["iqn.1994-05.com.redhat:host1"]
                chap = { user = "iqn.1994-05.com.redhat:host1", secret = "0123456789abcd" }
                mutual_chap = { user = "target", secret = "abcdefghijklmn" }
                [[targets.luns]]
                lun = 0
                path = "\(a)"
                direct = false
                [[targets.luns]]
                lun = 1
                path = "\(b)"
                read_only = true
                direct = false
                block_size = 4096
                serial = "S1"
                write_cache = false
                """)
        #expect(fromArguments.configuration == fromTOML.configuration)
        #expect(fromArguments.warnings.isEmpty)
        #expect(fromArguments.configuration.targets.first?.chap?.user == "iqn.1994-05.com.redhat:host1")
    }

    @Test("relative paths resolve against the working directory; a comma in a path is written twice")
    func relativeAndCommaPaths() throws {
        let scratch = try Scratch()
        try scratch.image("with,comma.img")
        let loaded = try DaemonConfiguration.fromArguments(
            AdHocArguments(target: "iqn.2026-11.org.example:t", luns: ["0=with,,comma.img,direct=off"]),
            currentDirectory: scratch.path)
        #expect(loaded.configuration.targets.first?.logicalUnits.first?.path == scratch.path + "/with,comma.img")
        #expect(loaded.configuration.portals == [DaemonConfiguration.defaultPortal])
    }

    @Test("errors name the argument")
    func errors() throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        let target = "iqn.2026-11.org.example:t"
        let lun = "0=\(image),direct=off"
        expectIssue(
            AdHocArguments(target: target, luns: ["1=/x.img"]), field: "--lun 1=/x.img",
            message: "file /x.img does not exist")
        expectIssue(
            AdHocArguments(listen: ["0.0.0.0:70000"], target: target, luns: [lun]),
            field: "--listen 0.0.0.0:70000", message: "port 70000 out of range")
        expectIssue(
            AdHocArguments(target: "foo", luns: [lun]), field: "--target foo",
            message: "\"foo\" is not a valid iqn./eui./naa. name")
        expectIssue(AdHocArguments(luns: [lun]), field: "--target", message: "required")
        expectIssue(AdHocArguments(target: target), field: "--lun", message: "at least one LUN is required")
        expectIssue(
            AdHocArguments(target: target, luns: ["x=\(image)"]), field: "--lun x=\(image)",
            message: "\"x\" is not a LUN number")
        expectIssue(AdHocArguments(target: target, luns: [image]), field: "--lun \(image)", message: "expected N=PATH")
        expectIssue(AdHocArguments(target: target, luns: ["0="]), field: "--lun 0=", message: "missing path")
        expectIssue(
            AdHocArguments(target: target, luns: ["20000=\(image)"]), field: "--lun 20000=\(image)",
            message: "LUN 20000 out of range")
        expectIssue(
            AdHocArguments(target: target, luns: ["0=\(image),fast"]), field: "--lun 0=\(image),fast",
            message: "unknown option \"fast\"")
        expectIssue(
            AdHocArguments(target: target, luns: ["0=\(image),bs=1024"]), field: "--lun 0=\(image),bs=1024",
            message: "supported block sizes are 512 and 4096")
        expectIssue(
            AdHocArguments(target: target, luns: ["0=\(image),direct=maybe"]),
            field: "--lun 0=\(image),direct=maybe", message: "expected on or off")
        let other = try scratch.image("b.img")
        expectIssue(
            AdHocArguments(target: target, luns: [lun, "0=\(other),ro,direct=off"]),
            field: "--lun 0=\(other),ro,direct=off", message: "LUN 0 is already used by --lun \(lun)")
        expectIssue(
            AdHocArguments(target: target, luns: [lun, "1=\(image),direct=off"]),
            field: "--lun 1=\(image),direct=off", message: "same file as --lun \(lun)")
        expectIssue(
            AdHocArguments(target: target, luns: [lun], chap: "nocolon"), field: "--chap",
            message: "expected USER:SECRET")
        expectIssue(
            AdHocArguments(target: target, luns: [lun], chap: "user:"), field: "--chap secret",
            message: "must not be empty")
        expectIssue(
            AdHocArguments(target: target, luns: [lun], mutualChap: "t:0123456789abcd"), field: "--mutual-chap",
            message: "requires one-way CHAP")
        expectIssue(
            AdHocArguments(target: target, luns: [lun], chap: "u:0123456789abcd", mutualChap: "t:0123456789abcd"),
            field: "--mutual-chap", message: "must differ")
        expectIssue(
            AdHocArguments(target: target, luns: [lun], allow: ["host1"]), field: "--allow host1",
            message: "not a valid")
        expectIssue(
            AdHocArguments(target: target, luns: [lun], stateDirectory: image), field: "--state-dir \(image)",
            message: "not a directory")
        expectIssue(
            AdHocArguments(target: target, luns: [lun], logLevel: "loud"), field: "--log-level loud",
            message: "not a log level")
        expectIssue(
            AdHocArguments(listen: ["1.1.1.1:1", "1.1.1.1:1"], target: target, luns: [lun]),
            field: "--listen 1.1.1.1:1", message: "duplicate of --listen 1.1.1.1:1")
    }

    @Test("a short CHAP secret is a warning, not an error")
    func shortSecret() throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        let loaded = try DaemonConfiguration.fromArguments(
            AdHocArguments(target: "iqn.2026-11.org.example:t", luns: ["0=\(image),direct=off"], chap: "u:abc"))
        #expect(
            loaded.warnings.map(\.description) == [
                "--chap secret: 3 bytes is shorter than the 12 bytes (96 bits) RFC 7143 §12.1.3 requires unless IPsec is "
                    + "used; short secrets fall to offline dictionary attacks and some initiators refuse them"
            ])
    }

    @Test("LUN specification options")
    func lunSpecification() throws {
        let spec = try LUNSpecification.parse("12=/a,,b.img,ro,direct=off,bs=4096,serial=X-1,wce=off").get()
        #expect(spec.lun == 12)
        #expect(spec.path == "/a,b.img")
        #expect(spec.readOnly)
        #expect(!spec.direct)
        #expect(spec.blockSize == 4096)
        #expect(spec.serial == "X-1")
        #expect(!spec.writeCache)
        let live = try LUNSpecification.parse("3=backup:web01@2/data,ro,profile=web,prefetch=off,record=90").get()
        #expect(live.backup == BackupReference(vm: "web01", backupID: 2, disk: "data"))
        #expect(live.mountOptions == MountOptions(profile: "web", prefetch: false, recordBootSeconds: 90))
        #expect(throws: (any Error).self) { try LUNSpecification.parse("0=backup:web01,record=0").get() }
        #expect(throws: (any Error).self) { try LUNSpecification.parse("0=backup:web01,prefetch=maybe").get() }
        #expect(throws: (any Error).self) { try LUNSpecification.parse("0=/d.img,record=60").get() }
        let plain = try LUNSpecification.parse("0=/d.img").get()
        #expect(plain == LUNSpecification(lun: 0, path: "/d.img"))
        #expect(plain.direct && !plain.readOnly && plain.blockSize == 512 && plain.writeCache && plain.serial == nil)
    }
}
