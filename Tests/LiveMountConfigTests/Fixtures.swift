import Foundation

@testable import LiveMountConfig

/// A temporary directory holding image files for a test; removed when released.
final class Scratch {
    let path: String

    init() throws {
        var template = Array(
            ((NSTemporaryDirectory() as NSString).appendingPathComponent("livemount-config-XXXXXX")).utf8CString)
        guard let made = mkdtemp(&template) else { throw CocoaError(.fileWriteUnknown) }
        path = String(cString: made)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }

    /// Creates a sparse file of `size` bytes and returns its absolute path.
    @discardableResult
    func image(_ name: String, size: Int = 1 << 20) throws -> String {
        let file = path + "/" + name
        guard FileManager.default.createFile(atPath: file, contents: nil) else { throw CocoaError(.fileWriteUnknown) }
        guard truncate(file, off_t(size)) == 0 else { throw CocoaError(.fileWriteUnknown) }
        return file
    }
}

/// Parses TOML text, expecting a configuration error; returns it.
func configurationError(toml text: String) -> ConfigurationError? {
    do {
        _ = try DaemonConfiguration.parse(toml: text)
        return nil
    } catch {
        return error
    }
}

/// Maps ad hoc arguments, expecting a configuration error; returns it.
func configurationError(arguments: AdHocArguments) -> ConfigurationError? {
    do {
        _ = try DaemonConfiguration.fromArguments(arguments, currentDirectory: "/")
        return nil
    } catch {
        return error
    }
}
