import Foundation
import Testing

@testable import LiveMountConfig

@Suite("Archive configuration")
struct ArchiveConfigurationTests {
    func expectIssue(_ text: String, field: String, message: String, sourceLocation: SourceLocation = #_sourceLocation)
    {
        ConfigurationTests().expectIssue(text, field: field, message: message, sourceLocation: sourceLocation)
    }

    @Test("without [archive] the policy is off; each key sets its setting")
    func keys() throws {
        let scratch = try Scratch()
        let plain = try DaemonConfiguration.parse(toml: ConfigurationTests.document(image: try scratch.image("a.img")))
        #expect(plain.configuration.archive == ArchiveSettings(idleSeconds: 0, checkSeconds: 300))
        let set = try DaemonConfiguration.parse(
            toml: ConfigurationTests.document(
                image: try scratch.image("b.img"), top: "[archive]\nidle_seconds = 604800\ncheck_seconds = 60"))
        #expect(set.configuration.archive == ArchiveSettings(idleSeconds: 604_800, checkSeconds: 60))
    }

    @Test("bad [archive] values and unknown keys name the field")
    func errors() throws {
        let scratch = try Scratch()
        let image = try scratch.image("a.img")
        expectIssue(
            ConfigurationTests.document(image: image, top: "[archive]\nidle_seconds = -1"),
            field: "archive.idle_seconds", message: "out of range")
        expectIssue(
            ConfigurationTests.document(image: image, top: "[archive]\nidle_seconds = \"7d\""),
            field: "archive.idle_seconds", message: "an integer")
        expectIssue(
            ConfigurationTests.document(image: image, top: "[archive]\ncheck_seconds = 0"),
            field: "archive.check_seconds", message: "out of range")
        expectIssue(
            ConfigurationTests.document(image: image, top: "[archive]\nidle_hours = 3"),
            field: "archive.idle_hours", message: "unknown")
    }
}
