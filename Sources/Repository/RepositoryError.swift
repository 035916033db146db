import SQLiteStore

/// Why a repository operation failed (STYLE.md: one error type per module, built by static factories).
///
/// The message always names what failed (the VM, the backup id, the disk, the source, the path), so the
/// CLI can print it as is.
public struct RepositoryError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The kind of failure, for callers that react differently (exit codes, HTTP statuses).
    public enum Code: Sendable, Equatable {
        /// The directory is not a repository (and `create` was false), or its layout is damaged.
        case notARepository
        /// No such backup, VM, disk or configuration.
        case notFound
        /// A bad argument: chunk size, disk name, source specification, configuration path.
        case invalidArgument
        /// The backup is held by a mount and `force` was not given.
        case held
        /// Another process holds the repository lock (an ingest while collecting garbage).
        case busy
        /// Reading a source disk failed.
        case sourceFailed
        /// The repository's file system is full (ENOSPC).
        case noSpace
        /// Any other I/O failure on the repository's files.
        case ioError
        /// The SQLite catalog failed.
        case catalog
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }

    static func notFound(_ message: String) -> RepositoryError { RepositoryError(.notFound, message) }
    static func invalid(_ message: String) -> RepositoryError { RepositoryError(.invalidArgument, message) }
    static func source(_ message: String) -> RepositoryError { RepositoryError(.sourceFailed, message) }

    /// The catalog error `error` met while `context`.
    static func catalog(_ error: any Error, _ context: String) -> RepositoryError {
        if let repositoryError = error as? RepositoryError { return repositoryError }
        return RepositoryError(.catalog, "catalog: \(context): \(error)")
    }

    /// An I/O failure with errno `code` on `path` while doing `operation`; ENOSPC gets its own code.
    static func io(_ operation: String, path: String, errno code: Int32) -> RepositoryError {
        let text = String(cString: strerror(code))
        if code == ENOSPC {
            return RepositoryError(.noSpace, "no space left on the repository's file system: \(operation) \(path)")
        }
        return RepositoryError(.ioError, "\(operation) \(path) failed: \(text)")
    }
}

#if canImport(Glibc)
    import Glibc
#endif
