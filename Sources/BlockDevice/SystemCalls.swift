#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Linux constants and calls that Swift's Glibc module does not import because
/// glibc declares them only under `_GNU_SOURCE` (or as function-like macros).
///
/// Values are from the kernel's UAPI headers (`asm-generic/fcntl.h`,
/// `linux/fs.h`, `linux/falloc.h`) and are stable ABI.
enum LinuxSystem {
    /// `O_DIRECT` (`asm-generic/fcntl.h`; arm64 and x86_64 differ).
    static var oDirect: Int32 {
        #if arch(arm64) || arch(arm)
        return 0o200000
        #else
        return 0o40000
        #endif
    }

    /// `SEEK_DATA` / `SEEK_HOLE` (`linux/fs.h`, Linux 3.1+).
    static let seekData: Int32 = 3
    static let seekHole: Int32 = 4

    /// `RWF_DSYNC` for an iocb's `aio_rw_flags` (`linux/fs.h`, Linux 4.13+):
    /// this write alone is durable on completion, which is FUA.
    static let rwfDSync: UInt32 = 0x2
    /// RWF_NOWAIT (Linux 4.14): fail with EAGAIN instead of blocking, e.g. on a page-cache miss.
    static let rwfNoWait: Int32 = 0x8

    /// `FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE` (`linux/falloc.h`).
    static let fallocKeepSize: Int32 = 0x01
    static let fallocPunchHole: Int32 = 0x02

    /// `BLKGETSIZE64 = _IOR(0x12, 114, size_t)` and `BLKSSZGET = _IO(0x12, 104)` (`linux/fs.h`).
    static let blkGetSize64: UInt = 0x8008_1272
    static let blkSSZGet: UInt = 0x1268

    private typealias FallocateFunction = @convention(c) (Int32, Int32, Int64, Int64) -> Int32

    /// `fallocate(2)`, looked up once through the dynamic linker because glibc
    /// only declares it under `_GNU_SOURCE`.
    private static let fallocateFunction: FallocateFunction? = {
        guard let symbol = dlsym(nil, "fallocate") else { return nil }
        return unsafeBitCast(symbol, to: FallocateFunction.self)
    }()

    /// Calls `fallocate(2)`; returns 0 or -1 with `errno` set (ENOSYS when unavailable).
    static func fallocate(_ fd: Int32, mode: Int32, offset: Int64, length: Int64) -> Int32 {
        guard let function = fallocateFunction else {
            errno = ENOSYS
            return -1
        }
        return function(fd, mode, offset, length)
    }

    /// `strerror` as a Swift string.
    static func describe(errno code: Int32) -> String {
        guard let message = strerror(code) else { return "errno \(code)" }
        return String(cString: message)
    }

    /// Retries a system call while it fails with EINTR.
    @inline(__always)
    static func retryingOnEINTR<T: BinaryInteger>(_ body: () -> T) -> T {
        while true {
            let result = body()
            if result == -1 && errno == EINTR { continue }
            return result
        }
    }
}
