import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A pool of page-aligned bounce buffers for O_DIRECT I/O.
///
/// O_DIRECT needs the memory, the file offset and the length aligned to the
/// device's logical block size; `ByteBuffer` storage gives no such promise, so
/// data is copied through buffers from `posix_memalign`. Buffers come in
/// power-of-two size classes from 4 KiB to the maximum I/O size and each class
/// keeps a short free list, so the hot path (4 KiB random I/O) does not call
/// the allocator at all.
final class AlignedBufferPool: Sendable {
    /// Memory alignment of every buffer (the largest logical block size in use).
    static let alignment = 4096

    private let maximumSize: Int
    /// Free buffers by size class; addresses are kept as integers so that the
    /// state is plainly `Sendable`.
    private let freeLists: Mutex<[Int: [UInt]]>

    /// Creates a pool whose largest buffer is `maximumSize` bytes (a power of two).
    init(maximumSize: Int) {
        self.maximumSize = maximumSize
        self.freeLists = Mutex([:])
    }

    deinit {
        freeLists.withLock { lists in
            for (_, addresses) in lists {
                for address in addresses {
                    free(UnsafeMutableRawPointer(bitPattern: address))
                }
            }
            lists.removeAll()
        }
    }

    /// The size class (capacity) that serves a request of `size` bytes.
    static func sizeClass(for size: Int) -> Int {
        var capacity = alignment
        while capacity < size { capacity <<= 1 }
        return capacity
    }

    /// How many free buffers of a class are kept: many small ones, few large ones.
    private static func retainedCount(for sizeClass: Int) -> Int {
        sizeClass <= 64 * 1024 ? 128 : 16
    }

    /// Takes a buffer of at least `size` bytes; nil only when memory is exhausted.
    func take(size: Int) -> AlignedBuffer? {
        let capacity = Self.sizeClass(for: size)
        let pooled: UInt? = freeLists.withLock { lists in lists[capacity]?.popLast() }
        if let pooled, let pointer = UnsafeMutableRawPointer(bitPattern: pooled) {
            return AlignedBuffer(address: pointer, capacity: capacity)
        }
        var memory: UnsafeMutableRawPointer?
        guard posix_memalign(&memory, Self.alignment, capacity) == 0, let memory else { return nil }
        return AlignedBuffer(address: memory, capacity: capacity)
    }

    /// Returns a buffer to its free list, or frees it when the list is full.
    func give(_ buffer: AlignedBuffer) {
        let address = UInt(bitPattern: buffer.address)
        let kept: Bool = freeLists.withLock { lists in
            guard buffer.capacity <= maximumSize,
                lists[buffer.capacity, default: []].count < Self.retainedCount(for: buffer.capacity)
            else { return false }
            lists[buffer.capacity, default: []].append(address)
            return true
        }
        if !kept { free(buffer.address) }
    }
}

/// One page-aligned buffer lent by an `AlignedBufferPool`.
struct AlignedBuffer: @unchecked Sendable {
    /// Start of the memory (aligned to `AlignedBufferPool.alignment`).
    let address: UnsafeMutableRawPointer
    /// Usable bytes.
    let capacity: Int
}
