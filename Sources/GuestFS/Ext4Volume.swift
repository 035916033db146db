/// A read-only view of one ext2/3/4 file system on a guest disk, used to turn paths into disk extents.
///
/// Everything is read from raw bytes and checked: block numbers against `s_blocks_count`, offsets against
/// their block, tree depths against their parent, symlink chains against a limit, and the number of metadata
/// blocks one lookup may read against a budget. A hostile disk gets a `GuestFSError`, never a trap or a hang.
///
/// Not thread-safe (it keeps caches); one lookup at a time, as `GuestFiles.locate` uses it.
final class Ext4Volume<Disk: GuestDiskReader> {
    /// The root directory's inode number (`EXT4_ROOT_INO`).
    static var rootInode: UInt32 { 2 }
    /// Symbolic links followed in one lookup before giving up (the kernel's `MAXSYMLINKS`).
    static var maximumSymlinkFollows: Int { 40 }
    /// Bytes of metadata and directory blocks one lookup may visit, cache hits included (so an extent tree whose
    /// entries all point at one cached node cannot spin): 256 MiB maps an ext3 file of 256 GiB with 4 KiB blocks.
    static var maximumBytesPerLookup: UInt64 { 256 << 20 }
    /// Metadata blocks kept in memory between lookups.
    static var maximumCachedBlocks: Int { 4096 }
    /// Symbolic link targets longer than this are corrupt (`PATH_MAX`).
    static var maximumSymlinkLength: UInt64 { 4096 }

    let disk: Disk
    let partition: Partition
    let superblock: Ext4Superblock

    /// A run of consecutive file blocks stored in consecutive disk blocks.
    struct Run: Equatable {
        var logical: UInt64
        var physical: UInt64
        var count: UInt64
    }

    /// A directory's entries (name → inode) and the disk ranges read to list it.
    struct Directory {
        var entries: [[UInt8]: UInt32]
        var metadata: [DiskExtent]
        var casefold: Bool

        /// The inode `name` leads to: an exact match, or with `casefold` an ASCII case-insensitive one.
        func lookup(_ name: [UInt8]) -> UInt32? {
            if let number = entries[name] { return number }
            guard casefold else { return nil }
            let folded = name.map(Self.lowercased)
            return entries.first { $0.key.map(Self.lowercased) == folded }?.value
        }

        private static func lowercased(_ byte: UInt8) -> UInt8 { byte >= 65 && byte <= 90 ? byte + 32 : byte }
    }

    private var blockCache: [UInt64: [UInt8]] = [:]
    private var directoryCache: [UInt32: Directory] = [:]
    /// Disk ranges read during the current lookup.
    private var trail: [DiskExtent] = []
    /// Metadata blocks visited during the current lookup.
    private var blocksRead: UInt64 = 0

    private init(disk: Disk, partition: Partition, superblock: Ext4Superblock) {
        self.disk = disk
        self.partition = partition
        self.superblock = superblock
    }

    /// `"ext4 on partition 2"`, as messages name this file system.
    var location: String { "\(superblock.flavour) on \(partition)" }

    /// Where the superblock lies on the disk.
    var superblockExtent: DiskExtent {
        DiskExtent(offset: partition.offset + Ext4Superblock.offset, length: UInt64(Ext4Superblock.size))
    }

    // MARK: - Opening

    /// The superblock bytes of `partition`, or nil when the partition is too small to hold one.
    static func superblockBytes(_ disk: Disk, partition: Partition) async throws(GuestFSError) -> [UInt8]? {
        let needed = Ext4Superblock.offset + UInt64(Ext4Superblock.size)
        guard partition.length >= needed, partition.offset <= disk.size, disk.size - partition.offset >= needed else {
            return nil
        }
        return try await disk.readExactly(
            offset: partition.offset + Ext4Superblock.offset, length: Ext4Superblock.size, what: "superblock")
    }

    /// Opens the ext2/3/4 file system on `partition`; nil if the partition has no ext superblock magic, an
    /// error if it has one but the superblock is corrupt or needs an unsupported feature.
    static func open(_ disk: Disk, partition: Partition) async throws(GuestFSError) -> Ext4Volume? {
        guard let bytes = try await superblockBytes(disk, partition: partition), Ext4Superblock.hasMagic(bytes) else {
            return nil
        }
        do throws(GuestFSError) {
            let superblock = try Ext4Superblock(bytes)
            // As the kernel's ext4_fill_super: "block count exceeds size of device" is refused, so no block
            // number can reach into a neighbouring partition.
            let (size, overflow) = superblock.blocksCount.multipliedReportingOverflow(by: superblock.blockSize)
            guard !overflow, size <= partition.length else {
                throw GuestFSError.corrupt(
                    "\(superblock.blocksCount) blocks of \(superblock.blockSize) bytes exceed the \(partition.length)-byte \(partition.isWholeDisk ? "disk" : "partition")"
                )
            }
            return Ext4Volume(disk: disk, partition: partition, superblock: superblock)
        } catch {
            throw error.within(
                "\(Ext4Superblock.flavour(compat: bytes.le32(0x5C), incompat: bytes.le32(0x60), roCompat: bytes.le32(0x64))) on \(partition)"
            )
        }
    }

    // MARK: - Lookup

    /// Maps `path` (absolute, inside this file system) to its data extents and the metadata read to find it.
    /// Symbolic links are followed, including the last component; `reportedPath` is the path the map carries.
    func locate(_ path: String, reportedPath: String) async throws(GuestFSError) -> GuestFileMap {
        trail = [superblockExtent]
        blocksRead = 0
        do throws(GuestFSError) {
            let inode = try await resolve(Self.components(path))
            var map = GuestFileMap(
                path: reportedPath, partition: partition, fileSystem: superblock.flavour, inode: inode.number,
                size: inode.size, extents: [], metadata: [], mapping: [], notes: [])
            switch inode.kind {
            case .regular, .directory:
                if inode.has(Ext4Inode.inlineDataFlag) {
                    map.mapping = inlineMapping(inode)
                    map.extents = inode.size > 0 ? [inode.location] : []
                    map.notes.append("inline data: the \(inode.size) bytes live in inode \(inode.number)'s record")
                } else {
                    map.mapping = fileExtents(try await dataRuns(inode), size: inode.size)
                    map.extents = Self.mergedDiskExtents(map.mapping)
                }
            default:
                throw GuestFSError.notARegularFile(inode.kind.description)
            }
            map.metadata = DiskExtent.normalized(trail)
            return map
        } catch {
            switch error.code {
            case .noSuchFile, .notADirectory, .notARegularFile, .symlinkLoop, .invalidPath: throw error
            default: throw error.within(location)
            }
        }
    }

    /// The non-empty components of a path as bytes (names on disk are bytes, not necessarily UTF-8).
    static func components(_ path: String) -> [[UInt8]] { components(Array(path.utf8)) }

    /// The non-empty components of a path given as raw bytes (a symbolic link's target).
    static func components(_ path: [UInt8]) -> [[UInt8]] {
        path.split(separator: UInt8(ascii: "/")).map(Array.init)
    }

    /// Walks `components` from the root: `.` stays, `..` climbs the walked stack (the root is its own parent),
    /// symbolic links are replaced by their targets (absolute ones restart at the root).
    func resolve(_ components: [[UInt8]]) async throws(GuestFSError) -> Ext4Inode {
        var stack: [(number: UInt32, name: String)] = [(Self.rootInode, "/")]
        var current = try await inode(Self.rootInode)
        guard current.kind == .directory else { throw .corrupt("root inode is a \(current.kind)") }
        var pending = Array(components.reversed())
        var follows = 0
        while let name = pending.popLast() {
            if name.isEmpty { continue }
            // `.` and `..` need a directory too: "file/.." is ENOTDIR, as in the kernel's path walk.
            guard current.kind == .directory else { throw .notADirectory(stack[stack.count - 1].name) }
            if name == [UInt8(ascii: ".")] { continue }
            if name == [UInt8(ascii: "."), UInt8(ascii: ".")] {
                if stack.count > 1 {
                    stack.removeLast()
                    current = try await inode(stack[stack.count - 1].number)
                }
                continue
            }
            let text = String(decoding: name, as: UTF8.self)
            guard let number = try await directory(current).lookup(name) else {
                throw .noSuchFile(on: [location])
            }
            let child = try await inode(number)
            if child.kind == .symlink {
                follows += 1
                guard follows <= Self.maximumSymlinkFollows else {
                    throw .symlinkLoop(limit: Self.maximumSymlinkFollows)
                }
                var target = try await symlinkTarget(child)
                guard !target.isEmpty else { throw .corrupt("symbolic link '\(text)' (inode \(number)) is empty") }
                if target[0] == UInt8(ascii: "/") {
                    target = strippingMountPoint(target)
                    stack = [(Self.rootInode, "/")]
                    current = try await inode(Self.rootInode)
                }
                pending.append(contentsOf: Self.components(target).reversed())
                continue
            }
            stack.append((number, text))
            current = child
        }
        return current
    }

    /// An absolute link target with this file system's last mount point (`s_last_mounted`, say `/boot`) taken
    /// off, so `/boot/vmlinuz-6.1` found on a separate boot partition resolves inside it.
    private func strippingMountPoint(_ target: [UInt8]) -> [UInt8] {
        let mountPoint = Array(superblock.lastMounted.utf8)
        guard mountPoint.count > 1, mountPoint[0] == UInt8(ascii: "/"), target.count > mountPoint.count,
            Array(target[..<mountPoint.count]) == mountPoint, target[mountPoint.count] == UInt8(ascii: "/")
        else { return target }
        return Array(target[mountPoint.count...])
    }

    // MARK: - Blocks, group descriptors, inodes

    /// The disk byte offset of file-system block `block`, checking that `count` blocks from it lie inside the
    /// file system.
    func diskOffset(block: UInt64, count: UInt64 = 1) throws(GuestFSError) -> UInt64 {
        guard count <= superblock.blocksCount, block <= superblock.blocksCount - count else {
            throw .corrupt("block \(block) (+\(count)) is beyond the file system's \(superblock.blocksCount) blocks")
        }
        let (bytes, overflow) = block.multipliedReportingOverflow(by: superblock.blockSize)
        let (offset, overflow2) = partition.offset.addingReportingOverflow(bytes)
        guard !overflow, !overflow2 else { throw .corrupt("block \(block) is out of range") }
        return offset
    }

    /// Reads one metadata block (descriptor, inode table, extent node, indirect, directory or symlink block),
    /// recording it in the trail and counting it against the lookup's budget.
    func metadataBlock(_ block: UInt64, what: String, cache: Bool = true) async throws(GuestFSError) -> [UInt8] {
        let offset = try diskOffset(block: block)
        blocksRead += 1
        let budget = max(65536, Self.maximumBytesPerLookup / superblock.blockSize)
        guard blocksRead <= budget else { throw .corrupt("more than \(budget) metadata blocks for one lookup") }
        trail.append(DiskExtent(offset: offset, length: superblock.blockSize))
        if let cached = blockCache[block] { return cached }
        let bytes = try await disk.readExactly(offset: offset, length: Int(superblock.blockSize), what: what)
        if cache {
            if blockCache.count >= Self.maximumCachedBlocks { blockCache.removeAll(keepingCapacity: true) }
            blockCache[block] = bytes
        }
        return bytes
    }

    /// The first block of block group `group`.
    private func groupFirstBlock(_ group: UInt64) -> UInt64 {
        UInt64(superblock.firstDataBlock) + group * UInt64(superblock.blocksPerGroup)
    }

    /// The inode table's first block for block group `group`, from its group descriptor: contiguous descriptor
    /// blocks after the superblock, or with `meta_bg` one descriptor block at the start of each meta group
    /// (ext4 disk layout, "Block Group Descriptors", "Meta Block Groups").
    func inodeTableBlock(group: UInt64) async throws(GuestFSError) -> UInt64 {
        guard group < superblock.groupCount else { throw .corrupt("block group \(group) does not exist") }
        let perBlock = superblock.blockSize / UInt64(superblock.descriptorSize)
        let metaGroup = group / perBlock
        let descriptorBlock: UInt64
        if superblock.hasMetaBG, metaGroup >= UInt64(superblock.firstMetaBlockGroup) {
            let first = metaGroup * perBlock
            descriptorBlock = groupFirstBlock(first) + (superblock.groupHasSuperblock(first) ? 1 : 0)
        } else {
            descriptorBlock = UInt64(superblock.firstDataBlock) + 1 + metaGroup
        }
        let bytes = try await metadataBlock(descriptorBlock, what: "group descriptor block")
        let base = Int((group % perBlock) * UInt64(superblock.descriptorSize))
        var table = UInt64(bytes.le32(base + 0x8))
        if superblock.is64Bit, superblock.descriptorSize >= 64 { table |= UInt64(bytes.le32(base + 0x28)) << 32 }
        return table
    }

    /// Reads inode `number` from its group's inode table.
    func inode(_ number: UInt32) async throws(GuestFSError) -> Ext4Inode {
        guard number >= 1, number <= superblock.inodesCount else {
            throw .corrupt("inode number \(number) out of range 1...\(superblock.inodesCount)")
        }
        let index = UInt64(number - 1)
        let perGroup = UInt64(superblock.inodesPerGroup)
        let table = try await inodeTableBlock(group: index / perGroup)
        let byteInTable = (index % perGroup) * UInt64(superblock.inodeSize)
        let (block, overflow) = table.addingReportingOverflow(byteInTable / superblock.blockSize)
        guard !overflow else { throw .corrupt("inode table of inode \(number) at block \(table)") }
        let bytes = try await metadataBlock(block, what: "inode table block")
        let within = Int(byteInTable % superblock.blockSize)
        let size = Int(superblock.inodeSize)
        let location = DiskExtent(offset: try diskOffset(block: block) + UInt64(within), length: UInt64(size))
        return Ext4Inode(
            number: number, raw: bytes.slice(within, size), location: location,
            largeDirectories: superblock.hasLargeDir)
    }

    // MARK: - File data

    /// Number of file-system blocks that hold bytes below `size`.
    private func blockSpan(_ size: UInt64) -> UInt64 {
        size / superblock.blockSize + (size % superblock.blockSize == 0 ? 0 : 1)
    }

    /// The runs holding `inode`'s data below its size, in file order, holes and unwritten extents left out.
    func dataRuns(_ inode: Ext4Inode) async throws(GuestFSError) -> [Run] {
        let limit = blockSpan(inode.size)
        var runs: [Run] = []
        guard limit > 0, !inode.has(Ext4Inode.inlineDataFlag) else { return runs }
        var walk = TreeWalk(inode: inode.number, limit: limit)
        if inode.has(Ext4Inode.extentsFlag) {
            try await walkExtentNode(inode.iBlock, parentDepth: nil, walk: &walk, runs: &runs)
            runs.sort { $0.logical < $1.logical }
        } else {
            try await walkBlockMap(inode, walk: &walk, runs: &runs)
        }
        return runs
    }

    /// One walk of a file's extent tree or block map: the file blocks wanted and the tree blocks met so far. A
    /// real tree never holds a block twice; refusing repeats stops a hostile tree whose entries all point at the
    /// same node from fanning out into billions of visits.
    private struct TreeWalk {
        let inode: UInt32
        let limit: UInt64
        var visited: Set<UInt64> = []

        mutating func enter(_ block: UInt64) throws(GuestFSError) {
            guard visited.insert(block).inserted else {
                throw .corrupt("inode \(inode): block \(block) appears twice in its block tree")
            }
        }
    }

    /// Appends a run, extending the previous one when both file and disk blocks continue it.
    private func append(_ run: Run, to runs: inout [Run]) throws(GuestFSError) {
        _ = try diskOffset(block: run.physical, count: run.count)
        if let last = runs.last, last.logical + last.count == run.logical, last.physical + last.count == run.physical {
            runs[runs.count - 1].count += run.count
        } else {
            runs.append(run)
        }
    }

    /// Walks one extent tree node: a 12-byte `ext4_extent_header` (magic 0xF30A) then `eh_entries` entries,
    /// `ext4_extent` in leaves (depth 0), `ext4_extent_idx` above (ext4 disk layout, "Extent Tree"). A child's
    /// depth must be exactly one less than its parent's, so a hostile tree cannot loop.
    private func walkExtentNode(_ node: [UInt8], parentDepth: Int?, walk: inout TreeWalk, runs: inout [Run])
        async throws(GuestFSError)
    {
        let inode = walk.inode
        let limit = walk.limit
        let entries = Int(node.le16(2))
        let depth = Int(node.le16(6))
        guard node.le16(0) == 0xF30A else { throw .corrupt("inode \(inode): bad extent header magic") }
        guard 12 + entries * 12 <= node.count, entries <= Int(node.le16(4)) else {
            throw .corrupt("inode \(inode): extent node claims \(entries) entries")
        }
        if let parentDepth {
            guard depth == parentDepth - 1 else {
                throw .corrupt("inode \(inode): extent node depth \(depth) under depth \(parentDepth)")
            }
        } else {
            guard depth <= 5 else { throw .corrupt("inode \(inode): extent tree depth \(depth)") }
        }
        for index in 0..<entries {
            let entry = 12 + index * 12
            let first = UInt64(node.le32(entry))
            guard first < limit else { continue }
            if depth == 0 {
                let length = UInt64(node.le16(entry + 4))
                // ee_len above EXT_INIT_MAX_LEN (32768) marks an unwritten extent: it reads as zeros.
                guard length > 0, length <= 32768 else { continue }
                let start = UInt64(node.le16(entry + 6)) << 32 | UInt64(node.le32(entry + 8))
                try append(Run(logical: first, physical: start, count: min(length, limit - first)), to: &runs)
            } else {
                let child = UInt64(node.le32(entry + 4)) | UInt64(node.le16(entry + 8)) << 32
                try walk.enter(child)
                let bytes = try await metadataBlock(child, what: "extent tree block")
                try await walkExtentNode(bytes, parentDepth: depth, walk: &walk, runs: &runs)
            }
        }
    }

    /// Walks an ext2/ext3 block map: 12 direct pointers, then single, double and triple indirect blocks of
    /// 32-bit pointers; a zero pointer is a hole (ext4 disk layout, "Direct/Indirect Block Addressing").
    private func walkBlockMap(_ inode: Ext4Inode, walk: inout TreeWalk, runs: inout [Run]) async throws(GuestFSError) {
        let limit = walk.limit
        let pointers = inode.iBlock
        for index in 0..<12 where UInt64(index) < limit {
            let block = UInt64(pointers.le32(index * 4))
            if block != 0 { try append(Run(logical: UInt64(index), physical: block, count: 1), to: &runs) }
        }
        let perBlock = superblock.blockSize / 4
        var base: UInt64 = 12
        var span = perBlock
        for level in 1...3 {
            guard base < limit else { return }
            let block = UInt64(pointers.le32((11 + level) * 4))
            if block != 0 {
                try await walkIndirect(block, level: level, base: base, walk: &walk, runs: &runs)
            }
            base += span
            span *= perBlock
        }
    }

    /// Walks one indirect block of `level` (1: pointers to data, 2 and 3: pointers to lower indirect blocks)
    /// covering file blocks from `base`.
    private func walkIndirect(_ block: UInt64, level: Int, base: UInt64, walk: inout TreeWalk, runs: inout [Run])
        async throws(GuestFSError)
    {
        let limit = walk.limit
        try walk.enter(block)
        let bytes = try await metadataBlock(block, what: "indirect block")
        let perBlock = superblock.blockSize / 4
        var span: UInt64 = 1
        for _ in 1..<level { span *= perBlock }
        for index in 0..<perBlock {
            let logical = base + index * span
            guard logical < limit else { return }
            let pointer = UInt64(bytes.le32(Int(index) * 4))
            guard pointer != 0 else { continue }
            if level == 1 {
                try append(Run(logical: logical, physical: pointer, count: 1), to: &runs)
            } else {
                try await walkIndirect(pointer, level: level - 1, base: logical, walk: &walk, runs: &runs)
            }
        }
    }

    /// File extents for `runs`, the last one cut at `size` so the mapped bytes are exactly the file's.
    func fileExtents(_ runs: [Run], size: UInt64) -> [FileExtent] {
        let blockSize = superblock.blockSize
        var result: [FileExtent] = []
        for run in runs {
            let fileOffset = run.logical * blockSize
            guard fileOffset < size else { break }
            let length = min(run.count * blockSize, size - fileOffset)
            let diskOffset = partition.offset + run.physical * blockSize
            if let last = result.last, last.fileOffset + last.length == fileOffset,
                last.diskOffset + last.length == diskOffset
            {
                result[result.count - 1].length += length
            } else {
                result.append(FileExtent(fileOffset: fileOffset, diskOffset: diskOffset, length: length))
            }
        }
        return result
    }

    /// Disk extents in file order, consecutive ones merged when they touch on the disk (across holes too).
    static func mergedDiskExtents(_ mapping: [FileExtent]) -> [DiskExtent] {
        var result: [DiskExtent] = []
        for piece in mapping {
            if let last = result.last, last.end == piece.diskOffset {
                result[result.count - 1].length += piece.length
            } else {
                result.append(DiskExtent(offset: piece.diskOffset, length: piece.length))
            }
        }
        return result
    }

    /// The exact disk bytes of an inline-data file: `i_block`, then the `system.data` attribute value.
    func inlineMapping(_ inode: Ext4Inode) -> [FileExtent] {
        var result: [FileExtent] = []
        var fileOffset: UInt64 = 0
        for piece in inode.inlineDataPieces() where fileOffset < inode.size {
            let length = min(UInt64(piece.length), inode.size - fileOffset)
            result.append(
                FileExtent(
                    fileOffset: fileOffset, diskOffset: inode.location.offset + UInt64(piece.offset), length: length))
            fileOffset += length
        }
        return result
    }

    // MARK: - Directories and symbolic links

    /// Lists a directory: every block's entries by a linear scan (which also reads htree directories: their
    /// index blocks look like empty entries), or the inline entries after the 4-byte parent pointer.
    func directory(_ inode: Ext4Inode) async throws(GuestFSError) -> Directory {
        if let cached = directoryCache[inode.number] {
            trail += cached.metadata
            return cached
        }
        guard !inode.has(Ext4Inode.encryptFlag) else {
            throw .unsupported(feature: "encrypt", detail: "directory inode \(inode.number) is encrypted")
        }
        let mark = trail.count
        var entries: [[UInt8]: UInt32] = [:]
        if inode.has(Ext4Inode.inlineDataFlag) {
            trail.append(inode.location)
            for (index, piece) in inode.inlineDataPieces().enumerated() {
                let bytes = inode.raw.slice(piece.offset, piece.length)
                parseEntries(bytes, from: index == 0 ? 4 : 0, into: &entries)
            }
        } else {
            for run in try await dataRuns(inode) {
                for index in 0..<run.count {
                    let block = try await metadataBlock(run.physical + index, what: "directory block", cache: false)
                    parseEntries(block, from: 0, into: &entries)
                }
            }
        }
        let listing = Directory(
            entries: entries, metadata: Array(trail[mark...]), casefold: inode.has(Ext4Inode.casefoldFlag))
        directoryCache[inode.number] = listing
        return listing
    }

    /// Reads `ext4_dir_entry_2` records (inode, rec_len, name_len, file_type, name) from `bytes`; without the
    /// `filetype` feature `name_len` is 16 bits. A record that does not fit stops the scan of this block.
    private func parseEntries(_ bytes: [UInt8], from start: Int, into entries: inout [[UInt8]: UInt32]) {
        var position = start
        while position + 8 <= bytes.count {
            let number = bytes.le32(position)
            var recordLength = Int(bytes.le16(position + 4))
            if superblock.blockSize >= 65536 {
                // ext4_rec_len_from_disk: 64 KiB blocks store rec_len with its top bits folded into the low two.
                recordLength =
                    recordLength == 65535 || recordLength == 0
                    ? 65536 : (recordLength & 65532) | ((recordLength & 3) << 16)
            }
            guard recordLength >= 8, recordLength % 4 == 0, recordLength <= bytes.count - position else { return }
            let nameLength = superblock.hasFiletype ? Int(bytes.u8(position + 6)) : Int(bytes.le16(position + 6))
            if number != 0, nameLength > 0, 8 + nameLength <= recordLength {
                let name = bytes.slice(position + 8, nameLength)
                if entries[name] == nil { entries[name] = number }
            }
            position += recordLength
        }
    }

    /// A symbolic link's target: inline data, a fast symlink in `i_block` (no data blocks), or the first data
    /// block (the kernel's `ext4_inode_is_fast_symlink`).
    func symlinkTarget(_ link: Ext4Inode) async throws(GuestFSError) -> [UInt8] {
        let size = link.size
        guard size <= Self.maximumSymlinkLength else {
            throw .corrupt("symbolic link inode \(link.number) is \(size) bytes long")
        }
        if link.has(Ext4Inode.inlineDataFlag) {
            trail.append(link.location)
            let bytes = inlineMapping(link).flatMap { piece -> [UInt8] in
                let start = Int(piece.diskOffset - link.location.offset)
                return link.raw.slice(start, Int(piece.length))
            }
            return bytes
        }
        let unit: UInt64 = link.has(Ext4Inode.hugeFileFlag) && superblock.hasHugeFile ? superblock.blockSize : 512
        let attributeBlocks = link.fileACL != 0 ? superblock.clusterSize / unit : 0
        if link.blockCount == attributeBlocks {
            return link.iBlock.slice(0, Int(size))
        }
        guard let first = try await dataRuns(link).first, first.logical == 0 else {
            throw .corrupt("symbolic link inode \(link.number) has no data block")
        }
        return try await metadataBlock(first.physical, what: "symbolic link block", cache: false).slice(0, Int(size))
    }
}
