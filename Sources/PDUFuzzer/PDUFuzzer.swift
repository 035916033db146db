import ISCSIFuzzHarness

#if FUZZING
/// libFuzzer's entry point (built by tools/fuzz/run.sh with -sanitize=fuzzer).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    PDUFuzzHarness.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
#else
import Foundation

/// Without the fuzzer: replays the files named on the command line (a corpus
/// or crash inputs) through the harness.
@main
struct PDUFuzzer {
    static func main() {
        for path in CommandLine.arguments.dropFirst() {
            guard let data = FileManager.default.contents(atPath: path) else {
                print("cannot read \(path)")
                continue
            }
            PDUFuzzHarness.run(Array(data))
            print("ok \(path)")
        }
    }
}
#endif
