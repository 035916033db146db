import BlockDevice
import CCurl
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A disk being backed up, read a piece at a time (DESIGN.md, Formats: Ingest).
///
/// Implementations: a raw image file or block device (`FileDiskSource`), an iSCSI LUN (`ISCSIDiskSource`),
/// an HTTP(S) URL served with Range requests (`HTTPDiskSource`). `openDiskSource(_:)` picks one from a
/// source specification. Reads come from one thread at a time (the ingest's reader).
public protocol DiskSource: Sendable {
    /// The disk's size in bytes.
    var size: UInt64 { get }
    /// What the source is, for messages: a path or URL (with no credentials).
    var description: String { get }
    /// Reads exactly `length` bytes at `offset` (`offset + length <= size`); throws when it cannot.
    func read(offset: UInt64, length: Int) throws -> [UInt8]
    /// Releases the file, session or connection. Reads after `close()` fail.
    func close()
}

/// Opens the disk source named by `spec`:
/// - `iscsi://host[:port]/target-iqn/lun`: an iSCSI LUN, read with READ (16) (see `ISCSIClient`);
/// - `http://...` or `https://...`: a URL whose server honours `Range` requests;
/// - `file:///path` or any other string: a raw image file or a block device.
public func openDiskSource(_ spec: String) throws(RepositoryError) -> any DiskSource {
    let lowered = spec.lowercased()
    if lowered.hasPrefix("iscsi://") { return try ISCSIDiskSource(url: spec) }
    if lowered.hasPrefix("http://") || lowered.hasPrefix("https://") { return try HTTPDiskSource(url: spec) }
    if lowered.hasPrefix("file://") { return try FileDiskSource(path: String(spec.dropFirst("file://".count))) }
    guard !spec.isEmpty, !spec.contains("://") else {
        throw RepositoryError.invalid("unsupported disk source \(spec) (use a path, iscsi://, http:// or https://)")
    }
    return try FileDiskSource(path: spec)
}

// MARK: - Raw file or block device

/// A raw image file or a block device, read with `pread`. The size of a block device comes from
/// `lseek(SEEK_END)` (the same value as `BLKGETSIZE64`), of a file from `fstat`.
public final class FileDiskSource: DiskSource {
    public let path: String
    public let size: UInt64
    private let fd: Mutex<Int32>

    public init(path: String) throws(RepositoryError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            throw RepositoryError.source("cannot open disk source \(path): \(String(cString: strerror(code)))")
        }
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            let code = errno
            Glibc.close(fd)
            throw RepositoryError.source("cannot stat disk source \(path): \(String(cString: strerror(code)))")
        }
        let kind = status.st_mode & S_IFMT
        if kind == S_IFBLK {
            let end = lseek(fd, 0, SEEK_END)
            guard end >= 0 else {
                let code = errno
                Glibc.close(fd)
                throw RepositoryError.source("cannot size block device \(path): \(String(cString: strerror(code)))")
            }
            size = UInt64(end)
        } else if kind == S_IFREG {
            size = UInt64(status.st_size)
        } else {
            Glibc.close(fd)
            throw RepositoryError.source("disk source \(path) is neither a regular file nor a block device")
        }
        self.path = path
        self.fd = Mutex(fd)
    }

    public var description: String { path }

    public func read(offset: UInt64, length: Int) throws -> [UInt8] {
        let fd = self.fd.withLock { $0 }
        guard fd >= 0 else { throw RepositoryError.source("disk source \(path) is closed") }
        var bytes = [UInt8](repeating: 0, count: length)
        var done = 0
        while done < length {
            let count = bytes.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return pread(fd, base + done, length - done, off_t(offset) + off_t(done))
            }
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else {
                let code = errno
                throw RepositoryError.source(
                    "read of \(length) bytes at offset \(offset) of \(path) failed: \(String(cString: strerror(code)))")
            }
            guard count > 0 else {
                throw RepositoryError.source(
                    "\(path) ended at \(offset + UInt64(done)), before the \(size) bytes it had")
            }
            done += count
        }
        return bytes
    }

    public func close() {
        fd.withLock { fd in
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
    }

    deinit { close() }
}

// MARK: - iSCSI LUN

/// An iSCSI LUN read through libiscsi (`ISCSIClient`): READ CAPACITY (16) for the size, READ (16) for data,
/// at most `maximumTransfer` bytes per command.
public final class ISCSIDiskSource: DiskSource {
    /// The initiator name ingest logs in with.
    public static let initiatorName = "iqn.2024-01.io.livemount:ingest"
    /// Largest READ (16) issued: well under common targets' MAXIMUM TRANSFER LENGTH.
    static let maximumTransfer = 512 * 1024

    public let size: UInt64
    public let description: String
    private let blockSize: Int
    private let client: Mutex<ISCSIClient?>

    public init(url: String) throws(RepositoryError) {
        let client = ISCSIClient()
        let shown = Self.redact(url)
        do {
            try client.connect(url: url, initiatorName: Self.initiatorName)
            let capacity = try client.readCapacity16()
            guard capacity.blockSize > 0 else {
                throw RepositoryError.source("iSCSI LUN \(shown) reports a block size of 0")
            }
            blockSize = capacity.blockSize
            size = capacity.blockCount * UInt64(capacity.blockSize)
        } catch let error as RepositoryError {
            throw error
        } catch {
            throw RepositoryError.source("cannot open iSCSI disk source \(shown): \(error)")
        }
        description = shown
        self.client = Mutex(client)
    }

    /// The URL without a `user%password@` part.
    static func redact(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://"), let at = url[schemeEnd.upperBound...].firstIndex(of: "@") else {
            return url
        }
        return String(url[..<schemeEnd.upperBound]) + String(url[url.index(after: at)...])
    }

    public func read(offset: UInt64, length: Int) throws -> [UInt8] {
        let block = UInt64(blockSize)
        let firstLBA = offset / block
        let end = offset + UInt64(length)
        let lastLBA = (end + block - 1) / block
        let description = self.description
        let maximumBlocks = max(1, Self.maximumTransfer / blockSize)
        return try client.withLock { client throws(RepositoryError) -> [UInt8] in
            guard let client else { throw RepositoryError.source("iSCSI disk source \(description) is closed") }
            var bytes: [UInt8] = []
            bytes.reserveCapacity(Int(lastLBA - firstLBA) * blockSize)
            var lba = firstLBA
            while lba < lastLBA {
                let blocks = Int(min(UInt64(maximumBlocks), lastLBA - lba))
                do {
                    bytes += try client.read(lba: lba, blocks: blocks)
                } catch {
                    throw RepositoryError.source(
                        "READ (16) of \(blocks) blocks at LBA \(lba) of \(description) failed: \(error)")
                }
                lba += UInt64(blocks)
            }
            let skip = Int(offset - firstLBA * block)
            if skip == 0 && bytes.count == length { return bytes }
            return Array(bytes[skip..<skip + length])
        }
    }

    public func close() {
        client.withLock { client in
            try? client?.logout()
            client = nil
        }
    }
}

// MARK: - HTTP(S) URL

/// A disk image served over HTTP or HTTPS, read with `Range` requests through libcurl (RFC 9110 §14).
///
/// Opening sends `Range: bytes=0-0`: a `206 Partial Content` with `Content-Range: bytes 0-0/<size>` gives the
/// size; a server that answers `200` ignores ranges and is refused (it would send the whole image for every
/// chunk). The size falls back to a HEAD's Content-Length when the total is `*`. Each read is one range
/// request on a kept-alive connection, retried a few times on transport errors.
public final class HTTPDiskSource: DiskSource {
    public let size: UInt64
    public let description: String
    private let url: String
    private let handle: Mutex<CurlHandle?>
    /// Attempts per read before a transport error is reported.
    static let attempts = 3

    public init(url: String) throws(RepositoryError) {
        self.url = url
        description = ISCSIDiskSource.redact(url)
        let curl = try CurlHandle(url: url)
        let probe = try curl.get(range: 0...0, description: description)
        switch probe.status {
        case 206:
            if let total = Self.total(contentRange: probe.contentRange) {
                size = total
            } else {
                size = try Self.headSize(curl, description: description)
            }
        case 416:
            // An empty image has no byte 0 to send.
            size = try Self.headSize(curl, description: description)
        case 200:
            throw RepositoryError.source(
                "HTTP disk source \(description) ignores Range requests (200 instead of 206): cannot read it by pieces")
        default:
            throw RepositoryError.source("HTTP disk source \(description) answered status \(probe.status)")
        }
        handle = Mutex(curl)
    }

    /// The total of a `Content-Range: bytes a-b/total` header (RFC 9110 §14.4); nil when absent or `*`.
    static func total(contentRange: String?) -> UInt64? {
        guard let contentRange, let slash = contentRange.lastIndex(of: "/") else { return nil }
        return UInt64(contentRange[contentRange.index(after: slash)...].trimmingCharacters(in: .whitespaces))
    }

    private static func headSize(_ curl: CurlHandle, description: String) throws(RepositoryError) -> UInt64 {
        let length = try curl.head(description: description)
        guard let length else {
            throw RepositoryError.source(
                "HTTP disk source \(description) gives no Content-Length or Content-Range total")
        }
        return length
    }

    public func read(offset: UInt64, length: Int) throws -> [UInt8] {
        guard length > 0 else { return [] }
        let description = self.description
        return try handle.withLock { curl throws(RepositoryError) -> [UInt8] in
            guard let curl else { throw RepositoryError.source("HTTP disk source \(description) is closed") }
            var lastError = RepositoryError.source("no attempt")
            for _ in 0..<Self.attempts {
                let response: CurlHandle.Response
                do throws(RepositoryError) {
                    response = try curl.get(
                        range: offset...(offset + UInt64(length) - 1), description: description, limit: length)
                } catch {
                    lastError = error
                    continue
                }
                guard response.status == 206 else {
                    throw RepositoryError.source(
                        "HTTP disk source \(description) answered \(response.status) to a range request at offset \(offset)"
                    )
                }
                guard response.body.count == length else {
                    throw RepositoryError.source(
                        "HTTP disk source \(description) sent \(response.body.count) of \(length) bytes at offset \(offset)"
                    )
                }
                return response.body
            }
            throw lastError
        }
    }

    public func close() {
        handle.withLock { $0 = nil }
    }
}

/// One libcurl easy handle (a kept-alive connection). Not thread-safe: `HTTPDiskSource` serialises it.
final class CurlHandle: @unchecked Sendable {
    /// What one request brought back.
    struct Response {
        var status: Int
        var contentRange: String?
        var contentLength: UInt64?
        var body: [UInt8]
    }

    /// Response bytes and headers collected by the C callbacks.
    private final class Collector {
        var body: [UInt8] = []
        var limit: Int
        var contentRange: String?
        init(limit: Int) { self.limit = limit }
    }

    private let curl: UnsafeMutableRawPointer
    private let url: String

    private static let globalInit: Bool = {
        curl_global_init(Int(CURL_GLOBAL_ALL)) == CURLE_OK
    }()

    init(url: String) throws(RepositoryError) {
        guard Self.globalInit, let curl = curl_easy_init() else {
            throw RepositoryError.source("libcurl could not be initialised")
        }
        self.curl = curl
        self.url = url
    }

    deinit {
        curl_easy_cleanup(curl)
    }

    /// GET of `range` (inclusive byte positions); the body is cut off (an error) beyond `limit` bytes.
    func get(range: ClosedRange<UInt64>, description: String, limit: Int = 1) throws(RepositoryError) -> Response {
        try perform(
            head: false, range: "\(range.lowerBound)-\(range.upperBound)", limit: limit, description: description)
    }

    /// HEAD; returns the Content-Length, if any.
    func head(description: String) throws(RepositoryError) -> UInt64? {
        let response = try perform(head: true, range: nil, limit: 0, description: description)
        guard response.status == 200 else {
            throw RepositoryError.source("HEAD of HTTP disk source \(description) answered \(response.status)")
        }
        return response.contentLength
    }

    private func perform(head: Bool, range: String?, limit: Int, description: String) throws(RepositoryError)
        -> Response
    {
        let collector = Collector(limit: limit)
        let context = Unmanaged.passRetained(collector)
        defer { context.release() }
        livemount_curl_setopt_string(curl, CURLOPT_URL, url)
        livemount_curl_setopt_long(curl, CURLOPT_NOSIGNAL, 1)
        livemount_curl_setopt_long(curl, CURLOPT_FOLLOWLOCATION, 1)
        livemount_curl_setopt_long(curl, CURLOPT_CONNECTTIMEOUT, 30)
        // A stalled transfer (under 1 KiB/s for 60 s) is an error rather than a hang.
        livemount_curl_setopt_long(curl, CURLOPT_LOW_SPEED_LIMIT, 1024)
        livemount_curl_setopt_long(curl, CURLOPT_LOW_SPEED_TIME, 60)
        livemount_curl_setopt_long(curl, CURLOPT_NOBODY, head ? 1 : 0)
        if !head { livemount_curl_setopt_long(curl, CURLOPT_HTTPGET, 1) }
        livemount_curl_setopt_string(curl, CURLOPT_RANGE, range)
        livemount_curl_setopt_write_callback(curl, CURLOPT_WRITEFUNCTION, Self.writeBody)
        livemount_curl_setopt_pointer(curl, CURLOPT_WRITEDATA, context.toOpaque())
        livemount_curl_setopt_write_callback(curl, CURLOPT_HEADERFUNCTION, Self.writeHeader)
        livemount_curl_setopt_pointer(curl, CURLOPT_HEADERDATA, context.toOpaque())
        let result = curl_easy_perform(curl)
        guard result == CURLE_OK else {
            if result == CURLE_WRITE_ERROR {
                var status = 0
                livemount_curl_getinfo_long(curl, CURLINFO_RESPONSE_CODE, &status)
                if status == 200 && range != nil {
                    throw RepositoryError.source(
                        "HTTP disk source \(description) ignores Range requests (200 instead of 206): cannot read it by pieces"
                    )
                }
                throw RepositoryError.source(
                    "HTTP disk source \(description) sent more than the \(limit) bytes asked for")
            }
            let text = curl_easy_strerror(result).map { String(cString: $0) } ?? "error \(result.rawValue)"
            throw RepositoryError.source("HTTP request to disk source \(description) failed: \(text)")
        }
        var status = 0
        livemount_curl_getinfo_long(curl, CURLINFO_RESPONSE_CODE, &status)
        var length: curl_off_t = -1
        livemount_curl_getinfo_off_t(curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length)
        return Response(
            status: status, contentRange: collector.contentRange,
            contentLength: length >= 0 ? UInt64(length) : nil, body: collector.body)
    }

    private static let writeBody: livemount_curl_write_callback = { data, size, count, context in
        guard let data, let context else { return 0 }
        let collector = Unmanaged<Collector>.fromOpaque(context).takeUnretainedValue()
        let total = size * count
        guard collector.body.count + total <= collector.limit else { return 0 }
        collector.body.append(contentsOf: UnsafeRawBufferPointer(start: data, count: total))
        return total
    }

    private static let writeHeader: livemount_curl_write_callback = { data, size, count, context in
        guard let data, let context else { return 0 }
        let collector = Unmanaged<Collector>.fromOpaque(context).takeUnretainedValue()
        let total = size * count
        let line = String(decoding: UnsafeRawBufferPointer(start: data, count: total), as: UTF8.self)
        if line.hasPrefix("HTTP/") {
            // A new response (after a redirect): forget the previous one's headers.
            collector.contentRange = nil
        } else if let colon = line.firstIndex(of: ":"),
            line[..<colon].lowercased() == "content-range"
        {
            collector.contentRange = line[line.index(after: colon)...].trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return total
    }
}
