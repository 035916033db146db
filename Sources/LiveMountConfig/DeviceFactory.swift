import BlockDevice

/// A device could not be opened by `openDevice(path:readOnly:direct:blockSize:)`.
public struct DeviceFactoryError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }

    /// The file-backed device (`AIOFileDevice`) has not been merged yet.
    public static let notYetAvailable = DeviceFactoryError("file-backed devices are not yet available in this build")
}

/// Opens the image file or block device at `path` as a `BlockDevice`.
///
/// The configuration has already checked that the path exists and can be opened with these flags; this
/// is where the AIO file device (libaio, O_DIRECT when `direct`) is created. Until `AIOFileDevice` is
/// merged it throws `DeviceFactoryError.notYetAvailable`.
public func openDevice(path: String, readOnly: Bool, direct: Bool, blockSize: Int) throws -> any BlockDevice {
    try InterimFileDevice(path: path, readOnly: readOnly, blockSize: blockSize)
}

import Foundation
import NIOCore

/// INTERIM pread/pwrite device until AIOFileDevice is merged.
final class InterimFileDevice: BlockDevice, @unchecked Sendable {
    let fd: Int32
    let blockSize: Int
    let blockCount: UInt64
    let isReadOnly: Bool
    let supportsUnmap = false
    init(path: String, readOnly: Bool, blockSize: Int) throws {
        fd = open(path, readOnly ? O_RDONLY : O_RDWR)
        guard fd >= 0 else { throw DeviceFactoryError("cannot open \(path)") }
        var st = stat()
        fstat(fd, &st)
        self.blockSize = blockSize
        blockCount = UInt64(st.st_size) / UInt64(blockSize)
        isReadOnly = readOnly
    }
    func read(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer {
        var b = ByteBuffer()
        let n = b.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { ptr in
            pread(fd, ptr.baseAddress, length, off_t(offset))
        }
        guard n == length else { throw .readFailed("short read") }
        return b
    }
    func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(BlockDeviceError) {
        let n = data.withUnsafeReadableBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
        guard n == data.readableBytes else { throw .writeFailed("short write") }
    }
    func flush() async throws(BlockDeviceError) { fsync(fd) }
    func unmap(offset: UInt64, length: Int) async throws(BlockDeviceError) {}
    func close() async {}
}
