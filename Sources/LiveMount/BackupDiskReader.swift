import GuestFS
import NIOCore

/// A live mount's backup disk as GuestFS sees it: read-only, from the backup itself (cache, then chunks), never
/// the guest's overlay, so a profile's guest files are found as the backup holds them.
struct BackupDiskReader: GuestDiskReader {
    let device: LiveMountDevice

    var size: UInt64 { device.manifest.size }

    func read(offset: UInt64, length: Int) async throws -> [UInt8] {
        guard length > 0, offset < size else { return [] }
        let clipped = Int(min(UInt64(length), size - offset))
        let bytes = try await device.readFromBackup(offset: offset, length: clipped)
        return Array(bytes.readableBytesView)
    }
}
