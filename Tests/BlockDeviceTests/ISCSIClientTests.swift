import BlockDevice
import Foundation
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A private tgtd on 127.0.0.1 with one 64 MiB file-backed LUN, started per test.
///
/// tgtd runs in the foreground with its own control socket (`-C <id>`, derived
/// from the port because tgtd accepts only small ids), so it
/// never touches a system tgtd; the test kills it (SIGKILL, by pid) when done.
final class TGTFixture {
    static let tgtd = "/usr/sbin/tgtd"
    static let tgtadm = "/usr/sbin/tgtadm"
    static var isInstalled: Bool {
        FileManager.default.isExecutableFile(atPath: tgtd) && FileManager.default.isExecutableFile(atPath: tgtadm)
    }

    let targetName = "iqn.2024-01.io.livemount.test:disk"
    let port: Int
    /// tgtd's control socket number (`-C`).
    let control: Int
    let image: TemporaryFile
    private let process: Process

    var portal: String { "127.0.0.1:\(port)" }
    /// The LUN's URL, with the target name URL-encoded (`:` as `%3A`).
    var url: String { "iscsi://127.0.0.1:\(port)/\(targetName.replacingOccurrences(of: ":", with: "%3A"))/1" }

    /// Starts tgtd and configures the target; `chap` and `mutualChap` bind accounts.
    init(chap: (String, String)? = nil, mutualChap: (String, String)? = nil, readOnly: Bool = false) throws {
        port = try Self.freePort()
        control = 1000 + port % 29000
        image = try TemporaryFile(size: 64 << 20)
        process = Process()
        process.executableURL = URL(fileURLWithPath: Self.tgtd)
        process.arguments = ["-f", "--iscsi", "portal=127.0.0.1:\(port)", "-C", "\(control)"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        do {
            try waitUntilReady()
            try admin("--op", "new", "--mode", "target", "--tid", "1", "-T", targetName)
            try admin("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", image.path)
            try admin(
                "--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "--params",
                "thin_provisioning=1")
            if readOnly {
                try admin("--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "--params", "readonly=1")
            }
            try admin("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
            if let (user, secret) = chap {
                try admin("--op", "new", "--mode", "account", "--user", user, "--password", secret)
                try admin("--op", "bind", "--mode", "account", "--tid", "1", "--user", user)
            }
            if let (user, secret) = mutualChap {
                try admin("--op", "new", "--mode", "account", "--user", user, "--password", secret)
                try admin("--op", "bind", "--mode", "account", "--tid", "1", "--user", user, "--outgoing")
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
        image.remove()
    }

    private func waitUntilReady() throws {
        for _ in 0..<400 {
            guard process.isRunning else {
                throw FixtureFailure("tgtd exited with status \(process.terminationStatus)")
            }
            if (try? admin("--op", "show", "--mode", "target")) != nil { return }
            usleep(25_000)
        }
        throw FixtureFailure("tgtd did not open its control socket")
    }

    @discardableResult
    private func admin(_ arguments: String...) throws -> Int32 {
        let tool = Process()
        tool.executableURL = URL(fileURLWithPath: Self.tgtadm)
        tool.arguments = ["-C", "\(control)", "--lld", "iscsi"] + arguments
        tool.standardOutput = FileHandle.nullDevice
        tool.standardError = FileHandle.nullDevice
        try tool.run()
        tool.waitUntilExit()
        guard tool.terminationStatus == 0 else {
            throw FixtureFailure("tgtadm \(arguments.joined(separator: " ")) exited \(tool.terminationStatus)")
        }
        return tool.terminationStatus
    }

    /// A TCP port that was free a moment ago on 127.0.0.1.
    private static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FixtureFailure("socket: errno \(errno)") }
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
        guard bound else { throw FixtureFailure("bind: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

struct FixtureFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

let initiatorName = "iqn.2024-01.io.livemount.test:initiator"

@Suite(
    "ISCSIClient and RemoteISCSIDevice against tgt", .serialized,
    .enabled(
        if: TGTFixture.isInstalled, "tgtd/tgtadm not installed (Debian package tgt); skipping libiscsi client tests")
)
struct ISCSIClientTests {
    @Test("connect, inquire, read capacity, write, read, synchronize and log out")
    func basicCommands() throws {
        let target = try TGTFixture()
        defer { target.stop() }
        let client = ISCSIClient(timeoutSeconds: 30)
        try client.connect(url: target.url, initiatorName: initiatorName)
        #expect(client.isLoggedIn)
        #expect(client.targetName == target.targetName)
        #expect(client.lun == 1)

        try client.testUnitReady()
        let standard = try client.inquiry()
        #expect(standard.count >= 36)
        #expect(standard[0] & 0x1F == 0x00)  // peripheral device type: direct access block device
        #expect(String(decoding: standard[8..<16], as: UTF8.self) == "IET     ")
        let supportedPages = try client.inquiry(evpd: true, page: 0x00)
        #expect(supportedPages[1] == 0x00)
        #expect(supportedPages.dropFirst(4).contains(0x80))

        let capacity = try client.readCapacity16()
        #expect(capacity.blockSize == 512)
        #expect(capacity.blockCount == (64 << 20) / 512)

        let data = pattern(seed: 11, count: 8 * 512)
        try client.write(lba: 100, data: data, fua: true)
        #expect(try client.read(lba: 100, blocks: 8) == data)
        try client.synchronizeCache()
        #expect(target.image.contents(offset: 100 * 512, length: data.count) == data)

        try client.logout()
        #expect(!client.isLoggedIn)
    }

    @Test("execute sends data-out, returns data-in, and reports CHECK CONDITION with sense")
    func genericExecute() throws {
        let target = try TGTFixture()
        defer { target.stop() }
        let client = ISCSIClient(timeoutSeconds: 30)
        try client.connect(url: target.url, initiatorName: initiatorName)

        // WRITE (10) of two blocks at LBA 8, then READ (10) of them (SBC-4 §5.39, §5.15).
        let data = pattern(seed: 12, count: 1024)
        let write = try client.execute(
            cdb: [0x2A, 0, 0, 0, 0, 8, 0, 0, 2, 0], dataOut: data, dataInLength: 0)
        #expect(write.status == 0)
        let read = try client.execute(cdb: [0x28, 0, 0, 0, 0, 8, 0, 0, 2, 0], dataOut: nil, dataInLength: 1024)
        #expect(read.status == 0)
        #expect(read.dataIn == data)

        // READ (10) past the end: CHECK CONDITION, ILLEGAL REQUEST, LBA OUT OF RANGE (SBC-4 §4.5).
        let outside = try client.execute(
            cdb: [0x28, 0, 0xFF, 0xFF, 0xFF, 0x00, 0, 0, 1, 0], dataOut: nil, dataInLength: 512)
        #expect(outside.status == 0x02)
        let error = ISCSIClientError(.scsiStatus, "", status: outside.status, sense: outside.sense)
        #expect(error.senseCode?.key == 0x05)
        #expect(error.senseCode?.asc == 0x21)
        try client.logout()
    }

    @Test("discovery lists the target and its portal")
    func discovery() throws {
        let target = try TGTFixture()
        defer { target.stop() }
        let targets = try ISCSIClient.discovery(portal: target.portal, initiatorName: initiatorName)
        let found = targets.first { $0.targetName == target.targetName }
        #expect(found != nil)
        #expect(found?.addresses.contains { $0.hasPrefix(target.portal) } == true)
    }

    @Test("CHAP: login needs the right secret; mutual CHAP and header digests work")
    func chap() throws {
        let target = try TGTFixture(chap: ("alice", "secret-of-alice"), mutualChap: ("target", "secret-of-target"))
        defer { target.stop() }

        #expect(throws: ISCSIClientError.self) {
            try ISCSIClient(timeoutSeconds: 30).connect(url: target.url, initiatorName: initiatorName)
        }
        #expect(throws: ISCSIClientError.self) {
            try ISCSIClient(timeoutSeconds: 30).connect(
                url: target.url, initiatorName: initiatorName, chap: ("alice", "wrong-secret-x"))
        }
        let client = ISCSIClient(timeoutSeconds: 30)
        try client.connect(
            url: target.url, initiatorName: initiatorName, chap: ("alice", "secret-of-alice"),
            mutualChap: ("target", "secret-of-target"), headerDigest: true)
        try client.testUnitReady()
        try client.logout()

        // Credentials in the URL (user%password@host).
        let urlClient = ISCSIClient(timeoutSeconds: 30)
        try urlClient.connect(
            url: target.url.replacingOccurrences(of: "iscsi://", with: "iscsi://alice%secret-of-alice@"),
            initiatorName: initiatorName)
        try urlClient.testUnitReady()
        try urlClient.logout()
    }

    @Test("RemoteISCSIDevice serves concurrent I/O, flush, unmap and allocation status over a session pool")
    func remoteDevice() async throws {
        let target = try TGTFixture()
        defer { target.stop() }
        let device = try await RemoteISCSIDevice.connect(
            url: target.url, initiatorName: initiatorName, connections: 3, maximumTransferBytes: 64 << 10)
        #expect(device.blockSize == 512)
        #expect(device.blockCount == (64 << 20) / 512)
        #expect(!device.isReadOnly)

        let mismatches = try await withThrowingTaskGroup(of: Int.self) { group in
            for task in 0..<8 {
                group.addTask {
                    var mismatches = 0
                    for index in 0..<8 {
                        let offset = UInt64((index * 8 + task) * 4096)
                        let data = pattern(seed: UInt64(task * 100 + index), count: 4096)
                        try await device.write(offset: offset, data: ByteBuffer(bytes: data), fua: index == 0)
                        if try await device.read(offset: offset, length: 4096).bytes != data { mismatches += 1 }
                    }
                    return mismatches
                }
            }
            return try await group.reduce(0, +)
        }
        #expect(mismatches == 0)

        // A transfer larger than maximumTransferBytes is split.
        let large = pattern(seed: 99, count: 200 << 10)
        try await device.write(offset: 1 << 20, data: ByteBuffer(bytes: large), fua: false)
        #expect(try await device.read(offset: 1 << 20, length: large.count).bytes == large)
        try await device.flush()

        // tgt with thin_provisioning=1 reports LBPME and punches holes in its image.
        #expect(device.supportsUnmap)
        try await device.unmap(offset: 1 << 20, length: 64 << 10)
        #expect(
            try await device.read(offset: 1 << 20, length: 64 << 10).bytes == [UInt8](repeating: 0, count: 64 << 10))
        let extents = try await device.allocationStatus(offset: 1 << 20, length: 128 << 10)
        #expect(
            extents == [
                AllocationExtent(offset: 1 << 20, length: 64 << 10, status: .deallocated),
                AllocationExtent(offset: (1 << 20) + (64 << 10), length: 64 << 10, status: .mapped),
            ])

        let rangeError = await blockDeviceError { _ = try await device.read(offset: 100, length: 512) }
        #expect(rangeError?.code == .outOfRange)
        await device.close()
        let closedError = await blockDeviceError { try await device.flush() }
        #expect(closedError?.code == .notReady)
    }

    @Test("a write-protected LUN is read-only and refuses writes with DATA PROTECT")
    func writeProtectedLUN() async throws {
        let target = try TGTFixture(readOnly: true)
        defer { target.stop() }
        let client = ISCSIClient(timeoutSeconds: 30)
        try client.connect(url: target.url, initiatorName: initiatorName)
        #expect {
            try client.write(lba: 0, data: [UInt8](repeating: 1, count: 512))
        } throws: { error in
            (error as? ISCSIClientError)?.senseCode?.key == 0x07
        }
        try client.logout()

        let device = try await RemoteISCSIDevice.connect(url: target.url, initiatorName: initiatorName, connections: 1)
        #expect(device.isReadOnly)
        let error = await blockDeviceError {
            try await device.write(offset: 0, data: ByteBuffer(bytes: [UInt8](repeating: 1, count: 512)), fua: false)
        }
        #expect(error?.code == .writeProtected)
        await device.close()
    }
}
