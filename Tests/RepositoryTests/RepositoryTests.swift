import Foundation
import Repository
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Backup repository: ingest, read back, dedup, verify, gc")
struct RepositoryTests {
    @Test("ingest then read every chunk back: bytes equal, zero chunks nil, identical chunks stored once")
    func roundTrip() async throws {
        let fixture = try RepositoryFixture()
        defer { fixture.directory.remove() }
        let image = TestImage()
        let result = try fixture.ingest(image.bytes)

        #expect(result.bytesRead == UInt64(image.bytes.count))
        #expect(result.chunksTotal == image.chunkCount)
        #expect(result.zeroChunks == image.zeroChunks.count)
        #expect(result.newChunks == image.distinctChunks)
        #expect(result.deduplicatedChunks == image.repeats.count)
        let manifest = try fixture.repository.manifest(backupID: result.backup.id, disk: nil)
        #expect(manifest.name == "sda")
        #expect(manifest.chunkCount == image.chunkCount)
        #expect(manifest.length(ofChunk: image.chunkCount - 1) == 1000)
        for index in image.zeroChunks { #expect(manifest.chunk(at: index) == nil) }
        for index in image.repeats { #expect(manifest.chunk(at: index) == manifest.chunk(at: image.repeatedSource)) }
        let readBack = try await readDisk(manifest, from: fixture.repository.chunkSource)
        #expect(readBack == image.bytes)

        // Compressible chunks were stored compressed, random ones raw: stored bytes well under the data.
        let disk = try #require(result.backup.disks.first)
        #expect(disk.storedBytes == result.newStoredBytes)
        #expect(disk.zeroChunks == image.zeroChunks.count)
        #expect(result.newStoredBytes < UInt64(image.bytes.count) - UInt64(100 * TestImage.chunkSize))

        let configuration = try fixture.repository.configurationFile(backupID: result.backup.id)
        #expect(configuration.name == "web01.vmx")
        #expect(configuration.bytes == Array("memsize = \"2048\"\n".utf8))
    }

    @Test("a second backup of the same disk stores nothing new; changing 1% of chunks stores about 1%")
    func incremental() throws {
        let fixture = try RepositoryFixture()
        defer { fixture.directory.remove() }
        let image = TestImage()
        let first = try fixture.ingest(image.bytes)
        let second = try fixture.ingest(image.bytes)
        #expect(second.newChunks == 0)
        #expect(second.newStoredBytes == 0)
        #expect(second.deduplicatedChunks == image.chunkCount - image.zeroChunks.count)

        var changed = image.bytes
        for index in [3, 50, 250, 320] {  // 4 of 401 chunks
            changed[index * TestImage.chunkSize + 17] ^= 0xFF
        }
        let third = try fixture.ingest(changed)
        #expect(third.newChunks == 4)
        #expect(Double(third.newStoredBytes) < 0.02 * Double(first.newStoredBytes))
        #expect(third.newStoredBytes > 0)

        let backups = try fixture.repository.listBackups(vm: "web01")
        #expect(backups.map(\.id) == [third.backup.id, second.backup.id, first.backup.id])
        #expect(try fixture.repository.resolve(vm: "web01", backupID: nil).id == third.backup.id)
    }

    @Test("a flipped byte reads as corrupt, a deleted file as missing; verify names both")
    func corruption() async throws {
        let fixture = try RepositoryFixture()
        defer { fixture.directory.remove() }
        let image = TestImage()
        let result = try fixture.ingest(image.bytes)
        let manifest = try fixture.repository.manifest(backupID: result.backup.id, disk: "sda")
        let corrupted = try #require(manifest.chunk(at: 0))
        let deleted = try #require(manifest.chunk(at: 320))
        let chunks = fixture.repository.path + "/chunks"
        let corruptPath =
            "\(chunks)/\(corrupted.hex.prefix(2))/\(corrupted.hex.dropFirst(2).prefix(2))/\(corrupted.hex)"
        let deletePath = "\(chunks)/\(deleted.hex.prefix(2))/\(deleted.hex.dropFirst(2).prefix(2))/\(deleted.hex)"
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: corruptPath)))
        bytes[bytes.count - 1] ^= 0x01
        try write(bytes, to: corruptPath)
        #expect(unlink(deletePath) == 0)

        let source = fixture.repository.chunkSource
        let corruptError = await chunkReadError { _ = try await source.readChunk(corrupted, length: 4096) }
        #expect(corruptError?.code == .corrupt)
        #expect(corruptError?.chunk == corrupted)
        #expect(corruptError?.description.contains(corrupted.hex) == true)
        let missingError = await chunkReadError { _ = try await source.readChunk(deleted, length: 4096) }
        #expect(missingError?.code == .missing)
        #expect(missingError?.chunk == deleted)
        // The wrong length for a good chunk is corrupt too, never served.
        let good = try #require(manifest.chunk(at: 1))
        #expect(await chunkReadError { _ = try await source.readChunk(good, length: 4095) }?.code == .corrupt)

        let report = try fixture.repository.verify(backupID: nil)
        #expect(!report.isClean)
        #expect(report.problems.count == 2)
        let byChunk = Dictionary(uniqueKeysWithValues: report.problems.map { ($0.chunk, $0) })
        #expect(byChunk[corrupted]?.chunkIndex == 0)
        #expect(byChunk[corrupted]?.error.code == .corrupt)
        #expect(byChunk[deleted]?.chunkIndex == 320)
        #expect(byChunk[deleted]?.error.code == .missing)
        #expect(byChunk[deleted]?.disk == "sda")
        #expect(byChunk[deleted]?.backupID == result.backup.id)
        #expect(byChunk[deleted]?.description.contains(deleted.hex) == true)
        #expect(report.chunksChecked == image.distinctChunks)
    }

    @Test("a chunk file stored under another chunk's name is never served, though its own CRC is right")
    func swappedChunkFile() async throws {
        let fixture = try RepositoryFixture()
        defer { fixture.directory.remove() }
        let image = TestImage()
        let result = try fixture.ingest(image.bytes)
        let manifest = try fixture.repository.manifest(backupID: result.backup.id, disk: "sda")
        let chunks = fixture.repository.path + "/chunks"
        func path(_ id: ChunkID) -> String { "\(chunks)/\(id.hex.prefix(2))/\(id.hex.dropFirst(2).prefix(2))/\(id.hex)" }
        // Two distinct chunks of the same length: copy the first's file over the second's.
        let first = try #require(manifest.chunk(at: 0))
        let second = try #require(
            (1..<manifest.chunkCount).lazy.compactMap { manifest.chunk(at: $0) }.first {
                $0 != first && manifest.length(ofChunk: 0) == 4096
            })
        try write([UInt8](Data(contentsOf: URL(fileURLWithPath: path(first)))), to: path(second))
        let source = fixture.repository.chunkSource
        let error = await chunkReadError { _ = try await source.readChunk(second, length: 4096) }
        #expect(error?.code == .corrupt)
        #expect(error?.description.contains("another chunk") == true)
        #expect(try fixture.repository.verify(backupID: nil).problems.map(\.chunk).contains(second))
    }

    @Test("delete + gc frees exactly the chunks no other backup uses, and stray files; a held backup stays")
    func deleteAndCollect() async throws {
        let fixture = try RepositoryFixture()
        defer { fixture.directory.remove() }
        let first = try fixture.ingest(TestImage(seed: 1).bytes, name: "a.img")
        var secondImage = TestImage(seed: 1).bytes
        let replaced = pattern(seed: 4242, count: 50 * TestImage.chunkSize)
        secondImage.replaceSubrange(0..<replaced.count, with: replaced)
        let second = try fixture.ingest(secondImage, name: "b.img")
        let repository = fixture.repository

        let firstManifest = try repository.manifest(backupID: first.backup.id, disk: nil)
        let secondManifest = try repository.manifest(backupID: second.backup.id, disk: nil)
        let firstIDs = Set((0..<firstManifest.chunkCount).compactMap { firstManifest.chunk(at: $0) })
        let secondIDs = Set((0..<secondManifest.chunkCount).compactMap { secondManifest.chunk(at: $0) })
        let onlyFirst = firstIDs.subtracting(secondIDs)
        #expect(onlyFirst.count == 49)  // chunks 0..<50 but 7, which chunks 150..<200 repeat

        // A stray temporary file, as a crashed ingest leaves.
        let stray = "\(repository.path)/chunks/00/00/\(String(repeating: "0", count: 64)).tmp-1-2"
        try FileManager.default.createDirectory(
            atPath: "\(repository.path)/chunks/00/00", withIntermediateDirectories: true)
        try write([1, 2, 3], to: stray)

        try repository.addHold(backupID: first.backup.id, holder: "mount:web01")
        #expect(try repository.holds(backupID: first.backup.id) == ["mount:web01"])
        let held = repositoryError { try repository.delete(backupID: first.backup.id) }
        #expect(held?.code == .held)
        #expect(held?.message.contains("mount:web01") == true)
        let nothing = try repository.collectGarbage()
        #expect(nothing.chunksDeleted == 0)
        #expect(nothing.strayFilesDeleted == 1)

        try repository.removeHold(backupID: first.backup.id, holder: "mount:web01")
        try repository.delete(backupID: first.backup.id)
        #expect(repositoryError { _ = try repository.backup(id: first.backup.id) }?.code == .notFound)
        let report = try repository.collectGarbage()
        #expect(report.chunksDeleted == onlyFirst.count)
        #expect(report.chunksKept == secondIDs.count)
        #expect(report.bytesFreed >= UInt64(onlyFirst.count * TestImage.chunkSize))
        for id in onlyFirst {
            let error = await chunkReadError { _ = try await repository.chunkSource.readChunk(id, length: 4096) }
            #expect(error?.code == .missing)
        }
        #expect(try await readDisk(secondManifest, from: repository.chunkSource) == secondImage)
        #expect(try repository.verify(backupID: nil).isClean)

        // A held backup goes only with force.
        try repository.addHold(backupID: second.backup.id, holder: "mount:x")
        #expect(repositoryError { try repository.delete(backupID: second.backup.id) }?.code == .held)
        try repository.delete(backupID: second.backup.id, force: true)
        #expect(try repository.listBackups().isEmpty)
        #expect(try repository.collectGarbage().chunksDeleted == secondIDs.count)
    }

    @Test("lookups name what is missing: VM, backup id, disk")
    func lookups() throws {
        let fixture = try RepositoryFixture()
        defer { fixture.directory.remove() }
        let web = try fixture.ingest(TestImage().bytes)
        let db = try fixture.ingest(TestImage().bytes, vm: "db01")
        let repository = fixture.repository
        #expect(
            repositoryError { _ = try repository.resolve(vm: "mail", backupID: nil) }?.message == "no backup of VM mail"
        )
        #expect(
            repositoryError { _ = try repository.resolve(vm: "web01", backupID: db.backup.id) }?.message
                == "backup \(db.backup.id) is of VM db01, not web01")
        #expect(try repository.resolve(vm: "web01", backupID: web.backup.id) == web.backup)
        let unknownDisk = repositoryError { _ = try repository.manifest(backupID: web.backup.id, disk: "sdz") }
        #expect(unknownDisk?.message.contains("sdz") == true)
        #expect(unknownDisk?.message.contains("disks: sda") == true)
        #expect(repositoryError { _ = try repository.backup(id: 999) }?.message == "no backup 999")
        #expect(try repository.listBackups().count == 2)
        #expect(try repository.listBackups(vm: "db01") == [db.backup])

        let notRepository = try TemporaryDirectory()
        defer { notRepository.remove() }
        try write([1], to: notRepository.file("x"))
        #expect(repositoryError { _ = try BackupRepository.open(path: notRepository.path) }?.code == .notARepository)
        #expect(
            repositoryError { _ = try BackupRepository.open(path: notRepository.path, create: true) }?.code
                == .notARepository)
        // Reopening finds what was published.
        let reopened = try BackupRepository.open(path: repository.path)
        #expect(try reopened.listBackups().count == 2)
    }

    @Test("a source read error or a bad configuration path publishes nothing")
    func failedIngest() throws {
        let fixture = try RepositoryFixture()
        defer { fixture.directory.remove() }
        let repository = fixture.repository
        let failing = FailingSource(size: 64 * 4096, failAt: 40 * 4096)
        let error = repositoryError {
            _ = try repository.ingest(
                vm: "web01", configurationName: "web01.vmx", configuration: [1], disks: [("sda", failing)],
                chunkSize: 4096)
        }
        #expect(error?.code == .sourceFailed)
        #expect(error?.message.contains("disk sda") == true)
        #expect(error?.message.contains("EIO on purpose") == true)
        #expect(try repository.listBackups().isEmpty)
        // The chunks written before the failure are orphans that gc removes.
        #expect(try repository.collectGarbage().chunksDeleted > 0)

        let image = fixture.directory.file("ok.img")
        try write(TestImage().bytes, to: image)
        let badConfiguration = repositoryError {
            _ = try repository.ingest(
                IngestRequest(
                    vm: "web01", configurationPath: fixture.directory.file("missing.vmx"),
                    disks: [IngestDisk(name: "sda", source: image)]))
        }
        #expect(badConfiguration?.code == .invalidArgument)
        #expect(badConfiguration?.message.contains("missing.vmx") == true)
        let badSource = repositoryError {
            _ = try repository.ingest(
                IngestRequest(
                    vm: "web01", configurationPath: fixture.configuration,
                    disks: [IngestDisk(name: "sdb", source: fixture.directory.file("nope.img"))]))
        }
        #expect(badSource?.message.contains("disk sdb") == true)
        #expect(badSource?.message.contains("nope.img") == true)
        let badChunkSize = repositoryError {
            _ = try repository.ingest(
                IngestRequest(
                    vm: "web01", configurationPath: fixture.configuration,
                    disks: [IngestDisk(name: "sda", source: image)], chunkSize: 5000))
        }
        #expect(badChunkSize?.code == .invalidArgument)
        #expect(try repository.listBackups().isEmpty)
    }
}

/// A disk of random bytes whose reads fail from `failAt` on.
final class FailingSource: DiskSource {
    let size: UInt64
    let failAt: UInt64
    var description: String { "failing-test-source" }

    init(size: UInt64, failAt: UInt64) {
        self.size = size
        self.failAt = failAt
    }

    func read(offset: UInt64, length: Int) throws -> [UInt8] {
        guard offset < failAt else { throw RepositoryError(.sourceFailed, "EIO on purpose") }
        return pattern(seed: offset + 1, count: length)
    }

    func close() {}
}
