/// One partition of a guest disk, or the whole disk when it has no partition table.
public struct Partition: Sendable, Equatable, Hashable, CustomStringConvertible {
    /// The number Linux gives it: 1-4 for MBR primaries, 5 and up for logical partitions, the entry number for
    /// GPT; 0 for the whole disk.
    public var index: Int
    /// First byte on the disk.
    public var offset: UInt64
    /// Length in bytes.
    public var length: UInt64
    /// `"mbr 0x83"`, `"gpt 0FC63DAF-8483-4772-8E79-3D69D8477DE4"`, or `"none"` for the whole disk.
    public var type: String
    /// The GPT partition name, if it has one.
    public var name: String?

    public init(index: Int, offset: UInt64, length: UInt64, type: String, name: String? = nil) {
        self.index = index
        self.offset = offset
        self.length = length
        self.type = type
        self.name = name
    }

    /// The "partition" of a disk without a partition table.
    public static func wholeDisk(size: UInt64) -> Partition {
        Partition(index: 0, offset: 0, length: size, type: "none")
    }

    /// Whether this stands for the whole disk rather than a table entry.
    public var isWholeDisk: Bool { index == 0 }

    /// `"partition 2"` or `"the whole disk"`, as messages name it.
    public var description: String { isWholeDisk ? "the whole disk" : "partition \(index)" }
}

/// Reads a disk's partition table: MBR (primary, extended and logical partitions) or GPT (behind a protective
/// MBR). A disk without a valid table is one partition covering the whole disk.
public enum PartitionTable {
    /// The logical sector size MBR addresses are counted in.
    static let mbrSectorSize: UInt64 = 512
    /// At most this many logical partitions are followed in an EBR chain (a hostile chain could be endless).
    static let maximumLogicalPartitions = 128
    /// At most this many GPT entries are read (UEFI allows more; no real disk has them).
    static let maximumGPTEntries: UInt32 = 4096

    /// The partitions of `disk` in table order; `[Partition.wholeDisk]` when there is no table.
    ///
    /// Throws when a table is present but unreadable: a protective MBR without a valid GPT, or a read error.
    public static func read(_ disk: some GuestDiskReader) async throws(GuestFSError) -> [Partition] {
        let whole = [Partition.wholeDisk(size: disk.size)]
        guard disk.size >= 2 * mbrSectorSize else { return whole }
        let sector = try await disk.readExactly(offset: 0, length: Int(mbrSectorSize), what: "MBR")
        guard let entries = mbrEntries(sector) else { return whole }
        if entries.contains(where: { $0.type == 0xEE }) {
            return try await readGPT(disk)
        }
        var partitions: [Partition] = []
        for (slot, entry) in entries.enumerated() where entry.type != 0 && entry.sectors != 0 {
            if entry.isExtended {
                partitions += try await readLogical(disk, extendedStart: UInt64(entry.start))
            } else {
                partitions.append(
                    Partition(
                        index: slot + 1, offset: UInt64(entry.start) * mbrSectorSize,
                        length: UInt64(entry.sectors) * mbrSectorSize, type: "mbr 0x\(hexByte(entry.type))"))
            }
        }
        return partitions.isEmpty ? whole : partitions.sorted { $0.index < $1.index }
    }

    // MARK: - MBR

    /// One 16-byte MBR partition entry (UEFI 2.10 §5.2.1, Table 5-2).
    struct MBREntry {
        var status: UInt8
        var type: UInt8
        var start: UInt32
        var sectors: UInt32

        /// DOS (0x05), LBA (0x0F) and Linux (0x85) extended partitions hold a chain of EBRs.
        var isExtended: Bool { type == 0x05 || type == 0x0F || type == 0x85 }
    }

    /// The four entries of a boot sector, or nil when it carries no MBR: no 0x55AA signature, or a status byte
    /// other than 0x00/0x80 (a file system's boot sector holds code there, not a table).
    static func mbrEntries(_ sector: [UInt8]) -> [MBREntry]? {
        guard sector.u8(510) == 0x55, sector.u8(511) == 0xAA else { return nil }
        let entries = (0..<4).map { slot -> MBREntry in
            let base = 446 + slot * 16
            return MBREntry(
                status: sector.u8(base), type: sector.u8(base + 4), start: sector.le32(base + 8),
                sectors: sector.le32(base + 12))
        }
        guard entries.allSatisfy({ $0.status == 0x00 || $0.status == 0x80 }) else { return nil }
        return entries
    }

    /// Follows the EBR chain of an extended partition: each EBR's first entry is a logical partition (relative
    /// to that EBR), its second points at the next EBR (relative to the extended partition's start).
    static func readLogical(_ disk: some GuestDiskReader, extendedStart: UInt64) async throws(GuestFSError)
        -> [Partition]
    {
        var partitions: [Partition] = []
        var ebr = extendedStart
        var seen: Set<UInt64> = []
        while partitions.count < maximumLogicalPartitions, seen.insert(ebr).inserted {
            let offset = ebr * mbrSectorSize
            guard offset + mbrSectorSize <= disk.size else { break }
            let sector = try await disk.readExactly(offset: offset, length: Int(mbrSectorSize), what: "EBR")
            guard let entries = mbrEntries(sector) else { break }
            let logical = entries[0]
            if logical.type != 0, logical.sectors != 0 {
                partitions.append(
                    Partition(
                        index: 5 + partitions.count, offset: (ebr + UInt64(logical.start)) * mbrSectorSize,
                        length: UInt64(logical.sectors) * mbrSectorSize, type: "mbr 0x\(hexByte(logical.type))"))
            }
            let next = entries[1]
            guard next.isExtended, next.start != 0 else { break }
            ebr = extendedStart + UInt64(next.start)
        }
        return partitions
    }

    // MARK: - GPT

    /// Reads the GPT behind a protective MBR: the primary header at LBA 1 (512- or 4096-byte sectors), or the
    /// backup header in the last sector when the primary fails its checks (UEFI 2.10 §5.3).
    static func readGPT(_ disk: some GuestDiskReader) async throws(GuestFSError) -> [Partition] {
        var problems: [String] = []
        for sectorSize: UInt64 in [512, 4096] where disk.size >= 3 * sectorSize {
            let sectors = disk.size / sectorSize
            for headerLBA in [1, sectors - 1] {
                let header = try await disk.readExactly(
                    offset: headerLBA * sectorSize, length: Int(sectorSize), what: "GPT header")
                guard header.matches("EFI PART", at: 0) else { continue }
                do throws(GuestFSError) {
                    return try await gptPartitions(disk, header: header, sectorSize: sectorSize, at: headerLBA)
                } catch {
                    problems.append(error.detail)
                }
            }
        }
        let why = problems.isEmpty ? "no GPT header found" : problems.joined(separator: "; ")
        throw .corrupt("protective MBR but no valid GPT (\(why))")
    }

    /// The partitions a GPT header describes, after checking both CRCs and every bound (UEFI 2.10 §5.3.2,
    /// Table 5-5; entries: §5.3.3, Table 5-6).
    static func gptPartitions(_ disk: some GuestDiskReader, header: [UInt8], sectorSize: UInt64, at lba: UInt64)
        async throws(GuestFSError) -> [Partition]
    {
        let headerSize = Int(header.le32(12))
        guard headerSize >= 92, headerSize <= header.count else {
            throw .corrupt("GPT header at LBA \(lba) has size \(headerSize)")
        }
        var zeroed = header.slice(0, headerSize)
        for index in 16..<20 { zeroed[index] = 0 }
        guard crc32IEEE(zeroed) == header.le32(16) else { throw .corrupt("GPT header at LBA \(lba): CRC mismatch") }
        let entriesLBA = header.le64(72)
        let count = header.le32(80)
        let entrySize = header.le32(84)
        guard count <= maximumGPTEntries, entrySize >= 128, entrySize <= 4096, entrySize % 8 == 0 else {
            throw .corrupt("GPT header at LBA \(lba): \(count) entries of \(entrySize) bytes")
        }
        let arrayBytes = Int(count) * Int(entrySize)
        let (arrayOffset, overflow) = entriesLBA.multipliedReportingOverflow(by: sectorSize)
        guard !overflow else { throw .corrupt("GPT entry array LBA \(entriesLBA) is out of range") }
        let array = try await disk.readExactly(offset: arrayOffset, length: arrayBytes, what: "GPT entry array")
        guard crc32IEEE(array) == header.le32(88) else {
            throw .corrupt("GPT entry array at LBA \(entriesLBA): CRC mismatch")
        }
        let sectors = disk.size / sectorSize
        var partitions: [Partition] = []
        for index in 0..<Int(count) {
            let entry = array.slice(index * Int(entrySize), Int(entrySize))
            let type = entry.slice(0, 16)
            guard type.contains(where: { $0 != 0 }) else { continue }
            let first = entry.le64(32)
            let last = entry.le64(40)
            guard first <= last, last < sectors else {
                throw .corrupt("GPT entry \(index + 1) spans LBA \(first)-\(last) on a disk of \(sectors) sectors")
            }
            let nameUnits = (0..<36).map { entry.le16(56 + 2 * $0) }
            let nameEnd = nameUnits.firstIndex(of: 0) ?? nameUnits.count
            let name = String(decoding: nameUnits[..<nameEnd], as: UTF16.self)
            partitions.append(
                Partition(
                    index: index + 1, offset: first * sectorSize, length: (last - first + 1) * sectorSize,
                    type: "gpt \(guidString(type))", name: name.isEmpty ? nil : name))
        }
        return partitions
    }

    /// A GUID in its registry form; the first three fields are stored little-endian (UEFI 2.10 Appendix A).
    static func guidString(_ bytes: [UInt8]) -> String {
        let order = [3, 2, 1, 0, -1, 5, 4, -1, 7, 6, -1, 8, 9, -1, 10, 11, 12, 13, 14, 15]
        return order.map { $0 < 0 ? "-" : hexByte(bytes.u8($0)).uppercased() }.joined()
    }
}
