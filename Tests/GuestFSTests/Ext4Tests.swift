import Foundation
import Testing

@testable import GuestFS

/// The sample tree every ext image is populated with (`mke2fs -d`), and which guest path resolves to which
/// real file in it.
struct SampleTree {
    static let longDirectory = "/" + String(repeating: "long-directory-name-", count: 4) + "end"
    static let kib: UInt64 = 1024

    let scratch: Scratch
    let root: String

    /// Guest path → the path debugfs knows it by (symbolic links resolved by hand).
    let expected: [String: String] = [
        "/hello.txt": "/hello.txt",
        "/a/b/c/deep.bin": "/a/b/c/deep.bin",
        "/many/a-rather-longer-file-name-337": "/many/a-rather-longer-file-name-337",
        "/random.bin": "/random.bin",
        "/sparse.bin": "/sparse.bin",
        "/frag.bin": "/frag.bin",
        "/empty": "/empty",
        "/links/fast": "/hello.txt",
        "/links/slow": "\(longDirectory)/target.txt",
        "/links/dir/c/deep.bin": "/a/b/c/deep.bin",
        "/links/abs/deep.bin": "/a/b/c/deep.bin",
        "/a/b/../b/c/./deep.bin": "/a/b/c/deep.bin",
        "//a//b/c/deep.bin": "/a/b/c/deep.bin",
    ]

    /// Writes the tree under `scratch/name`; `big` adds a 5 GiB sparse file (needs `i_size_high`).
    init(_ scratch: Scratch, name: String = "root", big: Bool = false, extra: [String: [UInt8]] = [:]) throws {
        self.scratch = scratch
        self.root = scratch.path(name)
        var random = SeededBytes(state: 42)
        try scratch.write("\(name)/hello.txt", Array("hello, world\n".utf8))
        try scratch.write("\(name)/a/b/c/deep.bin", random.bytes(10_000))
        for index in 0..<400 {
            try scratch.write(
                "\(name)/many/a-rather-longer-file-name-\(String(format: "%03d", index))",
                Array("entry \(index)\n".utf8))
        }
        try scratch.write("\(name)/random.bin", random.bytes(300_000))
        try scratch.write("\(name)/empty", [])
        try scratch.writeSparse(
            "\(name)/sparse.bin", size: 1 << 20,
            pieces: [
                (0, random.bytes(4096)), (512 * Self.kib, random.bytes(8192)), ((1 << 20) - 100, random.bytes(100)),
            ])
        // Twelve 4 KiB pieces with 4 KiB holes between: twelve extents, more than the inode's four slots.
        try scratch.writeSparse(
            "\(name)/frag.bin", size: 24 * 4096, pieces: (0..<12).map { (UInt64($0) * 8192, random.bytes(4096)) })
        try scratch.write("\(name)\(Self.longDirectory)/target.txt", Array("the slow link's target\n".utf8))
        try FileManager.default.createDirectory(atPath: "\(root)/links", withIntermediateDirectories: true)
        try scratch.symlink("\(name)/links/fast", to: "../hello.txt")
        try scratch.symlink("\(name)/links/slow", to: "\(Self.longDirectory)/target.txt")
        try scratch.symlink("\(name)/links/dir", to: "../a/b")
        try scratch.symlink("\(name)/links/abs", to: "/a/b/c")
        try scratch.symlink("\(name)/links/loop1", to: "loop2")
        try scratch.symlink("\(name)/links/loop2", to: "loop1")
        try scratch.symlink("\(name)/links/dangling", to: "/nowhere")
        if big {
            let size: UInt64 = (5 << 30) + 123
            let second: UInt64 = (4 << 30) + 8192
            try scratch.writeSparse(
                "\(name)/big.bin", size: size,
                pieces: [(0, random.bytes(4096)), (second, random.bytes(4096)), (size - 123, random.bytes(123))])
        }
        for (path, bytes) in extra { try scratch.write("\(name)\(path)", bytes) }
    }

    /// Builds an image of `size` bytes with `mke2fs ARGS -d root`, then lets `e2fsck -fyD` index the large
    /// directories (htree), as a long-lived system's would be.
    func makeImage(_ file: String, size: UInt64, _ arguments: [String]) throws -> String {
        let image = try scratch.image(file, size: size)
        try Tools.run(Tools.mke2fs, ["-q", "-F"] + arguments + ["-d", root, image])
        try Tools.run(Tools.e2fsck, ["-fyD", image], accepting: [0, 1])
        return image
    }

    /// Locates every expected path (and `more`) and checks each against debugfs and the source file.
    func verifyAll(image: String, debugfsImage: String? = nil, blockSize: UInt64, more: [String] = []) async throws {
        let disk = try FileDiskReader(path: image)
        for (guestPath, realPath) in expected.sorted(by: { $0.key < $1.key }) {
            let map = try await located(guestPath, on: disk)
            try verify(
                map, image: image, debugfsImage: debugfsImage ?? image, guestPath: realPath, source: root + realPath,
                blockSize: blockSize)
        }
        for path in more {
            let map = try await located(path, on: disk)
            try verify(
                map, image: image, debugfsImage: debugfsImage ?? image, guestPath: path, source: root + path,
                blockSize: blockSize)
        }
    }
}

@Suite("ext2/3/4 file maps against e2fsprogs images", .enabled(if: Tools.haveE2fsprogs, "e2fsprogs not installed"))
struct Ext4MappingTests {
    @Test("ext4 with 4 KiB blocks: small, nested, htree, symlinks, sparse, fragmented and > 4 GiB files")
    func ext4FourK() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let tree = try SampleTree(scratch, big: true)
        let image = try tree.makeImage("ext4.img", size: 64 << 20, ["-t", "ext4", "-b", "4096"])
        // The images really exercise what the test names: an htree directory and a depth-1 extent tree.
        #expect(try Tools.run(Tools.debugfs, ["-R", "htree /many", image]).contains("Root node dump"))
        #expect(try Tools.run(Tools.debugfs, ["-R", "ex /frag.bin", image]).contains(" 1/ 1 "))
        try await tree.verifyAll(image: image, blockSize: 4096, more: ["/big.bin"])

        let disk = try FileDiskReader(path: image)
        let big = try await located("/big.bin", on: disk)
        let bigSize: UInt64 = (5 << 30) + 123
        let secondPiece: UInt64 = (4 << 30) + 8192
        let lastBlock: UInt64 = bigSize / 4096 * 4096
        #expect(big.size == bigSize)
        #expect(big.mapping.map(\.fileOffset) == [0, secondPiece, lastBlock])
        #expect(big.mapping.last?.length == bigSize % 4096)
        #expect(big.fileSystem == "ext4")
        #expect(big.partition == Partition.wholeDisk(size: 64 << 20))

        let frag = try await located("/frag.bin", on: disk)
        #expect(frag.mapping.count == 12)
        #expect(try Tools.debugfsMap(image, "/frag.bin").tree.count == 1)

        // A directory maps to its blocks; an empty file to nothing.
        let many = try await located("/many", on: disk)
        #expect(mappedBlocks(many, blockSize: 4096) == (try Tools.debugfsMap(image, "/many").data.map(\.1)))
        #expect(many.extents.count >= 1 && many.size >= 3 * 4096)
        #expect(try await located("/empty", on: disk).extents.isEmpty)
    }

    @Test("ext4 with 1 KiB blocks (superblock in block 1, descriptors from block 2)")
    func ext4OneK() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let tree = try SampleTree(scratch)
        let image = try tree.makeImage("ext4-1k.img", size: 32 << 20, ["-t", "ext4", "-b", "1024"])
        try await tree.verifyAll(image: image, blockSize: 1024)
    }

    @Test("ext2 with 4 KiB blocks: block maps with single, double and triple indirect blocks")
    func ext2FourK() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        var random = SeededBytes(state: 7)
        let tree = try SampleTree(scratch, big: true, extra: ["/double.bin": random.bytes(5 << 20)])
        let image = try tree.makeImage("ext2.img", size: 64 << 20, ["-t", "ext2", "-b", "4096"])
        let stat = try Tools.run(Tools.debugfs, ["-R", "stat /big.bin", image])
        #expect(stat.contains("(TIND)"))
        #expect(try Tools.run(Tools.debugfs, ["-R", "stat /double.bin", image]).contains("(DIND)"))
        try await tree.verifyAll(image: image, blockSize: 4096, more: ["/double.bin", "/big.bin"])

        let disk = try FileDiskReader(path: image)
        let double = try await located("/double.bin", on: disk)
        #expect(double.fileSystem == "ext2")
        #expect(try Tools.debugfsMap(image, "/double.bin").tree.count == 3)
    }

    @Test("ext2 with 1 KiB blocks: a sparse file reaching the triple indirect block")
    func ext2OneK() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        var random = SeededBytes(state: 9)
        let tree = try SampleTree(scratch)
        try scratch.writeSparse(
            "root/triple.bin", size: 70 << 20,
            pieces: [(0, random.bytes(3000)), (300 << 10, random.bytes(5000)), ((70 << 20) - 2000, random.bytes(2000))])
        let image = try tree.makeImage("ext2-1k.img", size: 16 << 20, ["-t", "ext2", "-b", "1024"])
        #expect(try Tools.run(Tools.debugfs, ["-R", "stat /triple.bin", image]).contains("(TIND)"))
        try await tree.verifyAll(image: image, blockSize: 1024, more: ["/triple.bin"])
    }

    @Test("ext4 with 4 KiB blocks over several flex_bg block groups")
    func severalGroups() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        var random = SeededBytes(state: 17)
        var extra: [String: [UInt8]] = [:]
        for index in 0..<24 { extra["/spread-\(index)/file"] = random.bytes(5000) }
        let tree = try SampleTree(scratch, extra: extra)
        let image = try tree.makeImage(
            "groups.img", size: 1 << 30,
            ["-t", "ext4", "-b", "4096", "-G", "4", "-N", "512", "-E", "lazy_itable_init=1"])
        let groups = try Tools.run(Tools.debugfs, ["-R", "stats", image]).split(separator: "\n")
            .first { $0.hasPrefix("Block count:") }
        #expect(groups?.contains("262144") == true)
        // 64 inodes per group: the 400-entry directory alone fills several groups, so later files live in
        // groups whose inode tables sit in the second flex group.
        let imap = try Tools.run(Tools.debugfs, ["-R", "imap /spread-23/file", image])
        #expect(["block group 6", "block group 7"].contains { imap.contains($0) }, "\(imap)")
        try await tree.verifyAll(image: image, blockSize: 4096, more: (0..<24).map { "/spread-\($0)/file" })
    }

    @Test("bigalloc: clusters of blocks, extents still in blocks")
    func bigalloc() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let tree = try SampleTree(scratch)
        let image = try tree.makeImage(
            "bigalloc.img", size: 64 << 20, ["-t", "ext4", "-b", "4096", "-O", "bigalloc", "-C", "16384"])
        try await tree.verifyAll(image: image, blockSize: 4096)
    }

    @Test("casefold directories match names case-insensitively")
    func casefold() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let tree = try SampleTree(scratch)
        let image = try tree.makeImage("casefold.img", size: 16 << 20, ["-t", "ext4", "-b", "4096", "-O", "casefold"])
        let disk = try FileDiskReader(path: image)
        let upper = "/many/A-RATHER-LONGER-FILE-NAME-001"
        #expect(await failure(upper, on: disk)?.code == .noSuchFile)
        try Tools.run(Tools.debugfs, ["-w", "-R", "set_inode_field /many flags 0x40081000", image])
        let map = try await located(upper, on: try FileDiskReader(path: image))
        try verify(
            map, image: image, debugfsImage: image, guestPath: "/many/a-rather-longer-file-name-001",
            source: tree.root + "/many/a-rather-longer-file-name-001", blockSize: 4096)
    }

    @Test("ext3 is named ext3")
    func ext3() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let tree = try SampleTree(scratch)
        let image = try tree.makeImage("ext3.img", size: 16 << 20, ["-t", "ext3", "-b", "4096"])
        let map = try await located("/hello.txt", on: try FileDiskReader(path: image))
        #expect(map.fileSystem == "ext3")
        try verify(
            map, image: image, debugfsImage: image, guestPath: "/hello.txt", source: tree.root + "/hello.txt",
            blockSize: 4096)
    }

    @Test("inline_data: file bytes and directory entries inside the inode")
    func inlineData() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        var random = SeededBytes(state: 11)
        let tiny = random.bytes(40)
        let small = random.bytes(100)
        try scratch.write("root/tiny", tiny)
        try scratch.write("root/small", small)
        try scratch.write("root/dir/one", Array("1".utf8))
        try scratch.write("root/dir/two", random.bytes(20_000))
        let image = try scratch.image("inline.img", size: 16 << 20)
        try Tools.run(
            Tools.mke2fs,
            [
                "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-O", "inline_data", "-d", scratch.path("root"),
                image,
            ])
        let stat = try Tools.run(Tools.debugfs, ["-R", "stat /small", image])
        #expect(stat.contains("Size of inline data: 100"))
        #expect(try Tools.run(Tools.debugfs, ["-R", "stat /dir", image]).contains("Size of inline data"))

        let disk = try FileDiskReader(path: image)
        for (path, bytes) in [("/tiny", tiny), ("/small", small)] {
            let map = try await located(path, on: disk)
            #expect(map.size == UInt64(bytes.count))
            #expect(map.notes.contains { $0.hasPrefix("inline data") })
            #expect(map.extents.count == 1 && map.extents[0].length == 256)
            var read: [UInt8] = []
            for piece in map.mapping { read += try readImage(image, offset: piece.diskOffset, length: piece.length) }
            #expect(read == bytes, "\(path)")
        }
        // A file in an inline directory, with ordinary blocks.
        let two = try await located("/dir/two", on: disk)
        try verify(
            two, image: image, debugfsImage: image, guestPath: "/dir/two", source: scratch.path("root/dir/two"),
            blockSize: 4096)
    }

    @Test("meta_bg: group descriptors at the start of each meta group")
    func metaBlockGroups() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        var random = SeededBytes(state: 13)
        var extra: [String: [UInt8]] = [:]
        for index in 0..<40 { extra["/spread-\(index)/file"] = random.bytes(3000) }
        let tree = try SampleTree(scratch, extra: extra)
        let image = try tree.makeImage(
            "metabg.img", size: 256 << 20, ["-t", "ext4", "-b", "1024", "-O", "meta_bg,^resize_inode"])
        #expect(try Tools.run(Tools.debugfs, ["-R", "stats", image]).contains("meta_bg"))
        try await tree.verifyAll(image: image, blockSize: 1024, more: (0..<40).map { "/spread-\($0)/file" })
    }
}
