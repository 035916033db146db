import BlockDevice

/// The destination of a relocation as the pump uses it (`RelocationDestination` in practice; tests may use a
/// plain device).
public protocol PrimaryLUN: AnyObject, Sendable {
    var device: any BlockDevice { get }
    /// Whether `zeroFill` avoids writing data.
    var zeroFillIsCheap: Bool { get }
    /// Makes the range read as zeros.
    func zeroFill(offset: UInt64, length: UInt64) async throws(BlockDeviceError)
    /// Flushes and closes the device (not after a switchover: the live mount owns it then).
    func close() async
}

extension PrimaryLUN {
    /// Reads `[offset, offset + length)` back and hands its bytes to `body` (in pieces, in order), for the pump's
    /// verification: a file or block device lends its O_DIRECT buffers, with no copy into a `ByteBuffer`.
    func inspect<T: Sendable>(
        offset: UInt64, length: Int, _ body: @escaping @Sendable ([UnsafeRawBufferPointer]) -> T
    ) async throws(BlockDeviceError) -> T {
        if let file = device as? AIOFileDevice { return try await file.inspect(offset: offset, length: length, body) }
        let data = try await device.read(offset: offset, length: length)
        return data.withUnsafeReadableBytes { body([$0]) }
    }
}

extension RelocationDestination: PrimaryLUN {}
