// GuestFS: read-only maps of guest file systems (MBR/GPT partitions, ext2/3/4) from a disk's blocks, so a
// prefetch profile can name guest files whose blocks are staged (issue 4, User-selected files).

/// The one error type of GuestFS: a code to branch on and a message for people.
///
/// Messages name the path when there is one (`"/etc/nope: no such file (ext4 on partition 1)"`), so a profile's
/// owner can tell which entry to fix. Built only by the static factories below.
public struct GuestFSError: Error, Sendable, CustomStringConvertible, Equatable {
    /// What went wrong, for callers that branch on it.
    public enum Code: String, Sendable, Equatable {
        /// A path component does not exist.
        case noSuchFile
        /// A path component that must be a directory is something else.
        case notADirectory
        /// The path names something that is neither a regular file nor a directory (device, FIFO, socket).
        case notARegularFile
        /// No partition (nor the whole disk) holds an ext2/3/4 file system.
        case noFileSystem
        /// The file system or the file uses a feature this reader refuses (an incompat feature, encryption).
        case unsupportedFeature
        /// On-disk structures are inconsistent: a bad magic, an offset outside its bounds, a loop.
        case corrupt
        /// More than `Ext4Volume.maximumSymlinkFollows` symbolic links on the way.
        case symlinkLoop
        /// The path is not absolute or is otherwise unusable.
        case invalidPath
        /// The disk reader failed or returned fewer bytes than asked for.
        case ioError
    }

    /// What went wrong.
    public let code: Code
    /// The guest path the error is about, if any.
    public let path: String?
    /// The message without the path.
    public let detail: String

    /// `"PATH: detail"`, or just the detail when no path is involved.
    public var description: String { path.map { "\($0): \(detail)" } ?? detail }

    private init(_ code: Code, path: String? = nil, _ detail: String) {
        self.code = code
        self.path = path
        self.detail = detail
    }

    /// The same error about `path` (kept if the error already names one).
    func at(_ path: String) -> GuestFSError {
        self.path == nil ? GuestFSError(code, path: path, detail) : self
    }

    // MARK: - Factories

    static func noSuchFile(on locations: [String]) -> GuestFSError {
        GuestFSError(.noSuchFile, "no such file (\(locations.joined(separator: ", ")))")
    }

    static func notADirectory(_ component: String) -> GuestFSError {
        GuestFSError(.notADirectory, "'\(component)' is not a directory")
    }

    static func notARegularFile(_ kind: String) -> GuestFSError {
        GuestFSError(.notARegularFile, "not a regular file or directory (\(kind))")
    }

    static func noFileSystem(partitions: String) -> GuestFSError {
        GuestFSError(.noFileSystem, "no ext2/3/4 file system found (\(partitions))")
    }

    static func unsupported(feature: String, fileSystem: String = "ext4", detail: String? = nil) -> GuestFSError {
        let suffix = detail.map { " (\($0))" } ?? ""
        return GuestFSError(.unsupportedFeature, "\(fileSystem) feature '\(feature)' not supported\(suffix)")
    }

    static func corrupt(_ detail: String) -> GuestFSError {
        GuestFSError(.corrupt, "corrupt: \(detail)")
    }

    static func symlinkLoop(limit: Int) -> GuestFSError {
        GuestFSError(.symlinkLoop, "too many levels of symbolic links (more than \(limit))")
    }

    static func invalidPath(_ detail: String) -> GuestFSError {
        GuestFSError(.invalidPath, detail)
    }

    static func io(_ detail: String) -> GuestFSError {
        GuestFSError(.ioError, detail)
    }

    /// The same error with `context` prepended to its detail (for example `"ext4 on partition 2"`).
    func within(_ context: String) -> GuestFSError {
        GuestFSError(code, path: path, "\(detail) (\(context))")
    }
}
