import BlockDevice
import Dispatch
import Foundation
import Logging
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - Destination URL

/// A parsed destination URL: where a relocation copies a live-mounted disk to (its "primary LUN").
///
/// Accepted forms:
/// - `/abs/path` or `file:///abs/path`: a regular file, or a block device if the path is one (`S_ISBLK`).
///   A `file:` URL's path is percent-decoded (`file:///vm/disk%201.img` is `/vm/disk 1.img`); a plain path is
///   taken as it is.
/// - `iscsi://[user[%secret]@]host[:port]/IQN/LUN`: libiscsi's URL form (`iscsi_parse_full_url`), port 3260 by
///   default, the IQN URL-encoded (`%3A` for `:`). As in libiscsi the user ends at the first `%` (or `:` when
///   there is no `%`); the secret runs to the last `@` and is not decoded, so it may hold `%`, `:`, `@` or `/`.
///   The credentials are taken out of the URL and handed to the login separately (CHAP, RFC 7143 §12.1.3), so
///   neither libiscsi's messages nor `RemoteISCSIDevice.url` ever carry the secret.
///
/// Anything else (a relative path, another scheme, a missing or non-numeric LUN, an empty IQN, a user without a
/// secret, query parameters) is an `.invalidURL` error naming the problem.
public struct DestinationURL: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// A regular file or block device at an absolute path.
        case file(path: String)
        /// An iSCSI LUN; `url` is the URL without credentials (`iscsi://host[:port]/IQN/LUN`).
        case iscsi(url: String, user: String?, secret: String?)
    }

    public var kind: Kind
    /// The URL as given, with the CHAP secret replaced by "***" (for logs, status, API answers).
    public var redacted: String

    public init(kind: Kind, redacted: String) {
        self.kind = kind
        self.redacted = redacted
    }

    /// The highest LUN libiscsi addresses (SAM-5 flat space addressing, 14 bits).
    static let maximumLUN = 16383

    /// Parses a destination as given on the command line or in the control API.
    public static func parse(_ text: String) throws(DestinationError) -> DestinationURL {
        let redacted = redact(text)
        func invalid(_ problem: String) -> DestinationError { .invalidURL(redacted, problem) }

        guard !text.isEmpty else { throw invalid("empty destination") }
        guard !text.utf8.contains(0) else { throw invalid("contains a NUL byte") }
        if text.hasPrefix("/") {
            return DestinationURL(kind: .file(path: try checkedPath(text, invalid)), redacted: redacted)
        }
        let lowered = text.lowercased()
        if lowered.hasPrefix("file:") {
            guard lowered.hasPrefix("file://") else { throw invalid("a file URL is file:///absolute/path") }
            let rest = String(text.dropFirst("file://".count))
            guard rest.hasPrefix("/") else {
                throw invalid("a file URL needs an empty host and an absolute path (file:///absolute/path)")
            }
            guard let path = rest.removingPercentEncoding else { throw invalid("bad percent-encoding in the path") }
            return DestinationURL(kind: .file(path: try checkedPath(path, invalid)), redacted: redacted)
        }
        if lowered.hasPrefix("iscsi://") {
            return try parseISCSI(text, redacted: redacted, invalid)
        }
        if let schemeEnd = text.range(of: "://") {
            let scheme = text[..<schemeEnd.lowerBound]
            throw invalid("unsupported scheme \"\(scheme)\" (use an absolute path, file:/// or iscsi://)")
        }
        throw invalid("not an absolute path (use /absolute/path, file:///absolute/path or iscsi://host/IQN/LUN)")
    }

    /// An absolute path that can name a file (not a directory by its form).
    private static func checkedPath(
        _ path: String, _ invalid: (String) -> DestinationError
    ) throws(DestinationError) -> String {
        guard path.hasPrefix("/") else { throw invalid("not an absolute path") }
        guard !path.hasSuffix("/") else { throw invalid("names a directory, not a file or block device") }
        guard !path.utf8.contains(0) else { throw invalid("contains a NUL byte") }
        return path
    }

    /// Parses `iscsi://[user[%secret]@]host[:port]/IQN/LUN` the way libiscsi does (`iscsi_parse_url`).
    private static func parseISCSI(
        _ text: String, redacted: String, _ invalid: (String) -> DestinationError
    ) throws(DestinationError) -> DestinationURL {
        var rest = Substring(text.dropFirst("iscsi://".count))
        guard !rest.contains("?") else {
            throw invalid("query parameters are not supported; give CHAP credentials as user%secret@")
        }
        var user: String?
        var secret: String?
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            let separator = userInfo.firstIndex(of: "%") ?? userInfo.firstIndex(of: ":")
            guard let separator else { throw invalid("CHAP user \"\(userInfo)\" has no secret (user%secret@)") }
            let name = String(userInfo[..<separator])
            let password = String(userInfo[userInfo.index(after: separator)...])
            guard !name.isEmpty else { throw invalid("empty CHAP user") }
            guard !password.isEmpty else { throw invalid("empty CHAP secret for user \"\(name)\"") }
            user = name
            secret = password
        }
        guard let slash = rest.firstIndex(of: "/") else { throw invalid("missing /IQN/LUN after the portal") }
        let portal = rest[..<slash]
        try checkPortal(portal, invalid)
        let path = rest[rest.index(after: slash)...]
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard let iqn = parts.first, !iqn.isEmpty else { throw invalid("empty target IQN") }
        guard parts.count >= 2, !parts[1].isEmpty else { throw invalid("missing LUN (iscsi://host/IQN/LUN)") }
        guard parts.count == 2 else {
            throw invalid("unexpected path after the LUN: \"\(parts[2...].joined(separator: "/"))\"")
        }
        let lunText = parts[1]
        guard lunText.allSatisfy({ $0.isASCII && $0.isNumber }), let lun = Int(lunText) else {
            throw invalid("LUN \"\(lunText)\" is not a number")
        }
        guard lun <= maximumLUN else { throw invalid("LUN \(lun) is out of range 0...\(maximumLUN)") }
        guard iqn.removingPercentEncoding != nil else { throw invalid("bad percent-encoding in IQN \"\(iqn)\"") }
        let plain = "iscsi://\(portal)/\(iqn)/\(lunText)"
        return DestinationURL(kind: .iscsi(url: plain, user: user, secret: secret), redacted: redacted)
    }

    /// Checks `host[:port]` or `[IPv6]:port`.
    private static func checkPortal(_ portal: Substring, _ invalid: (String) -> DestinationError)
        throws(DestinationError)
    {
        guard !portal.isEmpty else { throw invalid("empty host") }
        var port: Substring?
        if portal.hasPrefix("[") {
            guard let close = portal.firstIndex(of: "]") else { throw invalid("unterminated [IPv6] host") }
            guard portal.index(after: portal.startIndex) < close else { throw invalid("empty host") }
            let after = portal[portal.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw invalid("unexpected \"\(after)\" after the [IPv6] host") }
                port = after.dropFirst()
            }
        } else if let colon = portal.lastIndex(of: ":") {
            guard portal.startIndex < colon else { throw invalid("empty host") }
            port = portal[portal.index(after: colon)...]
        }
        if let port {
            guard port.allSatisfy({ $0.isASCII && $0.isNumber }), let number = Int(port), (1...65535).contains(number)
            else { throw invalid("port \"\(port)\" is not a number in 1...65535") }
        }
    }

    /// `text` with the secret of an `iscsi://user%secret@` URL replaced by "***", even when the rest of the URL
    /// does not parse (the error message for a bad URL names it too).
    static func redact(_ text: String) -> String {
        guard text.lowercased().hasPrefix("iscsi://") else { return text }
        let schemeEnd = text.index(text.startIndex, offsetBy: "iscsi://".count)
        guard let at = text[schemeEnd...].lastIndex(of: "@") else { return text }
        let userInfo = text[schemeEnd..<at]
        guard let separator = userInfo.firstIndex(of: "%") ?? userInfo.firstIndex(of: ":") else { return text }
        return String(text[..<text.index(after: separator)]) + "***" + String(text[at...])
    }
}

// MARK: - Errors

/// Why a destination cannot be used; `description` names the destination (redacted) and what is wrong.
public struct DestinationError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The URL does not parse, or names something that is not a file, block device or iSCSI LUN.
        case invalidURL
        /// The destination holds fewer bytes than the disk.
        case tooSmall
        /// The destination's logical block size differs from the disk's.
        case blockSizeMismatch
        /// The destination is not there: a missing file or directory, a refused connection or login.
        case unreachable
        /// The destination refuses writes (write-protected LUN, read-only file system, permissions).
        case readOnly
        /// Another system call or SCSI command failed.
        case ioError
    }

    public var code: Code
    public var description: String

    public init(code: Code, description: String) {
        self.code = code
        self.description = description
    }

    static func invalidURL(_ destination: String, _ problem: String) -> Self {
        .init(code: .invalidURL, description: "destination \(destination): \(problem)")
    }

    static func tooSmall(_ destination: String, holds: UInt64, needs: UInt64) -> Self {
        .init(
            code: .tooSmall,
            description: "destination \(destination) holds \(holds) bytes (\(humanSize(holds))); "
                + "the disk needs \(needs) bytes (\(humanSize(needs)))")
    }

    static func blockSizeMismatch(_ destination: String, _ problem: String) -> Self {
        .init(code: .blockSizeMismatch, description: "destination \(destination): \(problem)")
    }

    static func unreachable(_ destination: String, _ problem: String) -> Self {
        .init(code: .unreachable, description: "destination \(destination) is unreachable: \(problem)")
    }

    static func readOnly(_ destination: String, _ problem: String) -> Self {
        .init(code: .readOnly, description: "destination \(destination) is not writable: \(problem)")
    }

    static func ioError(_ destination: String, _ problem: String) -> Self {
        .init(code: .ioError, description: "destination \(destination): \(problem)")
    }

    /// `bytes` in GiB (from 1 GiB) or MiB, with two decimals.
    static func humanSize(_ bytes: UInt64) -> String {
        let gib = Double(bytes) / Double(1 << 30)
        if gib >= 1 { return String(format: "%.2f GiB", gib) }
        return String(format: "%.2f MiB", Double(bytes) / Double(1 << 20))
    }
}

// MARK: - Relocation destination

/// An open primary LUN: the device the relocation pump copies to, checked for size, block size and
/// writability, and the cheapest way it has to make ranges read as zeros.
public final class RelocationDestination: Sendable {
    public let url: DestinationURL
    public let device: any BlockDevice
    /// True when every byte reads as zero right after open (a file this call created or grew from 0 bytes).
    public let createdZeroed: Bool
    /// True when `zeroFill` avoids writing data (hole punch, UNMAP with LBPRZ, WRITE SAME, BLKZEROOUT).
    public let zeroFillIsCheap: Bool

    /// How `zeroFill` zeroes this device.
    private enum ZeroMethod: Sendable {
        /// `device.unmap` guarantees zeros: a hole punched in a file, a zeroing discard on a block device
        /// (`AIOFileDevice.unmap`), or any other device whose unmap promises zeros.
        case unmap
        /// The `BLKZEROOUT` ioctl on the block device at `path` (the kernel writes zeros itself).
        case blockZeroOut(path: String)
        /// WRITE SAME (16), UNMAP, or zero writes on an iSCSI LUN.
        case iscsi(RemoteISCSIDevice)
        /// Zero writes of at most 1 MiB.
        case writes
    }

    private let method: ZeroMethod
    /// Set once BLKZEROOUT has been refused; later fills write zeros straight away.
    private let blockZeroOutRefused = Atomic<Bool>(false)
    private let logger: Logger

    /// The largest zero write, and the largest single unmap or ioctl.
    static let zeroWriteBytes = 1 << 20
    static let zeroCommandBytes: UInt64 = 1 << 30

    /// Wraps an already open device (the pump's tests use a `MemoryBlockDevice`). The zeroing method follows
    /// the device: `RemoteISCSIDevice` → WRITE SAME/UNMAP, `AIOFileDevice` → hole punch or BLKZEROOUT, any
    /// other device → `unmap` when it supports it, else zero writes.
    public init(url: DestinationURL, device: any BlockDevice, createdZeroed: Bool, logger: Logger) {
        self.url = url
        self.device = device
        self.createdZeroed = createdZeroed
        self.logger = logger
        if let remote = device as? RemoteISCSIDevice {
            method = .iscsi(remote)
            // WRITE SAME as reported by REPORT SUPPORTED OPERATION CODES; if the target does not say, a Block
            // Limits MAXIMUM WRITE SAME LENGTH or LBPME (thin LUNs deallocate through WRITE SAME) suggest it.
            let writeSameLikely =
                remote.writeSameReported ?? (remote.maximumWriteSameBlocks > 0 || remote.supportsUnmap)
            zeroFillIsCheap = writeSameLikely || (remote.supportsUnmap && remote.unmappedReadsZero)
        } else if let file = device as? AIOFileDevice {
            if file.supportsUnmap {
                method = .unmap
            } else if file.isBlockDevice {
                method = .blockZeroOut(path: file.path)
            } else {
                method = .writes
            }
            zeroFillIsCheap = file.supportsUnmap
        } else {
            method = device.supportsUnmap ? .unmap : .writes
            zeroFillIsCheap = device.supportsUnmap
        }
    }

    // MARK: Opening

    /// Opens (creating a missing file as a sparse file of `requiredBytes`; growing a 0-byte regular file to it)
    /// and checks: capacity >= requiredBytes else .tooSmall, block size == blockSize else .blockSizeMismatch,
    /// writable else .readOnly. `create: false` (used when resuming after a restart) never creates or grows: a
    /// missing file is an error (.unreachable).
    ///
    /// iSCSI: logs in with `connections` sessions via `RemoteISCSIDevice.connect` (initiator name
    /// `initiatorName`, CHAP from the URL's user/secret, passed apart from the URL). Files and block devices:
    /// `AIOFileDevice.open(direct: true)`, which falls back to buffered I/O where O_DIRECT is refused (tmpfs).
    /// A file this call created is removed again (a grown one truncated back to 0 bytes) when a later check fails.
    public static func open(
        _ url: DestinationURL, requiredBytes: UInt64, blockSize: Int, create: Bool = true,
        initiatorName: String = "iqn.2026-11.org.livemount:relocation", connections: Int = 4, logger: Logger
    ) async throws(DestinationError) -> RelocationDestination {
        let name = url.redacted
        guard blockSize >= 512, blockSize <= 65536, blockSize & (blockSize - 1) == 0 else {
            throw .blockSizeMismatch(name, "block size \(blockSize) is not a power of two in 512...65536")
        }
        guard requiredBytes % UInt64(blockSize) == 0 else {
            throw .blockSizeMismatch(name, "the disk's \(requiredBytes) bytes are not whole \(blockSize)-byte blocks")
        }
        switch url.kind {
        case .file(let path):
            let device = try await openFile(
                path: path, name: name, requiredBytes: requiredBytes, blockSize: blockSize, create: create,
                logger: logger)
            return RelocationDestination(
                url: url, device: device.device, createdZeroed: device.preparation != .existing, logger: logger)
        case .iscsi(let plainURL, let user, let secret):
            let device = try await openISCSI(
                url: plainURL, name: name, user: user, secret: secret, requiredBytes: requiredBytes,
                blockSize: blockSize, initiatorName: initiatorName, connections: connections)
            return RelocationDestination(url: url, device: device, createdZeroed: false, logger: logger)
        }
    }

    /// What `openFile` did to the path before opening it, to undo if a check fails.
    private enum FilePreparation: Sendable {
        /// An existing file (any size) or block device, left as it was.
        case existing
        /// A sparse file this call created.
        case created
        /// A 0-byte file this call grew (sparse).
        case grown
    }

    /// Creates or grows the file if allowed, opens it with `AIOFileDevice` and checks it. The system calls run
    /// on a Dispatch worker.
    private static func openFile(
        path: String, name: String, requiredBytes: UInt64, blockSize: Int, create: Bool, logger: Logger
    ) async throws(DestinationError) -> (device: AIOFileDevice, preparation: FilePreparation) {
        let opened = await onWorker { () -> Result<(AIOFileDevice, FilePreparation), DestinationError> in
            let preparation: FilePreparation
            switch prepareFile(path: path, name: name, requiredBytes: requiredBytes, create: create) {
            case .success(let value): preparation = value
            case .failure(let error): return .failure(error)
            }
            do throws(BlockDeviceOpenError) {
                let device = try AIOFileDevice.open(
                    path: path, readOnly: false, direct: true, blockSize: blockSize, logger: logger)
                return .success((device, preparation))
            } catch {
                undo(preparation, path: path)
                return .failure(map(error, name: name))
            }
        }
        let (device, preparation) = try opened.get()
        let problem: DestinationError?
        if device.isBlockDevice, let readOnly = await onWorker({ blockDeviceReadOnlyProblem(path: path) }) {
            problem = .readOnly(name, readOnly)
        } else if device.capacity < requiredBytes {
            problem = .tooSmall(name, holds: device.capacity, needs: requiredBytes)
        } else {
            problem = nil
        }
        if let problem {
            await device.close()
            await onWorker { undo(preparation, path: path) }
            throw problem
        }
        if !device.isDirect {
            logger.notice(
                "destination does not take O_DIRECT; copying through the page cache",
                metadata: ["destination": "\(name)"])
        }
        return (device, preparation)
    }

    /// Undoes `prepareFile`: removes a file it created, truncates a file it grew back to 0 bytes.
    private static func undo(_ preparation: FilePreparation, path: String) {
        switch preparation {
        case .existing: break
        case .created: unlink(path)
        case .grown: _ = truncate(path, 0)
        }
    }

    /// Creates a missing file, or grows a 0-byte regular file, to `requiredBytes` (sparse) when `create`.
    private static func prepareFile(
        path: String, name: String, requiredBytes: UInt64, create: Bool
    ) -> Result<FilePreparation, DestinationError> {
        var info = stat()
        if stat(path, &info) != 0 {
            let code = errno
            guard code == ENOENT else { return .failure(systemFailure(name, "stat", code)) }
            guard create else {
                return .failure(.unreachable(name, "the file does not exist (a resumed relocation never creates it)"))
            }
            let fd = Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else {
                let code = errno
                if code == EEXIST {
                    return prepareFile(path: path, name: name, requiredBytes: requiredBytes, create: create)
                }
                if code == ENOENT || code == ENOTDIR {
                    return .failure(.unreachable(name, "its directory does not exist"))
                }
                return .failure(systemFailure(name, "create", code))
            }
            defer { Glibc.close(fd) }
            guard ftruncate(fd, off_t(requiredBytes)) == 0 else {
                let code = errno
                unlink(path)
                return .failure(systemFailure(name, "ftruncate to \(requiredBytes) bytes", code))
            }
            return .success(.created)
        }
        switch info.st_mode & S_IFMT {
        case S_IFBLK:
            return .success(.existing)
        case S_IFREG:
            guard create, info.st_size == 0 else { return .success(.existing) }
            let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { return .failure(systemFailure(name, "open", errno)) }
            defer { Glibc.close(fd) }
            // Grow only a file that is still empty now that it is open.
            var current = stat()
            guard fstat(fd, &current) == 0 else { return .failure(systemFailure(name, "fstat", errno)) }
            guard current.st_size == 0 else { return .success(.existing) }
            guard ftruncate(fd, off_t(requiredBytes)) == 0 else {
                let code = errno
                _ = ftruncate(fd, 0)
                return .failure(systemFailure(name, "ftruncate to \(requiredBytes) bytes", code))
            }
            return .success(.grown)
        case S_IFDIR:
            return .failure(.invalidURL(name, "is a directory, not a file or block device"))
        default:
            return .failure(.invalidURL(name, "is not a regular file or block device"))
        }
    }

    /// Why the block device at `path` refuses writes (`BLKROGET`), or nil when it takes them.
    private static func blockDeviceReadOnlyProblem(path: String) -> String? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var readOnly: Int32 = 0
        guard ioctl(fd, blkROGet, &readOnly) == 0 else { return nil }
        return readOnly != 0 ? "the block device is read-only (BLKROGET)" : nil
    }

    /// Logs in to the LUN and checks block size, write protection and capacity.
    private static func openISCSI(
        url: String, name: String, user: String?, secret: String?, requiredBytes: UInt64, blockSize: Int,
        initiatorName: String, connections: Int
    ) async throws(DestinationError) -> RemoteISCSIDevice {
        let chap: ISCSIClient.Credentials? = if let user, let secret { (user: user, secret: secret) } else { nil }
        let device: RemoteISCSIDevice
        do throws(ISCSIClientError) {
            device = try await RemoteISCSIDevice.connect(
                url: url, initiatorName: initiatorName, connections: connections, chap: chap)
        } catch {
            let detail = scrub(error.description, secret: secret)
            throw error.code == .invalidArgument ? .invalidURL(name, detail) : .unreachable(name, detail)
        }
        if device.blockSize != blockSize {
            await device.close()
            throw .blockSizeMismatch(
                name, "the LUN has \(device.blockSize)-byte blocks; the disk has \(blockSize)-byte blocks")
        }
        if device.isReadOnly {
            await device.close()
            throw .readOnly(name, "the LUN is write-protected")
        }
        if device.capacity < requiredBytes {
            await device.close()
            throw .tooSmall(name, holds: device.capacity, needs: requiredBytes)
        }
        return device
    }

    /// `text` with every occurrence of `secret` replaced by "***" (libiscsi's messages should never hold it;
    /// this makes sure). Secrets shorter than 4 characters are left alone: replacing them would garble the text.
    static func scrub(_ text: String, secret: String?) -> String {
        guard let secret, secret.count >= 4 else { return text }
        return text.replacingOccurrences(of: secret, with: "***")
    }

    /// Maps an `AIOFileDevice.open` failure.
    private static func map(_ error: BlockDeviceOpenError, name: String) -> DestinationError {
        switch error.code {
        case .notFound: return .unreachable(name, error.description)
        case .permissionDenied: return .readOnly(name, error.description)
        case .unsupportedFileType: return .invalidURL(name, "is not a regular file or block device")
        case .invalidConfiguration: return .blockSizeMismatch(name, error.description)
        case .systemError: return .ioError(name, error.description)
        }
    }

    /// A failed system call: permissions and read-only file systems are `.readOnly`, the rest `.ioError`.
    private static func systemFailure(_ name: String, _ call: String, _ code: Int32) -> DestinationError {
        let message = String(cString: strerror(code))
        switch code {
        case EACCES, EPERM, EROFS: return .readOnly(name, "\(call): \(message)")
        default: return .ioError(name, "\(call): \(message) (errno \(code))")
        }
    }

    /// Runs blocking work on a Dispatch worker, never on the caller's thread (an event loop, the pool).
    private static func onWorker<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
            DispatchQueue.global().async { continuation.resume(returning: body()) }
        }
    }

    // MARK: Zeroing

    /// Makes [offset, offset+length) read as zeros, the cheapest way the device allows: file → fallocate
    /// PUNCH_HOLE|KEEP_SIZE (`AIOFileDevice.unmap`), block device → the same zeroing fallocate where the queue
    /// has write-zeroes, else the BLKZEROOUT ioctl (falling back to writing zeros), iSCSI → WRITE SAME (16) of
    /// one zero block with the UNMAP bit when the LUN has LBPME (SBC-4 §5.50; the blocks read back as zeros
    /// whether or not the target deallocates them), without it otherwise; where the target refuses WRITE SAME,
    /// UNMAP when the LUN has LBPME and LBPRZ, else plain zero writes in pieces of at most 1 MiB.
    ///
    /// Offset and length must be whole blocks inside the device. Runs off the event loop (Dispatch workers,
    /// libaio, iSCSI session threads).
    public func zeroFill(offset: UInt64, length: UInt64) async throws(BlockDeviceError) {
        let size = UInt64(device.blockSize)
        guard offset % size == 0, length % size == 0, offset <= device.capacity, length <= device.capacity - offset
        else {
            throw .outOfRange(
                "zero fill of \(length) bytes at \(offset) is not whole blocks inside \(device.capacity) bytes")
        }
        guard length > 0 else { return }
        switch method {
        case .unmap:
            try await unmapInPieces(device, offset: offset, length: length)
        case .blockZeroOut(let path):
            if !blockZeroOutRefused.load(ordering: .relaxed) {
                let outcome = await Self.onWorker { Self.blockZeroOut(path: path, offset: offset, length: length) }
                switch outcome {
                case 0:
                    return
                case EOPNOTSUPP, EINVAL, ENOTTY, ENOSYS:
                    blockZeroOutRefused.store(true, ordering: .relaxed)
                    logger.notice(
                        "BLKZEROOUT refused; zeroing by writing zeros",
                        metadata: ["destination": "\(url.redacted)", "errno": "\(outcome)"])
                default:
                    throw .writeFailed("BLKZEROOUT on \(path): \(String(cString: strerror(outcome)))", errno: outcome)
                }
            }
            try await writeZeros(offset: offset, length: length)
        case .iscsi(let remote):
            if !remote.writeSameSupported && remote.supportsUnmap && remote.unmappedReadsZero {
                try await unmapInPieces(remote, offset: offset, length: length)
            } else {
                try await remote.writeZeros(offset: offset, length: length, unmap: remote.supportsUnmap)
            }
        case .writes:
            try await writeZeros(offset: offset, length: length)
        }
    }

    /// `device.unmap` in pieces of at most 1 GiB.
    private func unmapInPieces(_ device: any BlockDevice, offset: UInt64, length: UInt64) async throws(BlockDeviceError)
    {
        var done: UInt64 = 0
        while done < length {
            let count = min(Self.zeroCommandBytes, length - done)
            try await device.unmap(offset: offset + done, length: Int(count))
            done += count
        }
    }

    /// Writes zeros in pieces of at most 1 MiB.
    private func writeZeros(offset: UInt64, length: UInt64) async throws(BlockDeviceError) {
        let piece = Int(min(UInt64(Self.zeroWriteBytes), length))
        var zeros = ByteBuffer()
        zeros.writeRepeatingByte(0, count: piece)
        var done: UInt64 = 0
        while done < length {
            let count = Int(min(UInt64(piece), length - done))
            try await device.write(
                offset: offset + done, data: count == piece ? zeros : zeros.getSlice(at: 0, length: count) ?? zeros,
                fua: false)
            done += UInt64(count)
        }
    }

    /// `ioctl(BLKZEROOUT)` over the range in pieces of at most 1 GiB; 0 or the errno.
    private static func blockZeroOut(path: String, offset: UInt64, length: UInt64) -> Int32 {
        let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return errno }
        defer { Glibc.close(fd) }
        var done: UInt64 = 0
        while done < length {
            let count = min(zeroCommandBytes, length - done)
            var range: (UInt64, UInt64) = (offset + done, count)
            let result = withUnsafeMutablePointer(to: &range) { pointer in
                ioctl(fd, blkZeroOut, UnsafeMutableRawPointer(pointer))
            }
            if result != 0 {
                let code = errno
                if code == EINTR { continue }
                return code
            }
            done += count
        }
        return 0
    }

    /// `BLKZEROOUT = _IO(0x12, 127)` and `BLKROGET = _IO(0x12, 94)` (`linux/fs.h`).
    static let blkZeroOut: UInt = 0x127F
    static let blkROGet: UInt = 0x125E

    // MARK: Closing

    /// Flushes and closes the device; a failed flush is logged (the pump flushes and checks before it
    /// switches over, so nothing relies on this one).
    public func close() async {
        do {
            try await device.flush()
        } catch {
            logger.warning(
                "flush on close failed", metadata: ["destination": "\(url.redacted)", "error": "\(error)"])
        }
        await device.close()
    }
}
