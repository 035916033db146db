import BlockDevice
import Foundation
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// A sparse temporary file, removed by `remove()`.
struct TemporaryFile {
    let path: String

    /// Creates a sparse file of `size` bytes in `directory`.
    init(size: Int, directory: String = "/tmp") throws {
        var template = Array("\(directory)/livemount-bd-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { throw POSIXFailure(call: "mkstemp", code: errno) }
        defer { close(fd) }
        guard ftruncate(fd, off_t(size)) == 0 else { throw POSIXFailure(call: "ftruncate", code: errno) }
        path = template.withUnsafeBufferPointer { buffer in
            buffer.baseAddress.map { String(cString: $0) } ?? ""
        }
    }

    func remove() { unlink(path) }

    /// Reads bytes straight from the file with pread (bypassing the device).
    func contents(offset: Int, length: Int) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: length)
        let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, length, off_t(offset)) }
        return Array(bytes.prefix(max(0, count)))
    }
}

struct POSIXFailure: Error, CustomStringConvertible {
    var call: String
    var code: Int32
    var description: String { "\(call) failed: errno \(code)" }
}

/// Deterministic pseudo-random bytes (xorshift) so failures reproduce.
func pattern(seed: UInt64, count: Int) -> [UInt8] {
    var generator = SeededGenerator(seed: seed &* 0x9E37_79B9_7F4A_7C15)
    var bytes = [UInt8](repeating: 0, count: count)
    for index in 0..<count { bytes[index] = UInt8(truncatingIfNeeded: generator.next()) }
    return bytes
}

/// A small deterministic random number generator for reproducible workloads.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed | 1 }
    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
}

extension ByteBuffer {
    var bytes: [UInt8] { Array(readableBytesView) }
}

/// Runs `body` and returns the `BlockDeviceError` it threw, or nil when it
/// succeeded or threw something else.
func blockDeviceError(_ body: () async throws -> Void) async -> BlockDeviceError? {
    do {
        try await body()
        return nil
    } catch let error as BlockDeviceError {
        return error
    } catch {
        return nil
    }
}

/// Runs a program and returns its standard output, or nil when it fails.
func runProgram(_ path: String, _ arguments: [String]) -> String? {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    guard (try? process.run()) != nil else { return nil }
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { return nil }
    return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
}
