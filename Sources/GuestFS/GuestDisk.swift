#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// A disk GuestFS reads guest structures from: a backup being mounted, a raw image, a LUN.
///
/// GuestFS treats every byte as hostile: it checks each offset against `size` before asking, and wraps any error
/// the reader throws in a `GuestFSError` with code `.ioError`.
public protocol GuestDiskReader: Sendable {
    /// Disk size in bytes.
    var size: UInt64 { get }
    /// Reads `length` bytes at `offset`. May throw any error; a short result is reported as an I/O error.
    func read(offset: UInt64, length: Int) async throws -> [UInt8]
}

/// A byte range of the disk.
public struct DiskExtent: Sendable, Equatable, Hashable, CustomStringConvertible {
    /// First byte, from the start of the disk.
    public var offset: UInt64
    /// Length in bytes.
    public var length: UInt64

    public init(offset: UInt64, length: UInt64) {
        self.offset = offset
        self.length = length
    }

    /// One past the last byte (saturating, so a hostile extent cannot trap).
    public var end: UInt64 {
        let (sum, overflow) = offset.addingReportingOverflow(length)
        return overflow ? .max : sum
    }

    public var description: String { "\(offset)+\(length)" }

    /// `extents` sorted by offset with overlapping and touching ranges merged: a set of disk bytes.
    public static func normalized(_ extents: [DiskExtent]) -> [DiskExtent] {
        var result: [DiskExtent] = []
        for extent in extents.sorted(by: { $0.offset < $1.offset }) where extent.length > 0 {
            if let last = result.last, extent.offset <= last.end {
                result[result.count - 1].length = max(last.end, extent.end) - last.offset
            } else {
                result.append(extent)
            }
        }
        return result
    }
}

// MARK: - Bounds-checked reads

extension GuestDiskReader {
    /// Reads exactly `length` bytes at `offset`, refusing ranges outside the disk; `what` names the structure
    /// for the error message.
    func readExactly(offset: UInt64, length: Int, what: @autoclosure () -> String) async throws(GuestFSError)
        -> [UInt8]
    {
        guard length >= 0, offset <= size, UInt64(length) <= size - offset else {
            throw .corrupt("\(what()) at byte \(offset) (+\(length)) lies beyond the end of the disk (\(size) bytes)")
        }
        let bytes: [UInt8]
        do {
            bytes = try await read(offset: offset, length: length)
        } catch {
            throw .io("reading \(what()) at byte \(offset) (+\(length)) failed: \(error)")
        }
        guard bytes.count == length else {
            throw .io("reading \(what()) at byte \(offset): got \(bytes.count) of \(length) bytes")
        }
        return bytes
    }
}

// MARK: - FileDiskReader

/// A `GuestDiskReader` over a local file or block device, read with `pread(2)`.
///
/// Used by the tests and by tools that inspect a raw image; the descriptor is closed when the reader goes away.
public final class FileDiskReader: GuestDiskReader {
    /// The path the reader was opened with.
    public let path: String
    public let size: UInt64
    private let descriptor: Int32

    /// Opens `path` read-only; its size is where `lseek(SEEK_END)` lands, which also works for block devices.
    public init(path: String) throws(GuestFSError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io("cannot open \(path): \(String(cString: strerror(errno)))") }
        let end = lseek(fd, 0, SEEK_END)
        guard end >= 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw .io("cannot size \(path): \(message)")
        }
        self.path = path
        self.size = UInt64(end)
        self.descriptor = fd
    }

    deinit { close(descriptor) }

    /// Reads up to `length` bytes at `offset`; returns fewer only at the end of the file.
    public func read(offset: UInt64, length: Int) async throws -> [UInt8] {
        guard length > 0 else { return [] }
        guard let start = off_t(exactly: offset) else { throw GuestFSError.io("offset \(offset) out of range") }
        var buffer = [UInt8](repeating: 0, count: length)
        var done = 0
        while done < length {
            let count = buffer.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return pread(descriptor, base + done, length - done, start + off_t(done))
            }
            if count < 0 {
                if errno == EINTR { continue }
                throw GuestFSError.io("pread \(path) at \(offset + UInt64(done)): \(String(cString: strerror(errno)))")
            }
            if count == 0 { break }
            done += count
        }
        if done < length { buffer.removeSubrange(done...) }
        return buffer
    }
}
