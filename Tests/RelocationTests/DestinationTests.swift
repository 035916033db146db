import BlockDevice
import Foundation
import Logging
import NIOCore
import Relocation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// MARK: - Support

private let logger = Logger(label: "livemount.test.destination")
private let testInitiator = "iqn.2024-01.io.livemount.test:relocation"

/// A fresh directory under the temporary directory, removed by `remove()`.
private struct ScratchDirectory {
    let path: String

    init() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent(
            "livemount-dest-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        path = url.path
    }

    func file(_ name: String) -> String { "\(path)/\(name)" }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// Creates a sparse file of `size` bytes (with `data` at `offset`, if given).
private func makeFile(_ path: String, size: Int, data: [UInt8] = [], at offset: Int = 0) throws {
    let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else { throw Failure("open \(path): errno \(errno)") }
    defer { close(fd) }
    guard ftruncate(fd, off_t(size)) == 0 else { throw Failure("ftruncate: errno \(errno)") }
    if !data.isEmpty {
        let written = data.withUnsafeBytes { pwrite(fd, $0.baseAddress, data.count, off_t(offset)) }
        guard written == data.count else { throw Failure("pwrite: errno \(errno)") }
    }
}

/// Reads bytes straight from a file with pread (bypassing the device).
private func fileBytes(_ path: String, offset: Int, length: Int) -> [UInt8] {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return [] }
    defer { close(fd) }
    var bytes = [UInt8](repeating: 0, count: length)
    let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, length, off_t(offset)) }
    return Array(bytes.prefix(max(0, count)))
}

/// `stat` of a path: size and allocated bytes.
private func fileStat(_ path: String) -> (size: Int, allocated: Int)? {
    var info = stat()
    guard stat(path, &info) == 0 else { return nil }
    return (Int(info.st_size), Int(info.st_blocks) * 512)
}

/// Deterministic pseudo-random bytes (xorshift), none of whole blocks zero.
private func pattern(seed: UInt64, count: Int) -> [UInt8] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    return (0..<count).map { _ in
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return UInt8(truncatingIfNeeded: state) | 1
    }
}

private struct Failure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Runs `body` and returns the `DestinationError` it threw (nil when it succeeded).
private func destinationError(_ body: () async throws -> Void) async -> DestinationError? {
    do {
        try await body()
        return nil
    } catch let error as DestinationError {
        return error
    } catch {
        Issue.record("not a DestinationError: \(error)")
        return nil
    }
}

private func bytes(_ buffer: ByteBuffer) -> [UInt8] { Array(buffer.readableBytesView) }

// MARK: - URL parsing

@Suite("Destination URLs")
struct DestinationURLTests {
    @Test("absolute paths and file:/// URLs name files; a file URL's path is percent-decoded")
    func files() throws {
        let plain = try DestinationURL.parse("/var/lib/vm/disk0.img")
        #expect(plain.kind == .file(path: "/var/lib/vm/disk0.img"))
        #expect(plain.redacted == "/var/lib/vm/disk0.img")
        let url = try DestinationURL.parse("file:///var/lib/vm/disk%201.img")
        #expect(url.kind == .file(path: "/var/lib/vm/disk 1.img"))
        #expect(url.redacted == "file:///var/lib/vm/disk%201.img")
        #expect(try DestinationURL.parse("/dev/sdb").kind == .file(path: "/dev/sdb"))
    }

    @Test("iSCSI URLs: portal, IQN and LUN kept, credentials taken out, secret redacted")
    func iscsi() throws {
        let bare = try DestinationURL.parse("iscsi://10.0.0.5/iqn.2024-01.io.x%3Adisk/1")
        #expect(bare.kind == .iscsi(url: "iscsi://10.0.0.5/iqn.2024-01.io.x%3Adisk/1", user: nil, secret: nil))
        #expect(bare.redacted == "iscsi://10.0.0.5/iqn.2024-01.io.x%3Adisk/1")

        let chap = try DestinationURL.parse("iscsi://alice%s3cr3t-pass@127.0.0.1:3261/iqn.x%3Ay/0")
        #expect(chap.kind == .iscsi(url: "iscsi://127.0.0.1:3261/iqn.x%3Ay/0", user: "alice", secret: "s3cr3t-pass"))
        #expect(chap.redacted == "iscsi://alice%***@127.0.0.1:3261/iqn.x%3Ay/0")

        // The secret runs to the last "@" and may hold "@", "/", "%" (libiscsi splits the user at the first "%").
        let odd = try DestinationURL.parse("iscsi://bob%p@ss/w%0rd@[::1]:3260/iqn.z/7")
        #expect(odd.kind == .iscsi(url: "iscsi://[::1]:3260/iqn.z/7", user: "bob", secret: "p@ss/w%0rd"))
        #expect(odd.redacted == "iscsi://bob%***@[::1]:3260/iqn.z/7")
        #expect(!odd.redacted.contains("w%0rd"))

        let colon = try DestinationURL.parse("iscsi://carol:pw123456@host.example/iqn.q/16383")
        #expect(colon.kind == .iscsi(url: "iscsi://host.example/iqn.q/16383", user: "carol", secret: "pw123456"))
        #expect(colon.redacted == "iscsi://carol:***@host.example/iqn.q/16383")
    }

    @Test(
        "bad destinations are .invalidURL errors naming the problem",
        arguments: [
            ("", "empty destination"),
            ("disk.img", "not an absolute path"),
            ("./disk.img", "not an absolute path"),
            ("nbd://host/export", "unsupported scheme \"nbd\""),
            ("file://host/disk.img", "empty host"),
            ("file:disk.img", "file:///absolute/path"),
            ("/var/lib/vm/", "names a directory"),
            ("iscsi://host", "missing /IQN/LUN"),
            ("iscsi://host/iqn.a", "missing LUN"),
            ("iscsi://host/iqn.a/", "missing LUN"),
            ("iscsi://host/iqn.a/one", "LUN \"one\" is not a number"),
            ("iscsi://host/iqn.a/-1", "is not a number"),
            ("iscsi://host/iqn.a/16384", "out of range"),
            ("iscsi://host/iqn.a/1/2", "unexpected path after the LUN"),
            ("iscsi://host//1", "empty target IQN"),
            ("iscsi:///iqn.a/1", "empty host"),
            ("iscsi://host:0/iqn.a/1", "port \"0\""),
            ("iscsi://host:99999/iqn.a/1", "port \"99999\""),
            ("iscsi://alice@host/iqn.a/1", "has no secret"),
            ("iscsi://%secretsecret@host/iqn.a/1", "empty CHAP user"),
            ("iscsi://host/iqn.a/1?header_digest=crc32c", "query parameters"),
        ])
    func invalid(text: String, problem: String) {
        do {
            _ = try DestinationURL.parse(text)
            Issue.record("\(text) parsed")
        } catch {
            #expect(error.code == .invalidURL)
            #expect(error.description.contains(problem), "\(error.description)")
            #expect(error.description.contains("destination"))
        }
    }

    @Test("the error for a bad iSCSI URL with credentials names it without its secret")
    func invalidRedacted() {
        do {
            _ = try DestinationURL.parse("iscsi://alice%topsecret99@host/iqn.a/x")
            Issue.record("parsed")
        } catch {
            #expect(error.code == .invalidURL)
            #expect(!error.description.contains("topsecret99"))
            #expect(error.description.contains("iscsi://alice%***@host/iqn.a/x"))
        }
    }
}

// MARK: - Files

@Suite("Relocation destinations: files")
struct FileDestinationTests {
    @Test("a missing file is created sparse, at the required size, and reads as zeros")
    func createsSparse() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let path = scratch.file("new.img")
        let destination = try await RelocationDestination.open(
            .parse(path), requiredBytes: 64 << 20, blockSize: 512, logger: logger)
        #expect(destination.createdZeroed)
        #expect(destination.device.capacity == 64 << 20)
        #expect(destination.device.blockSize == 512)
        let data = try await destination.device.read(offset: 32 << 20, length: 4096)
        #expect(bytes(data) == [UInt8](repeating: 0, count: 4096))
        await destination.close()
        let info = try #require(fileStat(path))
        #expect(info.size == 64 << 20)
        #expect(info.allocated < 1 << 20, "allocated \(info.allocated) bytes")
    }

    @Test("a 0-byte file is grown to the required size; a bigger file is kept as it is")
    func growsEmptyKeepsBigger() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let empty = scratch.file("empty.img")
        try makeFile(empty, size: 0)
        let grown = try await RelocationDestination.open(
            .parse("file://" + empty), requiredBytes: 8 << 20, blockSize: 4096, logger: logger)
        #expect(grown.createdZeroed)
        #expect(grown.device.capacity == 8 << 20)
        await grown.close()
        #expect(fileStat(empty)?.size == 8 << 20)

        let big = scratch.file("big.img")
        let data = pattern(seed: 1, count: 8192)
        try makeFile(big, size: 32 << 20, data: data, at: 1 << 20)
        let kept = try await RelocationDestination.open(
            .parse(big), requiredBytes: 16 << 20, blockSize: 512, logger: logger)
        #expect(!kept.createdZeroed)
        #expect(kept.device.capacity == 32 << 20)
        #expect(bytes(try await kept.device.read(offset: 1 << 20, length: 8192)) == data)
        await kept.close()
        #expect(fileStat(big)?.size == 32 << 20)
        #expect(fileBytes(big, offset: 1 << 20, length: 8192) == data)
    }

    @Test("a smaller file is refused with a message naming both sizes, and left alone")
    func smallerRefused() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let path = scratch.file("small.img")
        try makeFile(path, size: 32 << 20, data: [1, 2, 3], at: 0)
        let error = await destinationError {
            _ = try await RelocationDestination.open(
                .parse(path), requiredBytes: 3 << 30, blockSize: 512, logger: logger)
        }
        #expect(error?.code == .tooSmall)
        let message = error?.description ?? ""
        #expect(message.contains(path))
        #expect(message.contains("holds 33554432 bytes (32.00 MiB)"), "\(message)")
        #expect(message.contains("needs 3221225472 bytes (3.00 GiB)"), "\(message)")
        #expect(fileStat(path)?.size == 32 << 20)
        #expect(fileBytes(path, offset: 0, length: 3) == [1, 2, 3])
    }

    @Test("create: false never creates or grows: a missing file is .unreachable, an empty one .tooSmall")
    func resumeDoesNotCreate() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let missing = scratch.file("missing.img")
        let error = await destinationError {
            _ = try await RelocationDestination.open(
                .parse(missing), requiredBytes: 1 << 20, blockSize: 512, create: false, logger: logger)
        }
        #expect(error?.code == .unreachable)
        #expect(error?.description.contains(missing) == true)
        #expect(fileStat(missing) == nil)

        let empty = scratch.file("empty.img")
        try makeFile(empty, size: 0)
        let emptyError = await destinationError {
            _ = try await RelocationDestination.open(
                .parse(empty), requiredBytes: 1 << 20, blockSize: 512, create: false, logger: logger)
        }
        #expect(emptyError?.code == .tooSmall)
        #expect(fileStat(empty)?.size == 0)
    }

    @Test("a directory, a missing parent directory and a size that is not whole blocks are refused")
    func otherRefusals() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let directory = await destinationError {
            _ = try await RelocationDestination.open(
                .parse(scratch.path), requiredBytes: 1 << 20, blockSize: 512, logger: logger)
        }
        #expect(directory?.code == .invalidURL)
        #expect(directory?.description.contains("directory") == true)

        let noParent = await destinationError {
            _ = try await RelocationDestination.open(
                .parse(scratch.file("no/such/dir.img")), requiredBytes: 1 << 20, blockSize: 512, logger: logger)
        }
        #expect(noParent?.code == .unreachable)

        let partial = await destinationError {
            _ = try await RelocationDestination.open(
                .parse(scratch.file("partial.img")), requiredBytes: (1 << 20) + 512, blockSize: 4096, logger: logger)
        }
        #expect(partial?.code == .blockSizeMismatch)
        #expect(fileStat(scratch.file("partial.img")) == nil)
    }

    @Test("zeroFill on a file: the data is gone, the range reads zeros, the size is unchanged")
    func zeroFillFile() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let path = scratch.file("fill.img")
        let destination = try await RelocationDestination.open(
            .parse(path), requiredBytes: 8 << 20, blockSize: 512, logger: logger)
        let data = pattern(seed: 7, count: 4 << 20)
        try await destination.device.write(offset: 1 << 20, data: ByteBuffer(bytes: data), fua: false)
        try await destination.device.flush()
        let before = try #require(fileStat(path))

        try await destination.zeroFill(offset: 2 << 20, length: 2 << 20)
        try await destination.device.flush()

        let zeros = [UInt8](repeating: 0, count: 2 << 20)
        #expect(bytes(try await destination.device.read(offset: 2 << 20, length: 2 << 20)) == zeros)
        #expect(
            bytes(try await destination.device.read(offset: 1 << 20, length: 1 << 20)) == Array(data[0..<(1 << 20)]))
        #expect(bytes(try await destination.device.read(offset: 4 << 20, length: 1 << 20)) == Array(data[(3 << 20)...]))
        #expect(fileBytes(path, offset: 2 << 20, length: 2 << 20) == zeros)
        let after = try #require(fileStat(path))
        #expect(after.size == 8 << 20)
        if destination.zeroFillIsCheap {
            // A punched hole frees the blocks.
            #expect(after.allocated <= before.allocated - (2 << 20), "\(before.allocated) → \(after.allocated)")
        }

        await #expect(throws: BlockDeviceError.self) { try await destination.zeroFill(offset: 100, length: 512) }
        await #expect(throws: BlockDeviceError.self) { try await destination.zeroFill(offset: 0, length: 9 << 20) }
        await destination.close()
    }

    @Test("a wrapped device without unmap is zeroed by writing zeros")
    func zeroFillByWrites() async throws {
        final class NoUnmap: BlockDevice, @unchecked Sendable {
            let inner: MemoryBlockDevice
            init(_ inner: MemoryBlockDevice) { self.inner = inner }
            var blockSize: Int { inner.blockSize }
            var blockCount: UInt64 { inner.blockCount }
            var isReadOnly: Bool { false }
            var supportsUnmap: Bool { false }
            func read(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer {
                try await inner.read(offset: offset, length: length)
            }
            func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(BlockDeviceError) {
                try await inner.write(offset: offset, data: data, fua: fua)
            }
            func flush() async throws(BlockDeviceError) {}
            func unmap(offset: UInt64, length: Int) async throws(BlockDeviceError) {
                throw .writeFailed("no unmap")
            }
            func close() async {}
        }
        let data = pattern(seed: 3, count: 3 << 20)
        let device = NoUnmap(MemoryBlockDevice(contents: data))
        let destination = RelocationDestination(
            url: try .parse("/memory"), device: device, createdZeroed: false, logger: logger)
        #expect(!destination.zeroFillIsCheap)
        try await destination.zeroFill(offset: 512, length: (2 << 20) + 1024)
        let result = bytes(try await device.read(offset: 0, length: 3 << 20))
        #expect(result[0..<512] == data[0..<512])
        #expect(result[512..<((2 << 20) + 1536)].allSatisfy { $0 == 0 })
        #expect(result[((2 << 20) + 1536)...] == data[((2 << 20) + 1536)...])
    }
}

// MARK: - Block device (loop device)

/// Whether a loop device can be set up for the test: root, /dev/loop-control and losetup present.
private let loopDevicesUsable =
    getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/loop-control")
    && FileManager.default.isExecutableFile(atPath: "/usr/sbin/losetup")

/// Runs a program; its standard output, or nil when it fails.
private func run(_ path: String, _ arguments: [String]) -> String? {
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

@Suite(
    "Relocation destinations: block device",
    .enabled(
        if: loopDevicesUsable,
        "needs root, /dev/loop-control and losetup to attach a loop device to a temporary file; skipped"))
struct BlockDeviceDestinationTests {
    @Test("a loop device over a temporary file: opened as it is, zeroFill zeroes the range")
    func loopDevice() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let backing = scratch.file("backing.img")
        let data = pattern(seed: 11, count: 4 << 20)
        try makeFile(backing, size: 16 << 20, data: data, at: 0)
        // `losetup -f --show` attaches the file to a free loop device it picks; only that one is detached.
        guard let loop = run("/usr/sbin/losetup", ["-f", "--show", backing]), loop.hasPrefix("/dev/loop") else {
            Issue.record("losetup -f --show \(backing) failed")
            return
        }
        defer { _ = run("/usr/sbin/losetup", ["-d", loop]) }

        let tooBig = await destinationError {
            _ = try await RelocationDestination.open(
                .parse(loop), requiredBytes: 32 << 20, blockSize: 512, logger: logger)
        }
        #expect(tooBig?.code == .tooSmall)

        let destination = try await RelocationDestination.open(
            .parse(loop), requiredBytes: 8 << 20, blockSize: 512, logger: logger)
        #expect(!destination.createdZeroed)
        #expect(destination.device.capacity == 16 << 20)
        #expect(bytes(try await destination.device.read(offset: 0, length: 4096)) == Array(data[0..<4096]))
        try await destination.zeroFill(offset: 1 << 20, length: 2 << 20)
        try await destination.device.flush()
        let zeros = [UInt8](repeating: 0, count: 2 << 20)
        #expect(bytes(try await destination.device.read(offset: 1 << 20, length: 2 << 20)) == zeros)
        #expect(bytes(try await destination.device.read(offset: 3 << 20, length: 1 << 20)) == Array(data[(3 << 20)...]))
        await destination.close()
        #expect(fileBytes(backing, offset: 1 << 20, length: 2 << 20) == zeros)
        #expect(fileBytes(backing, offset: 0, length: 1 << 20) == Array(data[0..<(1 << 20)]))
    }
}

// MARK: - iSCSI (private tgtd)

/// A private tgtd on 127.0.0.1 with one file-backed LUN, started per test (the pattern of
/// Tests/BlockDeviceTests/ISCSIClientTests.swift): tgtd runs in the foreground with its own control socket
/// (`-C <id>`), so it never touches a system tgtd, and the test kills it (SIGKILL, by pid) when done.
private final class TGTTarget {
    static let tgtd = "/usr/sbin/tgtd"
    static let tgtadm = "/usr/sbin/tgtadm"
    static var isInstalled: Bool {
        FileManager.default.isExecutableFile(atPath: tgtd) && FileManager.default.isExecutableFile(atPath: tgtadm)
    }

    let targetName = "iqn.2024-01.io.livemount.test:dest"
    let port: Int
    let control: Int
    let scratch: ScratchDirectory
    let image: String
    private let process: Process

    /// The LUN's URL with `userInfo` (`user%secret@`) if given.
    func url(userInfo: String = "") -> String {
        "iscsi://\(userInfo)127.0.0.1:\(port)/\(targetName.replacingOccurrences(of: ":", with: "%3A"))/1"
    }

    init(size: Int = 64 << 20, chap: (String, String)? = nil, readOnly: Bool = false, thin: Bool = true) throws {
        port = try Self.freePort()
        control = 1000 + port % 29000
        scratch = try ScratchDirectory()
        image = scratch.file("lun.img")
        try makeFile(image, size: size)
        process = Process()
        process.executableURL = URL(fileURLWithPath: Self.tgtd)
        process.arguments = ["-f", "--iscsi", "portal=127.0.0.1:\(port)", "-C", "\(control)"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        do {
            try waitUntilReady()
            try admin("--op", "new", "--mode", "target", "--tid", "1", "-T", targetName)
            try admin("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", image)
            if thin {
                try admin(
                    "--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "--params",
                    "thin_provisioning=1")
            }
            if readOnly {
                try admin(
                    "--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "--params", "readonly=1")
            }
            try admin("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
            if let (user, secret) = chap {
                try admin("--op", "new", "--mode", "account", "--user", user, "--password", secret)
                try admin("--op", "bind", "--mode", "account", "--tid", "1", "--user", user)
            }
        } catch {
            stop()
            throw error
        }
    }

    /// Kills tgtd and removes its socket files and the image.
    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        unlink("/var/run/tgtd/socket.\(control)")
        unlink("/var/run/tgtd/socket.\(control).lock")
        scratch.remove()
    }

    private func waitUntilReady() throws {
        for _ in 0..<400 {
            guard process.isRunning else { throw Failure("tgtd exited with status \(process.terminationStatus)") }
            if (try? admin("--op", "show", "--mode", "target")) != nil { return }
            usleep(25_000)
        }
        throw Failure("tgtd did not open its control socket")
    }

    private func admin(_ arguments: String...) throws {
        let tool = Process()
        tool.executableURL = URL(fileURLWithPath: Self.tgtadm)
        tool.arguments = ["-C", "\(control)", "--lld", "iscsi"] + arguments
        tool.standardOutput = FileHandle.nullDevice
        tool.standardError = FileHandle.nullDevice
        try tool.run()
        tool.waitUntilExit()
        guard tool.terminationStatus == 0 else {
            throw Failure("tgtadm \(arguments.joined(separator: " ")) exited \(tool.terminationStatus)")
        }
    }

    /// A TCP port that was free a moment ago on 127.0.0.1.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure("socket: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic in
                bind(fd, generic, length) == 0 && getsockname(fd, generic, &length) == 0
            }
        }
        guard bound else { throw Failure("bind: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

@Suite(
    "Relocation destinations: iSCSI against tgt", .serialized,
    .enabled(if: TGTTarget.isInstalled, "tgtd/tgtadm not installed (Debian package tgt); skipping iSCSI destinations"))
struct ISCSIDestinationTests {
    @Test("capacity, block size and write protection are checked at open")
    func checks() async throws {
        let target = try TGTTarget()
        defer { target.stop() }
        let url = try DestinationURL.parse(target.url())

        let small = await destinationError {
            _ = try await RelocationDestination.open(
                url, requiredBytes: 128 << 20, blockSize: 512, initiatorName: testInitiator, connections: 2,
                logger: logger)
        }
        #expect(small?.code == .tooSmall)
        #expect(small?.description.contains(target.url()) == true)
        #expect(small?.description.contains("holds 67108864 bytes (64.00 MiB)") == true, "\(small?.description ?? "")")
        #expect(small?.description.contains("needs 134217728 bytes (128.00 MiB)") == true)

        let blocks = await destinationError {
            _ = try await RelocationDestination.open(
                url, requiredBytes: 32 << 20, blockSize: 4096, initiatorName: testInitiator, connections: 1,
                logger: logger)
        }
        #expect(blocks?.code == .blockSizeMismatch)
        #expect(blocks?.description.contains("512-byte") == true)

        let destination = try await RelocationDestination.open(
            url, requiredBytes: 64 << 20, blockSize: 512, initiatorName: testInitiator, connections: 2,
            logger: logger)
        #expect(!destination.createdZeroed)
        #expect(destination.device.capacity == 64 << 20)
        await destination.close()
    }

    @Test("a write-protected LUN is .readOnly; a port nobody listens on is .unreachable")
    func readOnlyAndUnreachable() async throws {
        let target = try TGTTarget(readOnly: true)
        defer { target.stop() }
        let readOnly = await destinationError {
            _ = try await RelocationDestination.open(
                .parse(target.url()), requiredBytes: 1 << 20, blockSize: 512, initiatorName: testInitiator,
                connections: 1, logger: logger)
        }
        #expect(readOnly?.code == .readOnly)

        let port = try TGTTarget.freePort()
        let unreachable = await destinationError {
            _ = try await RelocationDestination.open(
                .parse("iscsi://127.0.0.1:\(port)/iqn.2024-01.io.nobody/1"), requiredBytes: 1 << 20, blockSize: 512,
                initiatorName: testInitiator, connections: 1, logger: logger)
        }
        #expect(unreachable?.code == .unreachable)
        #expect(unreachable?.description.contains("127.0.0.1:\(port)") == true)
    }

    @Test("zeroFill on a LUN: written data reads back as zeros, neighbours untouched")
    func zeroFill() async throws {
        for thin in [true, false] {
            let target = try TGTTarget(thin: thin)
            defer { target.stop() }
            let destination = try await RelocationDestination.open(
                .parse(target.url()), requiredBytes: 64 << 20, blockSize: 512, initiatorName: testInitiator,
                connections: 2, logger: logger)
            let remote = try #require(destination.device as? RemoteISCSIDevice)
            #expect(remote.supportsUnmap == thin)
            #expect(remote.writeSameReported == true)  // tgt 1.0.85 answers REPORT SUPPORTED OPERATION CODES
            #expect(destination.zeroFillIsCheap)
            let data = pattern(seed: thin ? 5 : 6, count: 4 << 20)
            try await destination.device.write(offset: 0, data: ByteBuffer(bytes: data), fua: false)

            try await destination.zeroFill(offset: 512 << 10, length: 2 << 20)
            // A second fill exercises whatever the first one learnt about WRITE SAME.
            try await destination.zeroFill(offset: 3 << 20, length: 512 << 10)
            try await destination.device.flush()

            let back = bytes(try await destination.device.read(offset: 0, length: 4 << 20))
            #expect(back[0..<(512 << 10)] == data[0..<(512 << 10)])
            #expect(back[(512 << 10)..<((5 << 20) / 2)].allSatisfy { $0 == 0 })
            #expect(back[((5 << 20) / 2)..<(3 << 20)] == data[((5 << 20) / 2)..<(3 << 20)])
            #expect(back[(3 << 20)..<((7 << 20) / 2)].allSatisfy { $0 == 0 })
            #expect(back[((7 << 20) / 2)...] == data[((7 << 20) / 2)...])
            #expect(fileBytes(target.image, offset: 512 << 10, length: 2 << 20).allSatisfy { $0 == 0 })
            await destination.close()
        }
    }

    @Test("RemoteISCSIDevice.writeZeros with and without the UNMAP bit, on thin and thick LUNs")
    func writeZeros() async throws {
        // tgt answers WRITE SAME with the UNMAP bit on a thick LUN with ILLEGAL REQUEST, INVALID FIELD IN CDB:
        // writeZeros must then retry without the bit.
        for thin in [true, false] {
            let target = try TGTTarget(thin: thin)
            defer { target.stop() }
            let device = try await RemoteISCSIDevice.connect(
                url: target.url(), initiatorName: testInitiator, connections: 1)
            #expect(device.unmappedReadsZero == thin)  // tgt sets LBPME and LBPRZ together
            let data = pattern(seed: 9, count: 1 << 20)
            try await device.write(offset: 0, data: ByteBuffer(bytes: data), fua: false)
            try await device.writeZeros(offset: 4096, length: 8192, unmap: false)
            try await device.writeZeros(offset: 65536, length: 131072, unmap: true)
            try await device.writeZeros(offset: 262144, length: 512, unmap: true)
            try await device.writeZeros(offset: 0, length: 0, unmap: true)
            let back = bytes(try await device.read(offset: 0, length: 1 << 20))
            #expect(back[0..<4096] == data[0..<4096])
            #expect(back[4096..<12288].allSatisfy { $0 == 0 })
            #expect(back[12288..<65536] == data[12288..<65536])
            #expect(back[65536..<196608].allSatisfy { $0 == 0 })
            #expect(back[196608..<262144] == data[196608..<262144])
            #expect(back[262144..<262656].allSatisfy { $0 == 0 })
            #expect(back[262656...] == data[262656...])
            #expect(device.writeSameSupported)
            await #expect(throws: BlockDeviceError.self) {
                try await device.writeZeros(offset: 100, length: 512, unmap: false)
            }
            await #expect(throws: BlockDeviceError.self) {
                try await device.writeZeros(offset: 0, length: 65 << 20, unmap: false)
            }
            await device.close()
        }
    }

    @Test("CHAP: the right secret logs in; a wrong or missing one is .unreachable without the secret in the message")
    func chap() async throws {
        let secret = "alice-secret-12"
        let target = try TGTTarget(chap: ("alice", secret))
        defer { target.stop() }

        let right = try DestinationURL.parse(target.url(userInfo: "alice%\(secret)@"))
        #expect(!right.redacted.contains(secret))
        let destination = try await RelocationDestination.open(
            right, requiredBytes: 1 << 20, blockSize: 512, initiatorName: testInitiator, connections: 2,
            logger: logger)
        let remote = try #require(destination.device as? RemoteISCSIDevice)
        #expect(!remote.url.contains(secret))
        try await destination.device.write(offset: 0, data: ByteBuffer(bytes: pattern(seed: 2, count: 512)), fua: true)
        await destination.close()

        let wrongSecret = "wrong-secret-99"
        let wrong = await destinationError {
            _ = try await RelocationDestination.open(
                .parse(target.url(userInfo: "alice%\(wrongSecret)@")), requiredBytes: 1 << 20, blockSize: 512,
                initiatorName: testInitiator, connections: 1, logger: logger)
        }
        #expect(wrong?.code == .unreachable)
        let message = wrong?.description ?? ""
        #expect(!message.contains(wrongSecret), "\(message)")
        #expect(!message.contains(secret))
        #expect(message.contains("alice%***@"), "\(message)")

        let none = await destinationError {
            _ = try await RelocationDestination.open(
                .parse(target.url()), requiredBytes: 1 << 20, blockSize: 512, initiatorName: testInitiator,
                connections: 1, logger: logger)
        }
        #expect(none?.code == .unreachable)
    }
}
