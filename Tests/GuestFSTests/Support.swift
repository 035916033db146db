// Tests for GuestFS: partition tables and ext2/3/4 file-to-extent maps against images made by e2fsprogs and sfdisk.
import Foundation
import Testing

@testable import GuestFS

/// The e2fsprogs and util-linux tools the tests build images with.
enum Tools {
    static let mke2fs = "/usr/sbin/mke2fs"
    static let debugfs = "/usr/sbin/debugfs"
    static let e2fsck = "/usr/sbin/e2fsck"
    static let sfdisk = ["/usr/sbin/sfdisk", "/sbin/sfdisk", "/usr/bin/sfdisk"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// Whether mke2fs, debugfs and e2fsck are installed (e2fsprogs).
    static var haveE2fsprogs: Bool {
        [mke2fs, debugfs, e2fsck].allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Whether sfdisk is installed too (util-linux's fdisk package).
    static var havePartitioning: Bool { haveE2fsprogs && sfdisk != nil }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Runs `tool` and returns its standard output; throws on an exit status outside `accepting`.
    @discardableResult
    static func run(_ tool: String, _ arguments: [String], input: String? = nil, accepting: Set<Int32> = [0])
        throws -> String
    {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("guestfs-run-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let outURL = scratch.appendingPathComponent("out")
        let errURL = scratch.appendingPathComponent("err")
        let inURL = scratch.appendingPathComponent("in")
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: inURL.path, contents: Data((input ?? "").utf8))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        process.standardOutput = try FileHandle(forWritingTo: outURL)
        process.standardError = try FileHandle(forWritingTo: errURL)
        process.standardInput = try FileHandle(forReadingFrom: inURL)
        try process.run()
        process.waitUntilExit()
        let output = (try? String(contentsOf: outURL, encoding: .utf8)) ?? ""
        guard accepting.contains(process.terminationStatus) else {
            let errors = (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
            throw Failure(
                description:
                    "\(tool) \(arguments.joined(separator: " ")): exit \(process.terminationStatus)\n\(errors)\(output)"
            )
        }
        return output
    }

    /// A file's block map as `debugfs -R "stat PATH"` prints it (`(0-11):266-277, (IND):278, (12):279`, or
    /// `(ETB0):2070, (0):2065` for extent trees): data blocks as (logical, physical), and the mapping
    /// blocks (indirect and extent tree blocks).
    static func debugfsMap(_ image: String, _ path: String) throws -> (data: [(UInt64, UInt64)], tree: [UInt64]) {
        let stat = try run(debugfs, ["-R", "stat \(path)", image])
        var data: [(UInt64, UInt64)] = []
        var tree: [UInt64] = []
        for item in stat.split(whereSeparator: { $0 == "," || $0 == "\n" }) {
            let text = item.trimmingCharacters(in: .whitespaces)
            guard text.hasPrefix("("), let close = text.firstIndex(of: ")") else { continue }
            let label = text[text.index(after: text.startIndex)..<close]
            let value = text[text.index(after: close)...].drop { $0 == ":" }
            let physical = value.split(separator: "-").compactMap { UInt64($0) }
            guard let first = physical.first else { continue }
            if label.first?.isNumber == true {
                let logical = label.split(separator: "-").compactMap { UInt64($0) }
                guard let start = logical.first else { continue }
                let count = (logical.last ?? start) - start + 1
                data += (0..<count).map { (start + $0, first + $0) }
            } else {
                tree.append(first)
            }
        }
        return (data, tree)
    }
}

/// A fresh directory under the temporary directory, removed by `remove()`.
struct Scratch {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("guestfs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func path(_ name: String) -> String { url.appendingPathComponent(name).path }

    func remove() { try? FileManager.default.removeItem(at: url) }

    /// Writes `data` at `name` (creating directories on the way).
    func write(_ name: String, _ data: [UInt8]) throws {
        let file = url.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(data).write(to: file)
    }

    /// Creates a sparse file of `size` bytes with `pieces` written at their offsets.
    func writeSparse(_ name: String, size: UInt64, pieces: [(UInt64, [UInt8])]) throws {
        let file = url.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: file.path, contents: nil)
        let handle = try FileHandle(forWritingTo: file)
        defer { try? handle.close() }
        for (offset, bytes) in pieces {
            try handle.seek(toOffset: offset)
            try handle.write(contentsOf: Data(bytes))
        }
        try handle.truncate(atOffset: size)
    }

    func symlink(_ name: String, to target: String) throws {
        try FileManager.default.createSymbolicLink(atPath: path(name), withDestinationPath: target)
    }

    /// Creates an empty image file of `size` bytes.
    func image(_ name: String, size: UInt64) throws -> String {
        let file = path(name)
        _ = FileManager.default.createFile(atPath: file, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
        try handle.truncate(atOffset: size)
        try handle.close()
        return file
    }
}

/// Deterministic bytes (SplitMix64), so failures reproduce.
struct SeededBytes {
    var state: UInt64

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func bytes(_ count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8(truncatingIfNeeded: next() | 1) }
    }
}

/// A disk held in memory, for corrupting images byte by byte.
struct MemoryDisk: GuestDiskReader {
    var bytes: [UInt8]
    var size: UInt64 { UInt64(bytes.count) }

    func read(offset: UInt64, length: Int) async throws -> [UInt8] {
        let start = Int(offset)
        return Array(bytes[start..<min(bytes.count, start + length)])
    }
}

/// A disk whose every read fails.
struct FailingDisk: GuestDiskReader {
    struct Broken: Error {}
    var size: UInt64
    func read(offset: UInt64, length: Int) async throws -> [UInt8] { throw Broken() }
}

// MARK: - Checking a map against the image and the source file

/// Reads `extent` from the image file.
func readImage(_ image: String, offset: UInt64, length: UInt64) throws -> [UInt8] {
    let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: image))
    defer { try? handle.close() }
    try handle.seek(toOffset: offset)
    return [UInt8](try handle.read(upToCount: Int(length)) ?? Data())
}

/// The blocks a map's mapping covers, relative to the file system, in file order.
func mappedBlocks(_ map: GuestFileMap, blockSize: UInt64) -> [UInt64] {
    mappedPairs(map, blockSize: blockSize).map(\.1)
}

/// The (file block, disk block) pairs a map's mapping covers, relative to the file system, in file order.
func mappedPairs(_ map: GuestFileMap, blockSize: UInt64) -> [(UInt64, UInt64)] {
    map.mapping.flatMap { piece -> [(UInt64, UInt64)] in
        let logical = piece.fileOffset / blockSize
        let first = (piece.diskOffset - map.partition.offset) / blockSize
        let count = (piece.length + blockSize - 1) / blockSize
        return (0..<count).map { (logical + $0, first + $0) }
    }
}

/// Checks a located file: same (file block, disk block) pairs as debugfs lists and its indirect or extent tree
/// blocks among the metadata, the mapped bytes equal the source file's bytes at their
/// offsets, unmapped bytes of the source are zeros, and `extents` cover exactly the mapped bytes.
func verify(
    _ map: GuestFileMap, image: String, debugfsImage: String, guestPath: String, source: String, blockSize: UInt64,
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let expected = try Tools.debugfsMap(debugfsImage, guestPath)
    let actual = mappedPairs(map, blockSize: blockSize)
    #expect(actual.map(\.0) == expected.data.map(\.0), "\(guestPath) file blocks", sourceLocation: sourceLocation)
    #expect(actual.map(\.1) == expected.data.map(\.1), "\(guestPath) disk blocks", sourceLocation: sourceLocation)
    for block in expected.tree {
        let offset = map.partition.offset + block * blockSize
        #expect(
            map.metadata.contains { $0.offset <= offset && $0.end >= offset + blockSize },
            "\(guestPath) mapping block \(block) in metadata", sourceLocation: sourceLocation)
    }
    let attributes = try FileManager.default.attributesOfItem(atPath: source)
    let size = (attributes[.size] as? NSNumber)?.uint64Value ?? 0
    #expect(map.size == size, "\(guestPath) size", sourceLocation: sourceLocation)
    let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: source))
    defer { try? handle.close() }
    var covered: UInt64 = 0
    var previousEnd: UInt64 = 0
    for piece in map.mapping {
        #expect(piece.fileOffset >= previousEnd, "\(guestPath) mapping order", sourceLocation: sourceLocation)
        if size < 64 << 20 {
            // Holes between pieces are zeros in the source.
            try handle.seek(toOffset: previousEnd)
            let hole = try handle.read(upToCount: Int(piece.fileOffset - previousEnd)) ?? Data()
            #expect(
                hole.allSatisfy { $0 == 0 }, "\(guestPath) hole before \(piece.fileOffset)",
                sourceLocation: sourceLocation)
        }
        try handle.seek(toOffset: piece.fileOffset)
        let expected = [UInt8](try handle.read(upToCount: Int(piece.length)) ?? Data())
        let actual = try readImage(image, offset: piece.diskOffset, length: piece.length)
        #expect(actual == expected, "\(guestPath) bytes at \(piece.fileOffset)", sourceLocation: sourceLocation)
        covered += piece.length
        previousEnd = piece.fileOffset + piece.length
    }
    #expect(map.dataBytes == covered, "\(guestPath) extents cover the mapping", sourceLocation: sourceLocation)
    let mappedDisk = map.mapping.map { DiskExtent(offset: $0.diskOffset, length: $0.length) }
    #expect(DiskExtent.normalized(mappedDisk) == DiskExtent.normalized(map.extents), sourceLocation: sourceLocation)
    let staged = map.stagingExtents
    #expect(
        (map.extents + map.metadata).allSatisfy { piece in
            staged.contains { $0.offset <= piece.offset && $0.end >= piece.end }
        },
        sourceLocation: sourceLocation)
    #expect(zip(staged, staged.dropFirst()).allSatisfy { $0.end < $1.offset }, sourceLocation: sourceLocation)
    #expect(map.metadata.contains { $0.offset <= map.partition.offset + 1024 && $0.end >= map.partition.offset + 2048 })
}

/// The successful map of `path`, or a test failure naming the error.
func located(_ path: String, on disk: some GuestDiskReader, sourceLocation: SourceLocation = #_sourceLocation)
    async
    throws -> GuestFileMap
{
    let result = await GuestFiles.locate([path], on: disk)[0]
    switch result {
    case .success(let map): return map
    case .failure(let error):
        Issue.record("\(error)", sourceLocation: sourceLocation)
        throw error
    }
}

/// The error locating `path` gives, or nil (and a test failure) if it succeeds.
func failure(_ path: String, on disk: some GuestDiskReader) async -> GuestFSError? {
    switch await GuestFiles.locate([path], on: disk)[0] {
    case .success(let map):
        Issue.record("\(path) unexpectedly located: \(map.extents)")
        return nil
    case .failure(let error): return error
    }
}
