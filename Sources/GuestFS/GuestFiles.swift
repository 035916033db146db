/// A byte range of a file and where it lies on the disk.
public struct FileExtent: Sendable, Equatable, Hashable {
    /// Offset in the file.
    public var fileOffset: UInt64
    /// Offset on the disk.
    public var diskOffset: UInt64
    /// Length in bytes.
    public var length: UInt64

    public init(fileOffset: UInt64, diskOffset: UInt64, length: UInt64) {
        self.fileOffset = fileOffset
        self.diskOffset = diskOffset
        self.length = length
    }
}

/// Where a guest file's bytes lie on the disk, and what was read to find them.
public struct GuestFileMap: Sendable, Equatable {
    /// The path as asked for.
    public var path: String
    /// The partition holding the file system (`Partition.wholeDisk` if the disk has no table).
    public var partition: Partition
    /// `"ext4"`, `"ext3"` or `"ext2"`.
    public var fileSystem: String
    /// The file's inode number (after following symbolic links).
    public var inode: UInt32
    /// File size in bytes.
    public var size: UInt64
    /// The file's data as disk byte ranges in ascending file order, holes and unwritten extents skipped,
    /// neighbours that touch on the disk merged; the last one ends at the file's size. For a directory, its
    /// blocks; for an inline-data file, its whole inode record.
    public var extents: [DiskExtent]
    /// Disk ranges read to find the file (superblock, group descriptors, inode table blocks, directory blocks,
    /// extent tree and indirect blocks, symbolic link blocks), sorted and merged.
    public var metadata: [DiskExtent]
    /// The exact file-to-disk mapping: reading each piece at `diskOffset` gives the file's bytes at
    /// `fileOffset`; ranges not covered are holes (zeros).
    public var mapping: [FileExtent]
    /// Remarks for people, such as "inline data: ...".
    public var notes: [String]

    public init(
        path: String, partition: Partition, fileSystem: String, inode: UInt32, size: UInt64,
        extents: [DiskExtent], metadata: [DiskExtent], mapping: [FileExtent], notes: [String]
    ) {
        self.path = path
        self.partition = partition
        self.fileSystem = fileSystem
        self.inode = inode
        self.size = size
        self.extents = extents
        self.metadata = metadata
        self.mapping = mapping
        self.notes = notes
    }

    /// Bytes of file data on the disk (the sum of `extents`).
    public var dataBytes: UInt64 { extents.reduce(0) { $0 + $1.length } }

    /// Everything a guest reads to open and read the file, data and metadata, sorted and merged: what a
    /// prefetcher stages for it.
    public var stagingExtents: [DiskExtent] { DiskExtent.normalized(extents + metadata) }
}

/// Finds guest files inside a disk image: partition table, then an ext2/3/4 file system, then the path.
public enum GuestFiles {
    /// Locates each of `paths` (absolute guest paths, symbolic links followed) on `disk`, one result per path.
    ///
    /// Tries each partition (the whole disk if it has no table, or if no partition holds an ext file system).
    /// With several ext file systems, one whose last mount point (`s_last_mounted`, such as `/boot`) prefixes the
    /// path is tried first with the prefix removed; then each in table order with the full path.
    public static func locate(_ paths: [String], on disk: some GuestDiskReader) async
        -> [Result<GuestFileMap, GuestFSError>]
    {
        let found = await openVolumes(disk)
        var results: [Result<GuestFileMap, GuestFSError>] = []
        for path in paths {
            do throws(GuestFSError) {
                results.append(.success(try await locate(path, in: found)))
            } catch {
                results.append(.failure(error.at(path)))
            }
        }
        return results
    }

    /// The ext file systems of a disk and what stood in the way of the others.
    private struct Volumes<Disk: GuestDiskReader> {
        var volumes: [Ext4Volume<Disk>] = []
        /// Why a partition with ext magic could not be opened (unsupported feature, corrupt superblock).
        var failures: [GuestFSError] = []
        /// `"partitions: 1 mbr 0x0c vfat, 2 mbr 0x83"` for the no-file-system message.
        var summary = ""
    }

    /// Reads the partition table and opens every ext file system on it (the whole disk as a last resort); the
    /// listing of what the disk holds is made only when nothing was found, for the error message.
    private static func openVolumes<Disk: GuestDiskReader>(_ disk: Disk) async -> Volumes<Disk> {
        var found = Volumes<Disk>()
        let whole = Partition.wholeDisk(size: disk.size)
        var partitions: [Partition]
        var tableProblem: String?
        do throws(GuestFSError) {
            partitions = try await PartitionTable.read(disk)
        } catch {
            partitions = [whole]
            tableProblem = error.detail
        }
        for partition in partitions {
            await open(partition, on: disk, into: &found)
        }
        if found.volumes.isEmpty, found.failures.isEmpty, !partitions.contains(whole) {
            await open(whole, on: disk, into: &found)
        }
        if found.volumes.isEmpty {
            // Only needed for the "no file system" message: spare slow backup storage the extra reads otherwise.
            var described: [String] = []
            for partition in partitions {
                let name = partition.isWholeDisk ? "whole disk" : "\(partition.index) \(partition.type)"
                let kind = await FileSystemProbe.identify(disk, partition: partition)
                described.append(([name] + [kind].compactMap { $0 }).joined(separator: " "))
            }
            let listing = described.joined(separator: ", ")
            if let tableProblem {
                found.summary = "unreadable partition table: \(tableProblem); \(listing)"
            } else {
                found.summary = (partitions == [whole] ? "no partition table, " : "partitions: ") + listing
            }
        }
        return found
    }

    /// Opens the ext file system on `partition`, if it has one, noting why when it cannot be used.
    private static func open<Disk: GuestDiskReader>(
        _ partition: Partition, on disk: Disk, into found: inout Volumes<Disk>
    )
        async
    {
        do throws(GuestFSError) {
            if let volume = try await Ext4Volume.open(disk, partition: partition) { found.volumes.append(volume) }
        } catch {
            found.failures.append(error)
        }
    }

    /// One path against the opened file systems.
    private static func locate<Disk: GuestDiskReader>(_ path: String, in found: Volumes<Disk>)
        async throws(GuestFSError)
        -> GuestFileMap
    {
        guard path.hasPrefix("/") else { throw .invalidPath("not an absolute path") }
        guard !found.volumes.isEmpty else {
            if let failure = found.failures.first { throw failure }
            throw .noFileSystem(partitions: found.summary)
        }
        var candidates: [(volume: Ext4Volume<Disk>, path: String)] = []
        let mounted = found.volumes.filter { volume in
            let mountPoint = volume.superblock.lastMounted
            return mountPoint.count > 1 && mountPoint.hasPrefix("/") && path.hasPrefix(mountPoint + "/")
        }
        for volume in mounted.sorted(by: { $0.superblock.lastMounted.count > $1.superblock.lastMounted.count }) {
            candidates.append((volume, String(path.dropFirst(volume.superblock.lastMounted.count))))
        }
        candidates += found.volumes.map { ($0, path) }

        var missing: [String] = []
        var firstError: GuestFSError?
        for candidate in candidates {
            do throws(GuestFSError) {
                return try await candidate.volume.locate(candidate.path, reportedPath: path)
            } catch {
                if error.code == .noSuchFile {
                    if !missing.contains(candidate.volume.location) { missing.append(candidate.volume.location) }
                } else if firstError == nil {
                    firstError = error
                }
            }
        }
        if let firstError { throw firstError }
        throw .noSuchFile(on: missing + found.failures.map { "not searched: \($0.detail)" })
    }
}

// MARK: - Probing other file systems

/// Names the file system or content of a partition by its magic, for messages that list what a disk holds.
enum FileSystemProbe {
    /// `"ext4"`, `"vfat"`, `"swap"`, `"xfs"`, `"ntfs"`, `"LVM2"`, `"LUKS"`, `"btrfs"`, or nil if unknown.
    static func identify(_ disk: some GuestDiskReader, partition: Partition) async -> String? {
        guard partition.offset < disk.size else { return nil }
        let available = min(partition.length, disk.size - partition.offset)
        guard available >= 4096 else { return nil }
        let head: [UInt8]
        do {
            head = try await disk.readExactly(offset: partition.offset, length: 4096, what: "partition start")
        } catch {
            return nil
        }
        if head.le16(1024 + 0x38) == Ext4Superblock.magic {
            return Ext4Superblock.flavour(
                compat: head.le32(1024 + 0x5C), incompat: head.le32(1024 + 0x60), roCompat: head.le32(1024 + 0x64))
        }
        if head.matches("XFSB", at: 0) { return "xfs" }
        if head.matches("NTFS    ", at: 3) { return "ntfs" }
        if head.matches("LUKS", at: 0), head.u8(4) == 0xBA, head.u8(5) == 0xBE { return "LUKS" }
        if head.matches("LABELONE", at: 512) { return "LVM2" }
        if head.matches("SWAPSPACE2", at: 4086) || head.matches("SWAP-SPACE", at: 4086) { return "swap" }
        if head.u8(510) == 0x55, head.u8(511) == 0xAA, head.matches("FAT", at: 54) || head.matches("FAT32", at: 82) {
            return "vfat"
        }
        if available >= 0x10048 {
            let btrfs = try? await disk.readExactly(offset: partition.offset + 0x10040, length: 8, what: "btrfs magic")
            if btrfs == Array("_BHRfS_M".utf8) { return "btrfs" }
        }
        return nil
    }
}
