import Foundation
import ISCSIFuzzHarness
import Testing

/// Every input in FuzzRegressions/ (seeds and each crash the fuzzer found,
/// tools/fuzz/run.sh) goes through the harness again: none may crash or trap.
@Suite("PDU fuzz regressions")
struct FuzzRegressionTests {
    static var inputs: [URL] {
        guard let directory = Bundle.module.url(forResource: "FuzzRegressions", withExtension: nil),
            let files = try? FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)
        else { return [] }
        return files.sorted { $0.lastPathComponent < $1.lastPathComponent }
    }

    @Test("the pinned inputs are present")
    func present() {
        #expect(Self.inputs.count >= 2)
    }

    @Test("each pinned input decodes without crashing", arguments: inputs)
    func replay(_ url: URL) throws {
        let bytes = try [UInt8](Data(contentsOf: url))
        PDUFuzzHarness.run(bytes)
        // And every prefix of it: partial PDUs must consume nothing and not trap.
        for cut in stride(from: 0, to: bytes.count, by: max(1, bytes.count / 16)) {
            PDUFuzzHarness.run(Array(bytes.prefix(cut)))
        }
    }
}
