/// One ext2/3/4 inode record as read from its inode table, with the fields GuestFS needs.
///
/// Layout: `struct ext4_inode` (fs/ext4/ext4.h), https://docs.kernel.org/filesystems/ext4/dynamic.html#index-nodes.
struct Ext4Inode: Sendable {
    /// What a directory entry leads to, from the top four bits of `i_mode`.
    enum Kind: Equatable, Sendable, CustomStringConvertible {
        case regular, directory, symlink, characterDevice, blockDevice, fifo, socket
        case unknown(UInt16)

        init(mode: UInt16) {
            switch mode & 0xF000 {
            case 0x8000: self = .regular
            case 0x4000: self = .directory
            case 0xA000: self = .symlink
            case 0x2000: self = .characterDevice
            case 0x6000: self = .blockDevice
            case 0x1000: self = .fifo
            case 0xC000: self = .socket
            default: self = .unknown(mode & 0xF000)
            }
        }

        var description: String {
            switch self {
            case .regular: "regular file"
            case .directory: "directory"
            case .symlink: "symbolic link"
            case .characterDevice: "character device"
            case .blockDevice: "block device"
            case .fifo: "FIFO"
            case .socket: "socket"
            case .unknown(let mode): "unknown type 0o\(String(mode >> 12, radix: 8))"
            }
        }
    }

    // MARK: - i_flags (ext4.h EXT4_*_FL)

    static let encryptFlag: UInt32 = 0x800
    static let indexFlag: UInt32 = 0x1000
    static let hugeFileFlag: UInt32 = 0x4_0000
    static let extentsFlag: UInt32 = 0x8_0000
    static let inlineDataFlag: UInt32 = 0x1000_0000
    static let casefoldFlag: UInt32 = 0x4000_0000

    /// Offset of `i_block` (60 bytes: block map, extent tree root, fast symlink or inline data).
    static let iBlockOffset = 0x28
    /// Size of `i_block`.
    static let iBlockSize = 60

    /// The inode number.
    let number: UInt32
    /// The whole on-disk record (`s_inode_size` bytes).
    let raw: [UInt8]
    /// Where the record lies on the disk.
    let location: DiskExtent
    /// File size in bytes (`i_size_lo | i_size_high << 32`; directories use the high half only with `large_dir`).
    let size: UInt64

    init(number: UInt32, raw: [UInt8], location: DiskExtent, largeDirectories: Bool) {
        self.number = number
        self.raw = raw
        self.location = location
        let high = UInt64(raw.le32(0x6C)) << 32
        let kind = Kind(mode: raw.le16(0))
        self.size = UInt64(raw.le32(0x4)) | (kind != .directory || largeDirectories ? high : 0)
    }

    var kind: Kind { Kind(mode: raw.le16(0)) }
    var flags: UInt32 { raw.le32(0x20) }
    var linksCount: UInt16 { raw.le16(0x1A) }
    /// `i_block`, 60 bytes.
    var iBlock: [UInt8] { raw.slice(Self.iBlockOffset, Self.iBlockSize) }
    /// Extended-attribute block (`i_file_acl_lo | l_i_file_acl_high << 32`), 0 if none.
    var fileACL: UInt64 { UInt64(raw.le32(0x68)) | UInt64(raw.le16(0x76)) << 32 }
    /// `i_blocks_lo | l_i_blocks_high << 32`: 512-byte sectors, or file-system blocks with `EXT4_HUGE_FILE_FL`.
    var blockCount: UInt64 { UInt64(raw.le32(0x1C)) | UInt64(raw.le16(0x74)) << 32 }

    func has(_ flag: UInt32) -> Bool { flags & flag != 0 }

    // MARK: - Inline data and in-inode extended attributes

    /// Where an inline-data inode keeps its bytes, as (offset in `raw`, length) pieces: the 60 bytes of
    /// `i_block`, then the value of the `system.data` extended attribute in the inode's extra space
    /// (ext4 disk layout, "Inline Data").
    func inlineDataPieces() -> [(offset: Int, length: Int)] {
        var pieces = [(offset: Self.iBlockOffset, length: Self.iBlockSize)]
        if let value = inInodeAttribute(index: 7, name: "data"), value.length > 0 { pieces.append(value) }
        return pieces
    }

    /// The value of an extended attribute stored in the inode body after `i_extra_isize`, as (offset in `raw`,
    /// length); nil if absent, stored in an EA inode, or out of bounds (ext4 disk layout, "Extended Attributes").
    func inInodeAttribute(index: UInt8, name: String) -> (offset: Int, length: Int)? {
        guard raw.count > 128 else { return nil }
        let extra = Int(raw.le16(0x80))
        let header = 128 + extra
        guard extra % 4 == 0, header + 4 <= raw.count, raw.le32(header) == 0xEA02_0000 else { return nil }
        let first = header + 4
        let wanted = Array(name.utf8)
        var position = first
        while position + 16 <= raw.count, raw.le32(position) != 0 {
            let nameLength = Int(raw.u8(position))
            let valueOffset = Int(raw.le16(position + 2))
            let valueInode = raw.le32(position + 4)
            let valueSize = Int(raw.le32(position + 8))
            if raw.u8(position + 1) == index, raw.slice(position + 16, nameLength) == wanted, valueInode == 0 {
                let start = first + valueOffset
                guard valueSize <= raw.count, start <= raw.count - valueSize else { return nil }
                return (start, valueSize)
            }
            position += (nameLength + 16 + 3) & ~3
        }
        return nil
    }
}
