/// The fields of an ext2/3/4 superblock GuestFS uses, parsed and checked for sanity.
///
/// Layout: the kernel's `struct ext4_super_block` (fs/ext4/ext4.h) and
/// https://docs.kernel.org/filesystems/ext4/globals.html#super-block; the superblock is 1024 bytes at byte 1024
/// of the file system whatever the block size.
struct Ext4Superblock: Sendable {
    /// Byte offset of the superblock from the start of the file system.
    static let offset: UInt64 = 1024
    /// Size of the on-disk superblock.
    static let size = 1024
    /// `s_magic`.
    static let magic: UInt16 = 0xEF53

    var inodesCount: UInt32
    var blocksCount: UInt64
    var firstDataBlock: UInt32
    var blockSize: UInt64
    var clusterSize: UInt64
    var blocksPerGroup: UInt32
    var inodesPerGroup: UInt32
    var inodeSize: UInt32
    var descriptorSize: UInt32
    var firstMetaBlockGroup: UInt32
    var backupBlockGroups: (UInt32, UInt32)
    var compat: UInt32
    var incompat: UInt32
    var roCompat: UInt32
    var volumeName: String
    /// `s_last_mounted`: the directory the file system was last mounted on (`/`, `/boot`), empty if never.
    var lastMounted: String

    // MARK: - Feature bits (ext4.h EXT4_FEATURE_*)

    static let compatHasJournal: UInt32 = 0x4
    static let compatSparseSuper2: UInt32 = 0x200
    static let roCompatSparseSuper: UInt32 = 0x1
    static let roCompatHugeFile: UInt32 = 0x8
    static let incompatFiletype: UInt32 = 0x2
    static let incompatMetaBG: UInt32 = 0x10
    static let incompatExtents: UInt32 = 0x40
    static let incompat64Bit: UInt32 = 0x80
    static let incompatFlexBG: UInt32 = 0x200
    static let incompatLargeDir: UInt32 = 0x4000
    static let incompatInlineData: UInt32 = 0x8000

    /// Incompat features and their e2fsprogs names; `supported` ones do not change how files are found.
    static let incompatFeatures: [(bit: UInt32, name: String, supported: Bool)] = [
        (0x1, "compression", false),
        (0x2, "filetype", true),
        (0x4, "needs_recovery", true),  // the journal is not replayed: blocks as last checkpointed
        (0x8, "journal_dev", false),
        (0x10, "meta_bg", true),
        (0x40, "extent", true),
        (0x80, "64bit", true),
        (0x100, "mmp", true),
        (0x200, "flex_bg", true),
        (0x400, "ea_inode", true),
        (0x1000, "dirdata", false),
        (0x2000, "metadata_csum_seed", true),
        (0x4000, "large_dir", true),
        (0x8000, "inline_data", true),
        (0x10000, "encrypt", true),  // encrypted directories are refused where they are met
        (0x20000, "casefold", true),
    ]

    /// Whether `bytes` (the 1024 bytes at file-system offset 1024) carry the ext2/3/4 magic.
    static func hasMagic(_ bytes: [UInt8]) -> Bool { bytes.le16(0x38) == magic }

    /// Parses and checks a superblock; throws `.corrupt` on impossible geometry and `.unsupportedFeature` for an
    /// incompat feature that changes where data lives in a way this reader does not follow.
    init(_ bytes: [UInt8]) throws(GuestFSError) {
        guard bytes.count >= Self.size, Self.hasMagic(bytes) else { throw .corrupt("no ext2/3/4 superblock magic") }
        compat = bytes.le32(0x5C)
        incompat = bytes.le32(0x60)
        roCompat = bytes.le32(0x64)
        let flavour = Self.flavour(compat: compat, incompat: incompat, roCompat: roCompat)
        var known: UInt32 = 0
        for feature in Self.incompatFeatures {
            known |= feature.bit
            if incompat & feature.bit != 0, !feature.supported {
                throw .unsupported(feature: feature.name, fileSystem: flavour)
            }
        }
        if incompat & ~known != 0 {
            throw .unsupported(feature: "incompat 0x\(String(incompat & ~known, radix: 16))", fileSystem: flavour)
        }

        let logBlockSize = bytes.le32(0x18)
        let logClusterSize = bytes.le32(0x1C)
        guard logBlockSize <= 6 else { throw .corrupt("block size 2^\(10 + UInt64(logBlockSize)) bytes") }
        blockSize = 1024 << UInt64(logBlockSize)
        clusterSize = logClusterSize <= 18 ? max(blockSize, 1024 << UInt64(logClusterSize)) : blockSize
        inodesCount = bytes.le32(0x0)
        let is64 = incompat & Self.incompat64Bit != 0
        blocksCount = UInt64(bytes.le32(0x4)) | (is64 ? UInt64(bytes.le32(0x150)) << 32 : 0)
        firstDataBlock = bytes.le32(0x14)
        blocksPerGroup = bytes.le32(0x20)
        inodesPerGroup = bytes.le32(0x28)
        let revision = bytes.le32(0x4C)
        inodeSize = revision == 0 ? 128 : UInt32(bytes.le16(0x58))
        descriptorSize = is64 ? UInt32(bytes.le16(0xFE)) : 32
        firstMetaBlockGroup = bytes.le32(0x104)
        backupBlockGroups = (bytes.le32(0x24C), bytes.le32(0x250))
        volumeName = bytes.cString(0x78, 16)
        lastMounted = bytes.cString(0x88, 64)

        let bitsPerBlock = UInt32(blockSize * 8)
        guard blocksCount > UInt64(firstDataBlock), blocksCount < 1 << 48 else {
            throw .corrupt("superblock: \(blocksCount) blocks")
        }
        guard firstDataBlock == (blockSize == 1024 ? 1 : 0) || firstDataBlock == 0 else {
            throw .corrupt("superblock: first data block \(firstDataBlock) with \(blockSize)-byte blocks")
        }
        guard blocksPerGroup >= 8, UInt64(blocksPerGroup) <= UInt64(bitsPerBlock) * (clusterSize / blockSize) else {
            throw .corrupt("superblock: \(blocksPerGroup) blocks per group")
        }
        guard inodesPerGroup > 0, inodesPerGroup <= bitsPerBlock, inodesCount > 0 else {
            throw .corrupt("superblock: \(inodesPerGroup) inodes per group, \(inodesCount) inodes")
        }
        guard inodeSize >= 128, inodeSize <= blockSize, inodeSize & (inodeSize - 1) == 0 else {
            throw .corrupt("superblock: inode size \(inodeSize)")
        }
        guard descriptorSize >= 32, descriptorSize <= 1024, descriptorSize & (descriptorSize - 1) == 0,
            UInt64(descriptorSize) <= blockSize
        else { throw .corrupt("superblock: group descriptor size \(descriptorSize)") }
        let (inodeCapacity, overflow) = groupCount.multipliedReportingOverflow(by: UInt64(inodesPerGroup))
        guard overflow || UInt64(inodesCount) <= inodeCapacity else {
            throw .corrupt("superblock: \(inodesCount) inodes in \(groupCount) groups of \(inodesPerGroup)")
        }
    }

    /// Number of block groups.
    var groupCount: UInt64 {
        let data = blocksCount - UInt64(firstDataBlock)
        return (data + UInt64(blocksPerGroup) - 1) / UInt64(blocksPerGroup)
    }

    /// Whether group descriptors are 64 bytes wide with high halves (`64bit` feature).
    var is64Bit: Bool { incompat & Self.incompat64Bit != 0 }
    var hasFiletype: Bool { incompat & Self.incompatFiletype != 0 }
    var hasMetaBG: Bool { incompat & Self.incompatMetaBG != 0 }
    var hasLargeDir: Bool { incompat & Self.incompatLargeDir != 0 }
    var hasHugeFile: Bool { roCompat & Self.roCompatHugeFile != 0 }

    /// `"ext4"`, `"ext3"` or `"ext2"`, the way people name the flavour of this file system.
    var flavour: String { Self.flavour(compat: compat, incompat: incompat, roCompat: roCompat) }

    /// ext4 if any ext4-only feature is on, ext3 if it has a journal, ext2 otherwise.
    static func flavour(compat: UInt32, incompat: UInt32, roCompat: UInt32) -> String {
        let ext4Incompat: UInt32 = 0x40 | 0x80 | 0x200 | 0x400 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000 | 0x100
        let ext4RoCompat: UInt32 = 0x8 | 0x10 | 0x20 | 0x40 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x8000
        if incompat & ext4Incompat != 0 || roCompat & ext4RoCompat != 0 { return "ext4" }
        return compat & compatHasJournal != 0 ? "ext3" : "ext2"
    }

    /// Whether block group `group` starts with a superblock backup (and so, with `meta_bg`, shifts its
    /// descriptor block by one): groups 0 and 1 and powers of 3, 5 and 7 with `sparse_super`, the two listed
    /// groups with `sparse_super2`, every group otherwise (ext4 disk layout, "Flexible Block Groups" and
    /// "Meta Block Groups").
    func groupHasSuperblock(_ group: UInt64) -> Bool {
        if group == 0 { return true }
        if compat & Self.compatSparseSuper2 != 0 {
            return group == UInt64(backupBlockGroups.0) || group == UInt64(backupBlockGroups.1)
        }
        if roCompat & Self.roCompatSparseSuper == 0 || group == 1 { return true }
        for base: UInt64 in [3, 5, 7] {
            var power = base
            while power < group { power *= base }
            if power == group { return true }
        }
        return false
    }
}
