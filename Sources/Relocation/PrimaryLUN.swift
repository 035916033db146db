import BlockDevice

/// The destination of a relocation as the pump uses it (`RelocationDestination` in practice; tests may use a
/// plain device).
public protocol PrimaryLUN: AnyObject, Sendable {
    var device: any BlockDevice { get }
    /// Whether `zeroFill` avoids writing data.
    var zeroFillIsCheap: Bool { get }
    /// Makes the range read as zeros.
    func zeroFill(offset: UInt64, length: UInt64) async throws(BlockDeviceError)
}

extension RelocationDestination: PrimaryLUN {}
