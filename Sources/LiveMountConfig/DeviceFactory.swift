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
    throw DeviceFactoryError.notYetAvailable
}
