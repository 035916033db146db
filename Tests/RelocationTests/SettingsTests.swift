import Relocation
import Testing

@Suite("Relocation settings")
struct RelocationSettingsTests {
    @Test("defaults are valid; each bad value names its key")
    func problems() {
        #expect(RelocationSettings().problems().isEmpty)
        var settings = RelocationSettings()
        settings.regionBytes = 3 << 20
        settings.maxInFlight = 0
        settings.checkpointSeconds = 0
        let problems = settings.problems()
        #expect(problems.count == 3)
        #expect(problems.contains { $0.hasPrefix("region_kib") })
        #expect(problems.contains { $0.hasPrefix("max_in_flight") })
        #expect(problems.contains { $0.hasPrefix("checkpoint_seconds") })
    }
}
