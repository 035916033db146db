import BlockDevice
import NIOCore
import Synchronization
import Testing

@testable import SCSI

// MARK: - Helpers

private let copyNexus = ITNexus(
    initiatorName: "iqn.1994-05.com.redhat:copier", isid: 0x8000_0000_0001, targetName: "iqn.2024-01.io.livemount:t1",
    portalGroupTag: 1)
private let otherNexus = ITNexus(
    initiatorName: "iqn.1994-05.com.redhat:other", isid: 0x8000_0000_0002, targetName: "iqn.2024-01.io.livemount:t1",
    portalGroupTag: 1)

private let naaSource: [UInt8] = [0x60, 0x01, 0x40, 0x50, 0, 0, 0, 1]
private let naaDestination: [UInt8] = [0x60, 0x01, 0x40, 0x50, 0, 0, 0, 2]
private let naaReadOnly: [UInt8] = [0x60, 0x01, 0x40, 0x50, 0, 0, 0, 3]

private func put(_ v: UInt64, bytes n: Int, into b: inout [UInt8], at: Int) {
    for i in 0..<n { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * (n - 1 - i))) }
}

/// An identification descriptor CSCD (E4h) naming `naa`, as libiscsi's populate_tgt_desc builds it.
private func cscd(
    _ naa: [UInt8], type: UInt8 = 0xE4, luIDType: UInt8 = 0, nul: Bool = false, blockLength: Int = 512,
    designatorType: UInt8 = 3
) -> [UInt8] {
    var d = [UInt8](repeating: 0, count: 32)
    d[0] = type
    d[1] = (luIDType << 6) | (nul ? 0x20 : 0)
    d[4] = 0x01  // binary code set
    d[5] = designatorType  // association LU (00b), designator type
    d[7] = UInt8(naa.count)
    d.replaceSubrange(8..<(8 + naa.count), with: naa)
    put(UInt64(blockLength), bytes: 3, into: &d, at: 29)
    return d
}

/// A block→block segment descriptor (02h).
private func b2b(
    source: Int = 0, destination: Int = 1, blocks: Int, sourceLBA: UInt64, destinationLBA: UInt64, type: UInt8 = 0x02
)
    -> [UInt8]
{
    var d = [UInt8](repeating: 0, count: 28)
    d[0] = type
    put(0x18, bytes: 2, into: &d, at: 2)
    put(UInt64(source), bytes: 2, into: &d, at: 4)
    put(UInt64(destination), bytes: 2, into: &d, at: 6)
    put(UInt64(blocks), bytes: 2, into: &d, at: 10)
    put(sourceLBA, bytes: 8, into: &d, at: 12)
    put(destinationLBA, bytes: 8, into: &d, at: 20)
    return d
}

/// A whole EXTENDED COPY(LID1) parameter list.
private func parameterList(listID: UInt8 = 1, usage: UInt8 = 0, cscds: [[UInt8]], segments: [[UInt8]]) -> [UInt8] {
    let c = cscds.flatMap { $0 }
    let s = segments.flatMap { $0 }
    var header = [UInt8](repeating: 0, count: 16)
    header[0] = listID
    header[1] = usage << 3
    put(UInt64(c.count), bytes: 2, into: &header, at: 2)
    put(UInt64(s.count), bytes: 4, into: &header, at: 8)
    return header + c + s
}

private func xcopyCDB(length: Int, serviceAction: UInt8 = 0) -> [UInt8] {
    var cdb = [UInt8](repeating: 0, count: 16)
    cdb[0] = 0x83
    cdb[1] = serviceAction
    put(UInt64(length), bytes: 4, into: &cdb, at: 10)
    return cdb
}

private func rcrCDB(_ action: UInt8, listID: UInt8 = 1, allocation: Int = 1024) -> [UInt8] {
    var cdb = [UInt8](repeating: 0, count: 16)
    cdb[0] = 0x84
    cdb[1] = action
    cdb[2] = listID
    put(UInt64(allocation), bytes: 4, into: &cdb, at: 10)
    return cdb
}

private func be16(_ b: [UInt8], _ at: Int) -> Int { Int(b[at]) << 8 | Int(b[at + 1]) }
private func be32Int(_ b: [UInt8], _ at: Int) -> Int { (0..<4).reduce(0) { $0 << 8 | Int(b[at + $1]) } }

/// Two writable devices and a read-only one, found by their NAA designators.
private struct CopyFixture {
    let engine = ExtendedCopyEngine()
    let source = CopyTestDevice(blockCount: 8192)
    let destination = CopyTestDevice(blockCount: 4096)
    let readOnly = CopyTestDevice(blockCount: 1024, readOnly: true)

    var resolver: CopyTargetResolver {
        let (s, d, r) = (source, destination, readOnly)
        return { naa in
            switch naa {
            case naaSource: return CopyTargetDevice(device: s, readOnly: false)
            case naaDestination: return CopyTargetDevice(device: d, readOnly: false)
            case naaReadOnly: return CopyTargetDevice(device: r, readOnly: true)
            default: return nil
            }
        }
    }

    func run(_ list: [UInt8], length: Int? = nil, nexus: ITNexus = copyNexus) async -> SCSIResult {
        await engine.extendedCopy(
            cdb: xcopyCDB(length: length ?? list.count), parameters: ByteBuffer(bytes: list), nexus: nexus,
            resolve: resolver)
    }

    func results(_ action: UInt8, listID: UInt8 = 1, allocation: Int = 1024, nexus: ITNexus = copyNexus) -> (
        SCSIResult, [UInt8]
    ) {
        let r = engine.receiveCopyResults(cdb: rcrCDB(action, listID: listID, allocation: allocation), nexus: nexus)
        var data = r.dataIn ?? ByteBuffer()
        return (r, data.readBytes(length: data.readableBytes) ?? [])
    }
}

// MARK: - Tests

@Suite("EXTENDED COPY and RECEIVE COPY RESULTS")
struct ExtendedCopyTests {
    @Test("copies a segment between two devices, in chunks, and across a single LU")
    func copiesBlocks() async {
        let f = CopyFixture()
        f.source.fill(lba: 100, count: 3000, with: 0xA5)
        f.source.fill(lba: 3100, count: 1, with: 0x5A)
        let list = parameterList(
            cscds: [cscd(naaSource), cscd(naaDestination)],
            segments: [b2b(blocks: 3001, sourceLBA: 100, destinationLBA: 10)])
        let result = await f.run(list)
        #expect(result.status == .good)
        #expect(result.dataOutLength == list.count)
        #expect(f.destination.contents(lba: 10, count: 3000) == [UInt8](repeating: 0xA5, count: 3000 * 512))
        #expect(f.destination.contents(lba: 3010, count: 1) == [UInt8](repeating: 0x5A, count: 512))
        #expect(f.destination.contents(lba: 9, count: 1) == [UInt8](repeating: 0, count: 512))
        // 3001 blocks of 512 bytes is more than one 1 MiB chunk.
        #expect(f.destination.callCounts.writes == 2)

        // libiscsi ExtendedCopy.Simple: one CSCD as both source and destination, list ID usage 11b.
        let same = parameterList(
            usage: 3, cscds: [cscd(naaSource)],
            segments: [b2b(source: 0, destination: 0, blocks: 2048, sourceLBA: 100, destinationLBA: 8192 - 2048)])
        #expect(await f.run(same).status == .good)
        #expect(f.source.contents(lba: 8192 - 2048, count: 2048).allSatisfy { $0 == 0xA5 })
    }

    @Test("an overlapping copy within one device behaves like memmove")
    func overlappingCopy() async {
        let f = CopyFixture()
        for lba in 0..<3000 { f.source.fill(lba: UInt64(lba), count: 1, with: UInt8(truncatingIfNeeded: lba / 7)) }
        let original = f.source.contents(lba: 0, count: 3000)
        let list = parameterList(
            usage: 3, cscds: [cscd(naaSource)],
            segments: [b2b(source: 0, destination: 0, blocks: 3000, sourceLBA: 0, destinationLBA: 100)])
        #expect(await f.run(list).status == .good)
        #expect(f.source.contents(lba: 100, count: 3000) == original)
    }

    @Test("several segments run in order and COPY STATUS reports them")
    func multipleSegmentsAndCopyStatus() async {
        let f = CopyFixture()
        f.source.fill(lba: 0, count: 4, with: 1)
        f.source.fill(lba: 4, count: 4, with: 2)
        let list = parameterList(
            listID: 7, cscds: [cscd(naaSource), cscd(naaDestination)],
            segments: [
                b2b(blocks: 4, sourceLBA: 0, destinationLBA: 100), b2b(blocks: 4, sourceLBA: 4, destinationLBA: 200),
                b2b(blocks: 0, sourceLBA: 0, destinationLBA: 0),
            ])
        #expect(await f.run(list).status == .good)
        #expect(f.destination.contents(lba: 100, count: 4).allSatisfy { $0 == 1 })
        #expect(f.destination.contents(lba: 200, count: 4).allSatisfy { $0 == 2 })

        let (status, data) = f.results(0x00, listID: 7)
        #expect(status.status == .good)
        #expect(data.count == 12)
        #expect(be32Int(data, 0) == 8)
        #expect(data[4] == 0x01)  // completed without errors
        #expect(be16(data, 5) == 3)
        #expect(data[7] == 0)
        #expect(be32Int(data, 8) == 8 * 512)
        // Reported once: the held status of a finished copy is then discarded.
        #expect(f.results(0x00, listID: 7).0.sense?.asc == 0x24)
        // Another nexus never sees it, and an unknown list ID is INVALID FIELD IN CDB.
        #expect(f.results(0x00, listID: 9).0.sense?.asc == 0x24)
    }

    @Test("results are held only for LIST ID USAGE 00b and per I_T nexus")
    func heldResultsScope() async {
        let f = CopyFixture()
        let segments = [b2b(blocks: 1, sourceLBA: 0, destinationLBA: 0)]
        #expect(
            await f.run(
                parameterList(listID: 3, usage: 2, cscds: [cscd(naaSource), cscd(naaDestination)], segments: segments)
            ).status == .good)
        #expect(f.results(0x00, listID: 3).0.status == .checkCondition)
        #expect(
            await f.run(parameterList(listID: 4, cscds: [cscd(naaSource), cscd(naaDestination)], segments: segments))
                .status == .good)
        #expect(f.results(0x00, listID: 4, nexus: otherNexus).0.status == .checkCondition)
        f.engine.nexusReleased(copyNexus)
        #expect(f.results(0x00, listID: 4).0.status == .checkCondition)
        // Reserved LIST ID USAGE 01b.
        let reserved = await f.run(parameterList(usage: 1, cscds: [cscd(naaSource)], segments: segments))
        #expect(reserved.sense?.asc == 0x26)
    }

    @Test("a failed copy reports COPY ABORTED and keeps FAILED SEGMENT DETAILS")
    func failedCopy() async {
        let f = CopyFixture()
        f.source.setFailures(reads: true, writes: false)
        let list = parameterList(
            listID: 2, cscds: [cscd(naaSource), cscd(naaDestination)],
            segments: [b2b(blocks: 8, sourceLBA: 0, destinationLBA: 0)])
        let result = await f.run(list)
        #expect(result.sense == SenseData(key: .copyAborted, asc: 0x11, ascq: 0x00))
        let (status, data) = f.results(0x00, listID: 2)
        #expect(status.status == .good)
        #expect(data[4] == 0x02)  // completed with errors
        #expect(be16(data, 5) == 0)
        let (details, bytes) = f.results(0x04, listID: 2)
        #expect(details.status == .good)
        #expect(bytes[56] == SCSIStatus.checkCondition.rawValue)
        #expect(be16(bytes, 58) == 18)
        #expect(bytes[60 + 2] & 0x0F == SenseKey.copyAborted.rawValue)
        #expect(bytes[60 + 12] == 0x11)
        #expect(f.results(0x04, listID: 2).0.status == .checkCondition)
        // Writes failing map to COPY ABORTED / WRITE ERROR.
        f.source.setFailures(reads: false, writes: false)
        f.destination.setFailures(reads: false, writes: true)
        #expect(await f.run(list).sense == SenseData(key: .copyAborted, asc: 0x0C, ascq: 0x00))
    }

    @Test("parameter list length: zero is GOOD, truncated descriptors are PARAMETER LIST LENGTH ERROR")
    func parameterListLength() async {
        let f = CopyFixture()
        let list = parameterList(
            cscds: [cscd(naaSource)],
            segments: [b2b(source: 0, destination: 0, blocks: 1, sourceLBA: 0, destinationLBA: 1)])
        #expect(await f.run([], length: 0).status == .good)
        for length in [16 + 32 - 1, 16 + 32 + 28 - 1, 8] {
            let r = await f.run(Array(list.prefix(length)), length: length)
            #expect(r.sense == SenseData(key: .illegalRequest, asc: 0x1A, ascq: 0))
        }
        // The CDB asks for more than the Data-Out carried.
        #expect(await f.run(list, length: list.count + 4).sense?.asc == 0x1A)
        // EXTENDED COPY(LID4) is not implemented.
        let lid4 = await f.engine.extendedCopy(
            cdb: xcopyCDB(length: list.count, serviceAction: 1), parameters: ByteBuffer(bytes: list), nexus: copyNexus,
            resolve: f.resolver)
        #expect(lid4.sense?.asc == 0x24)
    }

    @Test("descriptor limits from OPERATING PARAMETERS are enforced (libiscsi DescrLimits)")
    func descriptorLimits() async {
        let f = CopyFixture()
        let (r, op) = f.results(0x03, listID: 0)
        #expect(r.status == .good)
        let maxCSCD = be16(op, 8)
        let maxSegments = be16(op, 10)
        #expect(maxCSCD >= 2 && maxSegments >= 1)
        let segment = b2b(source: 0, destination: 0, blocks: 1, sourceLBA: 0, destinationLBA: 1)
        let tooManyTargets = parameterList(
            cscds: Array(repeating: cscd(naaSource), count: maxCSCD + 1), segments: [segment])
        #expect(await f.run(tooManyTargets).sense == SenseData(key: .illegalRequest, asc: 0x26, ascq: 0x06))
        let tooManySegments = parameterList(
            listID: 2, cscds: [cscd(naaSource)], segments: Array(repeating: segment, count: maxSegments + 1))
        #expect(await f.run(tooManySegments).sense == SenseData(key: .illegalRequest, asc: 0x26, ascq: 0x08))
        // Over MAXIMUM DESCRIPTOR LIST LENGTH.
        let maxList = be32Int(op, 12)
        let huge = parameterList(
            listID: 3, cscds: [cscd(naaSource)], segments: Array(repeating: segment, count: maxList / 28 + 1))
        #expect(await f.run(huge).sense?.asc == 0x1A)
    }

    @Test("unsupported descriptor types get their own sense codes (libiscsi DescrType)")
    func descriptorTypes() async {
        let f = CopyFixture()
        let fc = parameterList(
            cscds: [cscd(naaSource, type: 0xE0)],
            segments: [b2b(source: 0, destination: 0, blocks: 1, sourceLBA: 0, destinationLBA: 1)])
        #expect(await f.run(fc).sense == SenseData(key: .illegalRequest, asc: 0x26, ascq: 0x07))
        var streamToStream = [UInt8](repeating: 0, count: 20)
        streamToStream[0] = 0x03
        streamToStream[3] = 16
        let s2s = parameterList(cscds: [cscd(naaSource)], segments: [streamToStream])
        #expect(await f.run(s2s).sense == SenseData(key: .illegalRequest, asc: 0x26, ascq: 0x09))
    }

    @Test("CSCD checks: LU ID type, NUL, designator, unknown device, block length (libiscsi ValidTgtDescr)")
    func cscdValidation() async {
        let f = CopyFixture()
        let segment = [b2b(source: 0, destination: 0, blocks: 1, sourceLBA: 0, destinationLBA: 1)]
        // SPC-4 ignores LU ID TYPE: the designator names the copy target.
        let luIDType = await f.run(parameterList(cscds: [cscd(naaSource, luIDType: 2)], segments: segment))
        #expect(luIDType.status == .good)
        let nul = await f.run(parameterList(cscds: [cscd(naaSource, nul: true)], segments: segment))
        #expect(nul.sense == SenseData(key: .copyAborted, asc: 0x0D, ascq: 0x02))
        let unknown = await f.run(parameterList(cscds: [cscd([0x60, 9, 9, 9, 9, 9, 9, 9])], segments: segment))
        #expect(unknown.sense == SenseData(key: .copyAborted, asc: 0x0D, ascq: 0x02))
        let notNAA = await f.run(parameterList(cscds: [cscd(naaSource, designatorType: 2)], segments: segment))
        #expect(notNAA.sense == SenseData(key: .copyAborted, asc: 0x0D, ascq: 0x02))
        let blockLength = await f.run(parameterList(cscds: [cscd(naaSource, blockLength: 4096)], segments: segment))
        #expect(blockLength.sense?.asc == 0x26)
    }

    @Test("segment checks: CSCD index, capacity, read-only destination (libiscsi ValidSegDescr)")
    func segmentValidation() async {
        let f = CopyFixture()
        let index = await f.run(
            parameterList(
                cscds: [cscd(naaSource)],
                segments: [b2b(source: 0, destination: 1, blocks: 1, sourceLBA: 0, destinationLBA: 0)]))
        #expect(index.sense == SenseData(key: .copyAborted, asc: 0x0D, ascq: 0x02))
        let beyond = await f.run(
            parameterList(
                cscds: [cscd(naaSource)],
                segments: [b2b(source: 0, destination: 0, blocks: 2048, sourceLBA: 0, destinationLBA: 8191)]))
        #expect(beyond.sense?.key == .copyAborted)
        #expect(f.source.callCounts.writes == 0)
        let readOnly = await f.run(
            parameterList(
                cscds: [cscd(naaSource), cscd(naaReadOnly)], segments: [b2b(blocks: 1, sourceLBA: 0, destinationLBA: 0)]
            ))
        #expect(readOnly.sense == SenseData(key: .copyAborted, asc: 0x27, ascq: 0x00))
        // Nothing was copied by any failed command.
        #expect(f.source.callCounts.reads == 0)
    }

    @Test("OPERATING PARAMETERS and the 8Fh VPD page advertise LID1 with E4h and 02h descriptors")
    func operatingParametersAndVPD() {
        let f = CopyFixture()
        let (r, op) = f.results(0x03, listID: 0)
        #expect(r.status == .good)
        #expect(be32Int(op, 0) == op.count - 4)
        #expect(be32Int(op, 0) >= 40)
        #expect(be32Int(op, 16) == 64 << 20)
        #expect(Int(op[43]) == op.count - 44)
        #expect(Set(op[44...]) == [0x02, 0xE4])
        // Allocation length truncates.
        #expect(f.results(0x03, listID: 0, allocation: 8).1.count == 8)
        // RECEIVE DATA (01h) and unknown service actions are INVALID FIELD IN CDB.
        #expect(f.results(0x01).0.sense?.asc == 0x24)
        #expect(f.results(0x1F).0.sense?.asc == 0x24)

        let page = f.engine.thirdPartyCopyVPD()
        #expect(page[1] == 0x8F)
        #expect(be16(page, 2) == page.count - 4)
        var offset = 4
        var found: [Int: [UInt8]] = [:]
        while offset + 4 <= page.count {
            let type = be16(page, offset)
            let length = be16(page, offset + 2)
            #expect(length % 4 == 0)
            found[type] = Array(page[(offset + 4)..<(offset + 4 + length)])
            offset += 4 + length
        }
        #expect(offset == page.count)
        // Supported Commands: 83h/00h and 84h/00h,03h,04h.
        let commands = found[0x0001] ?? []
        #expect(Array(commands.prefix(9)) == [8, 0x83, 1, 0x00, 0x84, 3, 0x00, 0x03, 0x04])
        #expect(found[0x0008].map { be16($0, 4) } == 8)  // MAXIMUM CSCD DESCRIPTOR COUNT
        #expect(found[0x0008]?.count == 28)
        #expect(found[0x0081].map { Array($0.prefix(3)) } == [2, 0x02, 0xE4])
        #expect(found[0x0082]?.count == 4)
        #expect(found[0x8001]?.count == 32)
        #expect(found[0x8001].map { be32Int($0, 0) } == 16)
    }

    @Test("a list identifier still in use gets OPERATION IN PROGRESS")
    func listIDInUse() async throws {
        let engine = ExtendedCopyEngine()
        let slow = GateDevice(blockCount: 64)
        let resolver: CopyTargetResolver = { _ in CopyTargetDevice(device: slow, readOnly: false) }
        let list = parameterList(
            listID: 5, cscds: [cscd(naaSource)],
            segments: [b2b(source: 0, destination: 0, blocks: 1, sourceLBA: 0, destinationLBA: 1)])
        let first = Task {
            await engine.extendedCopy(
                cdb: xcopyCDB(length: list.count), parameters: ByteBuffer(bytes: list), nexus: copyNexus,
                resolve: resolver)
        }
        await slow.waitUntilReadStarted()
        let second = await engine.extendedCopy(
            cdb: xcopyCDB(length: list.count), parameters: ByteBuffer(bytes: list), nexus: copyNexus, resolve: resolver)
        #expect(second.sense == SenseData(key: .illegalRequest, asc: 0x00, ascq: 0x16))
        // COPY STATUS of the running copy says "in progress".
        let status = engine.receiveCopyResults(cdb: rcrCDB(0, listID: 5), nexus: copyNexus)
        var data = try #require(status.dataIn)
        #expect(data.readBytes(length: data.readableBytes)?[4] == 0x00)
        slow.open()
        #expect(await first.value.status == .good)
        // Once it has finished, the list ID may be used again; and another nexus has its own list IDs.
        let again = await engine.extendedCopy(
            cdb: xcopyCDB(length: list.count), parameters: ByteBuffer(bytes: list), nexus: copyNexus, resolve: resolver)
        #expect(again.status == .good)
        let other = await engine.extendedCopy(
            cdb: xcopyCDB(length: list.count), parameters: ByteBuffer(bytes: list), nexus: otherNexus, resolve: resolver
        )
        #expect(other.status == .good)
    }
}

/// A device whose reads wait until the test opens the gate, so a copy can be
/// observed while it runs (no timing involved).
private final class GateDevice: BlockDevice {
    let blockSize = 512
    let blockCount: UInt64
    let isReadOnly = false
    let supportsUnmap = false
    private let inner: CopyTestDevice
    private let gate = AsyncGate()
    private let started = AsyncGate()

    init(blockCount: UInt64) {
        self.blockCount = blockCount
        self.inner = CopyTestDevice(blockCount: blockCount)
    }

    func open() { gate.open() }
    func waitUntilReadStarted() async { await started.wait() }

    func read(offset: UInt64, length: Int) async throws(BlockDeviceError) -> ByteBuffer {
        started.open()
        await gate.wait()
        return try await inner.read(offset: offset, length: length)
    }

    func write(offset: UInt64, data: ByteBuffer, fua: Bool) async throws(BlockDeviceError) {
        try await inner.write(offset: offset, data: data, fua: fua)
    }

    func flush() async throws(BlockDeviceError) {}
    func unmap(offset: UInt64, length: Int) async throws(BlockDeviceError) {}
    func close() async {}
}

/// A one-shot latch: `wait()` returns once `open()` has been called.
private final class AsyncGate: Sendable {
    private let state = Mutex<(isOpen: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func open() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.isOpen = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in waiters { w.resume() }
    }

    func wait() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLock { s -> Bool in
                if s.isOpen { return true }
                s.waiters.append(c)
                return false
            }
            if resumeNow { c.resume() }
        }
    }
}
