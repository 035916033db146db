import Foundation
import Testing

@testable import GuestFS

@Suite("clear errors for bad paths and hostile disks", .enabled(if: Tools.haveE2fsprogs, "e2fsprogs not installed"))
struct ErrorTests {
    /// A small ext4 image of the sample tree and the tree itself.
    func sampleImage(_ scratch: Scratch) throws -> (SampleTree, String) {
        let tree = try SampleTree(scratch)
        return (tree, try tree.makeImage("ext4.img", size: 8 << 20, ["-t", "ext4", "-b", "4096"]))
    }

    @Test("missing paths, paths through files, relative paths, symlink loops, dangling links")
    func pathErrors() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let (_, image) = try sampleImage(scratch)
        let disk = try FileDiskReader(path: image)
        let results = await GuestFiles.locate(
            [
                "/etc/nope", "/hello.txt/x", "hello.txt", "/links/loop1", "/links/dangling", "/a/b/c/deep.bin/..",
                "/hello.txt",
            ],
            on: disk)
        let descriptions = results.map { result -> String in
            switch result {
            case .success(let map): "ok \(map.path)"
            case .failure(let error): error.description
            }
        }
        #expect(
            descriptions == [
                "/etc/nope: no such file (ext4 on the whole disk)",
                "/hello.txt/x: 'hello.txt' is not a directory",
                "hello.txt: not an absolute path",
                "/links/loop1: too many levels of symbolic links (more than 40)",
                "/links/dangling: no such file (ext4 on the whole disk)",
                "/a/b/c/deep.bin/..: 'deep.bin' is not a directory",
                "ok /hello.txt",
            ])
        if case .failure(let error) = results[0] { #expect(error.code == .noSuchFile) }
        if case .failure(let error) = results[1] { #expect(error.code == .notADirectory) }
        if case .failure(let error) = results[3] { #expect(error.code == .symlinkLoop) }
        // The root itself is a directory and maps to its blocks.
        #expect(try await located("/", on: disk).inode == 2)
    }

    @Test("an unsupported incompat feature is refused by name")
    func unsupportedFeature() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let (_, image) = try sampleImage(scratch)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: image)))
        bytes[1024 + 0x60 + 1] |= 0x10  // EXT4_FEATURE_INCOMPAT_DIRDATA (0x1000)
        let error = await failure("/hello.txt", on: MemoryDisk(bytes: bytes))
        #expect(error?.code == .unsupportedFeature)
        #expect(error?.description == "/hello.txt: ext4 feature 'dirdata' not supported (ext4 on the whole disk)")
        bytes[1024 + 0x60 + 3] |= 0x80  // an unknown incompat bit
        bytes[1024 + 0x60 + 1] &= ~0x10
        let unknown = await failure("/hello.txt", on: MemoryDisk(bytes: bytes))
        #expect(
            unknown?.description
                == "/hello.txt: ext4 feature 'incompat 0x80000000' not supported (ext4 on the whole disk)")
    }

    @Test("an encrypted directory on the way is refused")
    func encryptedDirectory() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let (_, image) = try sampleImage(scratch)
        try Tools.run(Tools.debugfs, ["-w", "-R", "set_inode_field /a flags 0x80800", image])
        let disk = try FileDiskReader(path: image)
        let error = await failure("/a/b/c/deep.bin", on: disk)
        #expect(error?.code == .unsupportedFeature)
        #expect(error?.description.hasPrefix("/a/b/c/deep.bin: ext4 feature 'encrypt' not supported") == true)
        _ = try await located("/hello.txt", on: disk)
    }

    @Test("a broken extent header in the inode is reported as corruption")
    func corruptInode() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let (_, image) = try sampleImage(scratch)
        let (block, offset, inodeNumber) = try inodeLocation(image, "/random.bin")
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: image)))
        bytes[Int(block * 4096 + offset) + 0x28] ^= 0xFF
        let error = await failure("/random.bin", on: MemoryDisk(bytes: bytes))
        #expect(error?.code == .corrupt)
        #expect(
            error?.description
                == "/random.bin: corrupt: inode \(inodeNumber): bad extent header magic (ext4 on the whole disk)")
    }

    @Test("an extent tree whose index entries all point at the same nodes is refused, not walked 340^4 times")
    func extentTreeFanOut() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let (_, image) = try sampleImage(scratch)
        let (block, offset, _) = try inodeLocation(image, "/random.bin")
        let free = try Tools.run(Tools.debugfs, ["-R", "ffb 5 1000", image])
            .split(whereSeparator: \.isWhitespace).compactMap { UInt32($0) }
        try #require(free.count == 5)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: image)))
        func put(_ value: UInt64, _ width: Int, at position: Int) {
            for index in 0..<width { bytes[position + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
        }
        /// An extent node at `position`: header, then `entries` copies of one index (or leaf) entry.
        func node(at position: Int, entries: Int, depth: Int, child: UInt32) {
            put(0xF30A, 2, at: position)
            put(UInt64(entries), 2, at: position + 2)
            put(UInt64(entries), 2, at: position + 4)
            put(UInt64(depth), 2, at: position + 6)
            for entry in 0..<entries {
                let base = position + 12 + entry * 12
                put(0, 4, at: base)
                if depth == 0 {
                    put(1, 2, at: base + 4)
                    put(0, 2, at: base + 6)
                    put(UInt64(child), 4, at: base + 8)
                } else {
                    put(UInt64(child), 4, at: base + 4)
                    put(0, 4, at: base + 8)
                }
            }
        }
        // Root (depth 5, in the inode) → five 340-way nodes, each level pointing every entry at the next block.
        node(at: Int(block * 4096 + offset) + 0x28, entries: 4, depth: 5, child: free[0])
        for level in 0..<5 {
            let next = level < 4 ? free[level + 1] : free[0]
            node(at: Int(free[level]) * 4096, entries: 340, depth: 4 - level, child: next)
        }
        let error = await failure("/random.bin", on: MemoryDisk(bytes: bytes))
        #expect(error?.code == .corrupt)
        #expect(error?.description.contains("appears twice in its block tree") == true)
    }

    /// Where `path`'s inode lies: (block, byte offset in it, inode number), from `debugfs imap`
    /// ("Inode 14 is part of block group 0\n\tlocated at block 38, offset 0x0d00").
    func inodeLocation(_ image: String, _ path: String) throws -> (UInt64, UInt64, UInt32) {
        let imap = try Tools.run(Tools.debugfs, ["-R", "imap \(path)", image])
        let words = imap.split(whereSeparator: { $0.isWhitespace || $0 == "," })
        let blockIndex = try #require(words.lastIndex(of: "block"))
        let block = try #require(UInt64(words[blockIndex + 1]))
        let offset = try #require(words.last.flatMap { UInt64($0.dropFirst(2), radix: 16) })
        let number = try #require(words.dropFirst().first.flatMap { UInt32($0) })
        return (block, offset, number)
    }

    @Test("a disk whose reads fail gives an I/O error")
    func failingDisk() async {
        let error = await failure("/x", on: FailingDisk(size: 1 << 20))
        #expect(error?.code == .ioError)
    }

    @Test("random superblocks (magic kept) give errors, never a crash or a hang")
    func randomSuperblocks() async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let (_, image) = try sampleImage(scratch)
        let original = [UInt8](try Data(contentsOf: URL(fileURLWithPath: image)))
        var random = SeededBytes(state: 2024)
        var failures = 0
        for _ in 0..<200 {
            var bytes = original
            bytes.replaceSubrange(1024..<2048, with: random.bytes(1024))
            bytes[1024 + 0x38] = 0x53
            bytes[1024 + 0x39] = 0xEF
            for result in await GuestFiles.locate(["/hello.txt", "/a/b/c/deep.bin"], on: MemoryDisk(bytes: bytes)) {
                if case .failure(let error) = result {
                    failures += 1
                    #expect(error.code != .ioError, "\(error)")
                }
            }
        }
        #expect(failures > 300)
    }

    @Test(
        "randomly corrupted metadata (inodes, directories, extent trees, indirect blocks) gives errors, never a crash",
        arguments: [
            ["-t", "ext4", "-b", "4096"], ["-t", "ext2", "-b", "1024"],
            ["-t", "ext4", "-b", "1024", "-I", "256", "-O", "inline_data,meta_bg,^resize_inode"],
        ])
    func corruptedMetadata(_ format: [String]) async throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let tree = try SampleTree(scratch)
        let image = try tree.makeImage("fuzz.img", size: 8 << 20, format)
        let original = [UInt8](try Data(contentsOf: URL(fileURLWithPath: image)))
        let paths = tree.expected.keys.sorted()
        // Corrupt exactly the blocks lookups read (except the superblock, covered above).
        var targets: [DiskExtent] = []
        for result in await GuestFiles.locate(paths, on: MemoryDisk(bytes: original)) {
            guard case .success(let map) = result else { continue }
            for extent in map.metadata where extent.end > 2048 {
                let start = max(extent.offset, 2048)
                targets.append(DiskExtent(offset: start, length: extent.end - start))
            }
        }
        targets = DiskExtent.normalized(targets)
        let targetBytes = targets.reduce(0) { $0 + $1.length }
        #expect(targetBytes >= 5 * 1024)
        var random = SeededBytes(state: 77)
        var outcomes: [GuestFSError.Code: Int] = [:]
        // GUESTFS_FUZZ_ROUNDS raises the count for a longer hunt by hand.
        let rounds = ProcessInfo.processInfo.environment["GUESTFS_FUZZ_ROUNDS"].flatMap { Int($0) } ?? 150
        for _ in 0..<rounds {
            var bytes = original
            for _ in 0..<40 {
                var position = random.next() % targetBytes
                for extent in targets {
                    if position < extent.length {
                        bytes[Int(extent.offset + position)] = UInt8(truncatingIfNeeded: random.next())
                        break
                    }
                    position -= extent.length
                }
            }
            for result in await GuestFiles.locate(paths, on: MemoryDisk(bytes: bytes)) {
                if case .failure(let error) = result {
                    outcomes[error.code, default: 0] += 1
                    #expect(error.code != .ioError, "\(error)")
                }
            }
        }
        #expect(outcomes[.corrupt, default: 0] > 0)
    }
}
