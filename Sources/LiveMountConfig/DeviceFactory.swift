import BlockDevice

/// A device could not be opened by `openDevice(path:readOnly:direct:blockSize:)`.
public struct DeviceFactoryError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }

}

/// Opens the image file or block device at `path` as a `BlockDevice`.
///
/// The configuration has already checked that the path exists and can be opened with these flags; this
/// is where the AIO file device (libaio, O_DIRECT when `direct`) is created.
public func openDevice(path: String, readOnly: Bool, direct: Bool, blockSize: Int) throws -> any BlockDevice {
    try AIOFileDevice.open(path: path, readOnly: readOnly, direct: direct, blockSize: blockSize)
}
