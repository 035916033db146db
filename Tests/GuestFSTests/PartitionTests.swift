import Foundation
import Testing

@testable import GuestFS

@Suite("MBR and GPT partition tables", .enabled(if: Tools.havePartitioning, "e2fsprogs or sfdisk not installed"))
struct PartitionTests {
    static let linuxGUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

    /// Partitions `image` with an sfdisk script, then makes an ext4 in the partition starting at `sector`.
    func partitionedImage(_ scratch: Scratch, tree: SampleTree, script: String, fsSector: UInt64, fsSize: String)
        throws -> String
    {
        let image = try scratch.image("disk.img", size: 64 << 20)
        try Tools.run(Tools.sfdisk ?? "sfdisk", ["--no-reread", "--no-tell-kernel", image], input: script)
        try Tools.run(
            Tools.mke2fs,
            ["-q", "-F", "-t", "ext4", "-b", "4096", "-E", "offset=\(fsSector * 512)", "-d", tree.root, image, fsSize])
        return image
    }

    @Test("MBR with the file system in partition 2")
    func mbr() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let tree = try SampleTree(scratch)
        let image = try partitionedImage(
            scratch, tree: tree,
            script: "label: dos\nstart=2048, size=16384, type=c\nstart=20480, size=81920, type=83\n",
            fsSector: 20480, fsSize: "40M")
        let disk = try FileDiskReader(path: image)
        let partitions = try await PartitionTable.read(disk)
        #expect(
            partitions == [
                Partition(index: 1, offset: 2048 * 512, length: 16384 * 512, type: "mbr 0x0c"),
                Partition(index: 2, offset: 20480 * 512, length: 81920 * 512, type: "mbr 0x83"),
            ])
        try await tree.verifyAll(image: image, debugfsImage: "\(image)?offset=\(20480 * 512)", blockSize: 4096)
        let map = try await located("/hello.txt", on: disk)
        #expect(map.partition.index == 2)
        #expect(map.extents.allSatisfy { $0.offset >= 20480 * 512 && $0.end <= (20480 + 81920) * 512 })
        let missing = await failure("/nope", on: disk)
        #expect(missing?.description == "/nope: no such file (ext4 on partition 2)")
    }

    @Test("GPT with the file system in partition 1, its name read")
    func gpt() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let tree = try SampleTree(scratch)
        let image = try partitionedImage(
            scratch, tree: tree,
            script:
                "label: gpt\nstart=2048, size=65536, type=\(Self.linuxGUID), name=\"root fs\"\nstart=67584, size=8192, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F\n",
            fsSector: 2048, fsSize: "32M")
        let disk = try FileDiskReader(path: image)
        let partitions = try await PartitionTable.read(disk)
        #expect(
            partitions == [
                Partition(
                    index: 1, offset: 2048 * 512, length: 65536 * 512, type: "gpt \(Self.linuxGUID)", name: "root fs"),
                Partition(
                    index: 2, offset: 67584 * 512, length: 8192 * 512, type: "gpt 0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"),
            ])
        try await tree.verifyAll(image: image, debugfsImage: "\(image)?offset=\(2048 * 512)", blockSize: 4096)

        // With the primary header's CRC broken, the backup header at the end of the disk is used.
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: image)))
        bytes[512 + 16] ^= 0xFF
        #expect(try await PartitionTable.read(MemoryDisk(bytes: bytes)) == partitions)
        // With both broken, the table is reported corrupt; locating still tries the whole disk and says why.
        bytes[bytes.count - 512 + 16] ^= 0xFF
        await #expect(throws: GuestFSError.self) { try await PartitionTable.read(MemoryDisk(bytes: bytes)) }
        let error = await failure("/hello.txt", on: MemoryDisk(bytes: bytes))
        #expect(error?.code == .noFileSystem)
        #expect(error?.description.contains("CRC mismatch") == true)
    }

    @Test("extended partition with logical partitions; the file system in partition 6")
    func logical() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let tree = try SampleTree(scratch)
        let script = """
            label: dos
            start=2048, size=8192, type=83
            start=12288, size=110000, type=5
            start=14336, size=16384, type=82
            start=32768, size=81920, type=83

            """
        let image = try partitionedImage(scratch, tree: tree, script: script, fsSector: 32768, fsSize: "40M")
        let disk = try FileDiskReader(path: image)
        let partitions = try await PartitionTable.read(disk)
        #expect(partitions.map(\.index) == [1, 5, 6])
        #expect(partitions.last == Partition(index: 6, offset: 32768 * 512, length: 81920 * 512, type: "mbr 0x83"))
        #expect(partitions[1].offset == 14336 * 512 && partitions[1].type == "mbr 0x82")
        let map = try await located("/links/slow", on: disk)
        #expect(map.partition.index == 6)
        try await tree.verifyAll(image: image, debugfsImage: "\(image)?offset=\(32768 * 512)", blockSize: 4096)
    }

    @Test("a separate /boot file system (s_last_mounted) answers /boot paths, absolute links included")
    func bootPartition() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let tree = try SampleTree(scratch)
        var random = SeededBytes(state: 5)
        try scratch.write("boot/vmlinuz-6.1", random.bytes(50_000))
        try scratch.write("boot/grub/grub.cfg", Array("set timeout=0\n".utf8))
        try scratch.symlink("boot/vmlinuz", to: "/boot/vmlinuz-6.1")
        try FileManager.default.createDirectory(atPath: tree.root + "/boot", withIntermediateDirectories: true)
        let image = try scratch.image("disk.img", size: 64 << 20)
        try Tools.run(
            Tools.sfdisk ?? "sfdisk", ["--no-reread", "--no-tell-kernel", image],
            input: "label: dos\nstart=2048, size=32768, type=83\nstart=34816, size=81920, type=83\n")
        try Tools.run(
            Tools.mke2fs,
            [
                "-q", "-F", "-t", "ext4", "-b", "1024", "-M", "/boot", "-E", "offset=\(2048 * 512)", "-d",
                scratch.path("boot"),
                image, "16M",
            ])
        try Tools.run(
            Tools.mke2fs,
            ["-q", "-F", "-t", "ext4", "-b", "4096", "-E", "offset=\(34816 * 512)", "-d", tree.root, image, "40M"])
        let disk = try FileDiskReader(path: image)
        let kernel = try await located("/boot/vmlinuz-6.1", on: disk)
        #expect(kernel.partition.index == 1)
        #expect(kernel.path == "/boot/vmlinuz-6.1")
        try verify(
            kernel, image: image, debugfsImage: "\(image)?offset=\(2048 * 512)", guestPath: "/vmlinuz-6.1",
            source: scratch.path("boot/vmlinuz-6.1"), blockSize: 1024)
        #expect(try await located("/boot/vmlinuz", on: disk).mapping == kernel.mapping)
        #expect(try await located("/boot/grub/grub.cfg", on: disk).partition.index == 1)
        #expect(try await located("/hello.txt", on: disk).partition.index == 2)
        #expect(try await located("/boot", on: disk).partition.index == 2)
        let missing = await failure("/boot/nope", on: disk)
        #expect(missing?.description == "/boot/nope: no such file (ext4 on partition 1, ext4 on partition 2)")
    }

    @Test("partitions without a file system are listed in the error")
    func noFileSystem() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let image = try scratch.image("empty.img", size: 32 << 20)
        try Tools.run(
            Tools.sfdisk ?? "sfdisk", ["--no-reread", "--no-tell-kernel", image],
            input: "label: dos\nstart=2048, size=8192, type=c\nstart=10240, size=8192, type=83\n")
        let error = await failure("/x", on: try FileDiskReader(path: image))
        #expect(error?.code == .noFileSystem)
        #expect(error?.description == "/x: no ext2/3/4 file system found (partitions: 1 mbr 0x0c, 2 mbr 0x83)")
    }
}

@Suite("partition table parsing on hand-made sectors")
struct PartitionTableUnitTests {
    @Test("a disk without a table is one partition covering it")
    func wholeDisk() async throws {
        let disk = MemoryDisk(bytes: [UInt8](repeating: 0, count: 1 << 20))
        #expect(try await PartitionTable.read(disk) == [Partition.wholeDisk(size: 1 << 20)])
        let error = await failure("/x", on: disk)
        #expect(error?.description == "/x: no ext2/3/4 file system found (no partition table, whole disk)")
    }

    @Test("an EBR chain that loops back on itself ends")
    func ebrLoop() async throws {
        var bytes = [UInt8](repeating: 0, count: 1 << 20)
        func entry(_ sector: Int, _ slot: Int, type: UInt8, start: UInt32, count: UInt32) {
            let base = sector * 512 + 446 + slot * 16
            bytes[base + 4] = type
            for index in 0..<4 {
                bytes[base + 8 + index] = UInt8(truncatingIfNeeded: start >> (8 * UInt32(index)))
                bytes[base + 12 + index] = UInt8(truncatingIfNeeded: count >> (8 * UInt32(index)))
            }
            bytes[sector * 512 + 510] = 0x55
            bytes[sector * 512 + 511] = 0xAA
        }
        entry(0, 0, type: 0x05, start: 100, count: 1000)
        entry(100, 0, type: 0x83, start: 10, count: 20)
        entry(100, 1, type: 0x05, start: 200, count: 50)  // next EBR at 100 + 200
        entry(300, 0, type: 0x83, start: 10, count: 20)
        entry(300, 1, type: 0x05, start: 200, count: 50)  // points at itself: a loop
        let partitions = try await PartitionTable.read(MemoryDisk(bytes: bytes))
        #expect(partitions.map(\.index) == [5, 6])
        #expect(partitions.map(\.offset) == [110 * 512, 310 * 512])
    }

    @Test("hostile GPT headers and entries with valid CRCs give errors or bounded partitions, never a crash")
    func hostileGPT() async throws {
        var random = SeededBytes(state: 99)
        let diskSize = 64 << 10
        for round in 0..<300 {
            var bytes = [UInt8](repeating: 0, count: diskSize)
            bytes[446 + 4] = 0xEE
            bytes[510] = 0x55
            bytes[511] = 0xAA
            var header = Array("EFI PART".utf8) + random.bytes(504)
            func put32(_ value: UInt32, at offset: Int) {
                for index in 0..<4 { header[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(index))) }
            }
            let count = UInt32(random.next() % 40)
            put32(92, at: 12)
            if round % 2 == 0 {
                put32(2, at: 72)
                put32(0, at: 76)
                put32(count, at: 80)
                put32(128, at: 84)
            }
            let entries = random.bytes(Int(count) * 128)
            bytes.replaceSubrange(1024..<(1024 + entries.count), with: entries)
            put32(crc32IEEE(entries), at: 88)
            put32(0, at: 16)
            put32(crc32IEEE(Array(header[0..<92])), at: 16)
            bytes.replaceSubrange(512..<1024, with: header)
            do throws(GuestFSError) {
                let partitions = try await PartitionTable.read(MemoryDisk(bytes: bytes))
                #expect(partitions.allSatisfy { $0.offset + $0.length <= UInt64(diskSize) })
            } catch {
                #expect(error.code == .corrupt)
            }
        }
    }
}
