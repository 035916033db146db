import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Repository
import Testing

#if canImport(Glibc)
    import Glibc
#endif

// MARK: - HTTP range server

/// A tiny HTTP/1.1 server on 127.0.0.1 serving one image with `Range: bytes=a-b` (RFC 9110 §14), or ignoring
/// ranges when told to (answering 200 with the whole image).
final class RangeHTTPServer {
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let channel: any Channel

    init(image: [UInt8], honourRange: Bool = true) throws {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(
                        RangeHandler(image: image, honourRange: honourRange))
                }
            }
        channel = try bootstrap.bind(host: "127.0.0.1", port: 0).wait()
    }

    var url: String { "http://127.0.0.1:\(channel.localAddress?.port ?? 0)/images/disk.img" }

    func stop() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

private final class RangeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let image: [UInt8]
    let honourRange: Bool
    var request: HTTPRequestHead?

    init(image: [UInt8], honourRange: Bool) {
        self.image = image
        self.honourRange = honourRange
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): request = head
        case .body: break
        case .end:
            guard let request else { return }
            respond(to: request, context: context)
        }
    }

    private func respond(to request: HTTPRequestHead, context: ChannelHandlerContext) {
        var status = HTTPResponseStatus.ok
        var body = image[...]
        var headers = HTTPHeaders()
        if honourRange, let range = request.headers.first(name: "range"), let bounds = Self.parse(range) {
            let end = min(bounds.upperBound, image.count - 1)
            if bounds.lowerBound >= image.count || bounds.lowerBound > end {
                status = .rangeNotSatisfiable
                body = []
                headers.add(name: "Content-Range", value: "bytes */\(image.count)")
            } else {
                status = .partialContent
                body = image[bounds.lowerBound...end]
                headers.add(name: "Content-Range", value: "bytes \(bounds.lowerBound)-\(end)/\(image.count)")
            }
        }
        headers.add(name: "Content-Length", value: "\(body.count)")
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if request.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    /// `bytes=a-b` → a...b.
    static func parse(_ header: String) -> ClosedRange<Int>? {
        guard header.hasPrefix("bytes=") else { return nil }
        let parts = header.dropFirst("bytes=".count).split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, let start = Int(parts[0]), let end = Int(parts[1]), start <= end else { return nil }
        return start...end
    }
}

// MARK: - tgt fixture

/// A private tgtd on 127.0.0.1 serving `image` as LUN 1 (the approach of BlockDeviceTests' fixture, copied).
final class TGTImageFixture {
    static let tgtd = "/usr/sbin/tgtd"
    static let tgtadm = "/usr/sbin/tgtadm"
    static var isInstalled: Bool {
        FileManager.default.isExecutableFile(atPath: tgtd) && FileManager.default.isExecutableFile(atPath: tgtadm)
    }

    let targetName = "iqn.2024-01.io.livemount.test:ingest"
    let port: Int
    let control: Int
    private let process: Process

    var url: String { "iscsi://127.0.0.1:\(port)/\(targetName.replacingOccurrences(of: ":", with: "%3A"))/1" }

    init(image: String) throws {
        port = try Self.freePort()
        control = 1000 + port % 29000
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
            try admin("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        } catch {
            stop()
            throw error
        }
    }

    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        unlink("/var/run/tgtd/socket.\(control)")
        unlink("/var/run/tgtd/socket.\(control).lock")
    }

    private func waitUntilReady() throws {
        for _ in 0..<400 {
            guard process.isRunning else { throw SourceTestFailure("tgtd exited with \(process.terminationStatus)") }
            if (try? admin("--op", "show", "--mode", "target")) != nil { return }
            usleep(25_000)
        }
        throw SourceTestFailure("tgtd did not open its control socket")
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
            throw SourceTestFailure("tgtadm \(arguments.joined(separator: " ")) exited \(tool.terminationStatus)")
        }
    }

    private static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SourceTestFailure("socket: errno \(errno)") }
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
        guard bound else { throw SourceTestFailure("bind: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

struct SourceTestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Every chunk ID of `manifest`, nil for zero chunks.
func chunkIDs(_ manifest: DiskManifest) -> [ChunkID?] {
    (0..<manifest.chunkCount).map { manifest.chunk(at: $0) }
}

// MARK: - Tests

@Suite("Disk sources: file, HTTP range, iSCSI")
struct SourceTests {
    @Test("ingest from an HTTP range server equals ingest from the file")
    func http() async throws {
        let fixture = try RepositoryFixture()
        defer { fixture.directory.remove() }
        let image = TestImage()
        let fromFile = try fixture.ingest(image.bytes)
        let server = try RangeHTTPServer(image: image.bytes)
        defer { server.stop() }

        let source = try openDiskSource(server.url)
        #expect(source.size == UInt64(image.bytes.count))
        #expect(try source.read(offset: 5000, length: 3000) == Array(image.bytes[5000..<8000]))
        source.close()

        let fromHTTP = try fixture.repository.ingest(
            IngestRequest(
                vm: "web01", configurationPath: fixture.configuration,
                disks: [IngestDisk(name: "sda", source: server.url)],
                chunkSize: TestImage.chunkSize))
        #expect(fromHTTP.newChunks == 0)
        #expect(fromHTTP.bytesRead == fromFile.bytesRead)
        let fileManifest = try fixture.repository.manifest(backupID: fromFile.backup.id, disk: "sda")
        let httpManifest = try fixture.repository.manifest(backupID: fromHTTP.backup.id, disk: "sda")
        #expect(chunkIDs(httpManifest) == chunkIDs(fileManifest))
        #expect(try await readDisk(httpManifest, from: fixture.repository.chunkSource) == image.bytes)
    }

    @Test("a server that ignores Range is refused with a clear error")
    func httpWithoutRanges() throws {
        let server = try RangeHTTPServer(image: [UInt8](repeating: 7, count: 10000), honourRange: false)
        defer { server.stop() }
        let error = repositoryError { _ = try openDiskSource(server.url) }
        #expect(error?.code == .sourceFailed)
        #expect(error?.message.contains("ignores Range") == true)
        let refused = repositoryError { _ = try openDiskSource("http://127.0.0.1:1/disk.img") }
        #expect(refused?.code == .sourceFailed)
        #expect(repositoryError { _ = try openDiskSource("ftp://x/y") }?.code == .invalidArgument)
    }

    @Test(
        "ingest from an iSCSI LUN (tgt) equals ingest from the file",
        .enabled(if: TGTImageFixture.isInstalled, "tgtd/tgtadm not installed (Debian package tgt)"))
    func iscsi() async throws {
        let fixture = try RepositoryFixture()
        defer { fixture.directory.remove() }
        var bytes = TestImage().bytes
        bytes += [UInt8](repeating: 0, count: TestImage.chunkSize - bytes.count % TestImage.chunkSize)
        let fromFile = try fixture.ingest(bytes, name: "lun.img")
        let tgt = try TGTImageFixture(image: fixture.directory.file("lun.img"))
        defer { tgt.stop() }

        let fromISCSI = try fixture.repository.ingest(
            IngestRequest(
                vm: "web01", configurationPath: fixture.configuration,
                disks: [IngestDisk(name: "sda", source: tgt.url)],
                chunkSize: TestImage.chunkSize))
        #expect(fromISCSI.bytesRead == UInt64(bytes.count))
        #expect(fromISCSI.newChunks == 0)
        let fileManifest = try fixture.repository.manifest(backupID: fromFile.backup.id, disk: "sda")
        let lunManifest = try fixture.repository.manifest(backupID: fromISCSI.backup.id, disk: "sda")
        #expect(chunkIDs(lunManifest) == chunkIDs(fileManifest))

        // A read that is not block-aligned is served from the covering blocks.
        let source = try openDiskSource(tgt.url)
        defer { source.close() }
        #expect(try source.read(offset: 700, length: 5000) == Array(bytes[700..<5700]))
    }
}
