import BlockDevice
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - SBC-4 data transfer commands

extension LogicalUnit {
    /// The common checks of the READ/WRITE family: no protection information
    /// (RDPROTECT/WRPROTECT must be zero), TRANSFER LENGTH within the Block
    /// Limits VPD maximum, and the range on the medium.
    @inline(__always)
    private func checkTransfer(_ r: ReadWriteCDB) throws(SenseData) {
        if r.protect != 0 { throw .invalidFieldInCDB(byte: 1, bit: 7) }
        if r.blocks > limits.maximumTransferLength { throw .invalidFieldInCDB(byte: r.lengthByte) }
        try checkRange(lba: r.lba, blocks: UInt64(r.blocks))
    }

    /// READ(6/10/12/16) (SBC-4 §5.13-5.16): the device's buffer is returned as is.
    func read(_ command: SCSICommand) async throws(SenseData) -> SCSIResult {
        let plan = try readPlan(command)
        if plan.blocks == 0 { return plan.result(ByteBuffer()) }
        return plan.result(try await readBlocks(lba: plan.lba, blocks: plan.blocks))
    }

    /// READ without waiting, for the transport's fast path: the answer when the
    /// device has the data at hand (page cache, memory), nil otherwise. Any
    /// error also returns nil, so that `read` produces the sense data.
    func readImmediately(_ command: SCSICommand) -> SCSIResult? {
        guard let plan = try? readPlan(command) else { return nil }
        if plan.blocks == 0 { return plan.result(ByteBuffer()) }
        let data = device.readIfReady(offset: plan.lba * UInt64(blockSize), length: Int(plan.blocks) * blockSize)
        return data.map(plan.result)
    }

    /// READ with a completion handler, for the transport's callback path: the
    /// data at hand (`readIfReady`) is answered at once, else the device's
    /// `readAsync` answers when its I/O ends, a device error becoming sense
    /// data exactly as in `read` (`SenseData.from`, e.g. MEDIUM ERROR /
    /// UNRECOVERED READ ERROR, SBC-4 §4.18). False, with no effect, when the
    /// CDB fails its checks (so that `read` produces the sense data) or the
    /// device cannot read that way now.
    func readWithCompletion(_ command: SCSICommand, completion: @escaping @Sendable (SCSIResult) -> Void) -> Bool {
        guard let plan = try? readPlan(command) else { return false }
        if plan.blocks == 0 {
            completion(plan.result(ByteBuffer()))
            return true
        }
        let offset = plan.lba * UInt64(blockSize)
        let length = Int(plan.blocks) * blockSize
        if let data = device.readIfReady(offset: offset, length: length) {
            completion(plan.result(data))
            return true
        }
        return device.readAsync(offset: offset, length: length) { result in
            switch result {
            case .success(let data): completion(plan.result(data))
            case .failure(let error): completion(.checkCondition(SenseData.from(error, lba: plan.lba, isWrite: false)))
            }
        }
    }

    /// What a READ transfers: the CDB's blocks, but no more than cover the
    /// Expected Data Transfer Length, since the initiator takes only that
    /// (RFC 7143 §11.4.5.1 overflow); the rest is reported as a residual.
    private struct ReadPlan: Sendable {
        var lba: UInt64
        var blocks: UInt64
        var expected: Int
        var wanted: Int

        func result(_ data: ByteBuffer) -> SCSIResult {
            guard expected < wanted else { return .good(data: data) }
            var data = data
            data.moveWriterIndex(to: data.readerIndex + min(expected, data.readableBytes))
            return SCSIResult(status: .good, dataIn: data, dataInLength: wanted)
        }
    }

    private func readPlan(_ command: SCSICommand) throws(SenseData) -> ReadPlan {
        let r = ReadWriteCDB(command.cdb)
        try checkTransfer(r)
        let wanted = Int(r.blocks) * blockSize
        let expected = Int(command.expectedDataTransferLength)
        let blocks = expected < wanted ? (expected + blockSize - 1) / blockSize : Int(r.blocks)
        return ReadPlan(lba: r.lba, blocks: UInt64(blocks), expected: expected, wanted: wanted)
    }

    /// WRITE(6/10/12/16) (SBC-4 §5.39-5.42); FUA makes the write durable before GOOD.
    func write(_ command: SCSICommand) async throws(SenseData) -> SCSIResult {
        try await writeBlockData(command, forceUnitAccess: ReadWriteCDB(command.cdb).fua)
    }

    /// WRITE AND VERIFY(10/12/16) (SBC-4 §5.43-5.45): the data is written
    /// through to the medium; the verification of what we just wrote is
    /// trivially satisfied by a store that returns what it was given.
    func writeAndVerify(_ command: SCSICommand) async throws(SenseData) -> SCSIResult {
        try await writeBlockData(command, forceUnitAccess: true)
    }

    /// The data phase both share: the whole blocks of Data-Out, written under
    /// the range lock so COMPARE AND WRITE sees them all or none.
    private func writeBlockData(_ command: SCSICommand, forceUnitAccess: Bool) async throws(SenseData) -> SCSIResult {
        let r = ReadWriteCDB(command.cdb)
        try checkTransfer(r)
        let (data, blocks) = blockDataOut(command, blocks: r.blocks)
        if blocks == 0 { return .good }
        let token = await rangeLock.lock(lba: r.lba, blocks: UInt64(blocks))
        defer { rangeLock.unlock(token) }
        try await writeBlocks(lba: r.lba, data: data, fua: forceUnitAccess)
        return .good
    }

    /// VERIFY(10/12/16) (SBC-4 §5.35-5.37): BYTCHK 00b reads the blocks,
    /// 01b compares them with the Data-Out, 11b compares each with one block;
    /// a difference is MISCOMPARE with INFORMATION = offset of the first byte.
    func verify(_ command: SCSICommand) async throws(SenseData) -> SCSIResult {
        let r = ReadWriteCDB(command.cdb)
        let byteCheck = (command.cdb[1] >> 1) & 0x03
        if byteCheck == 2 { throw .invalidFieldInCDB(byte: 1, bit: 2) }
        try checkTransfer(r)
        let expected: ByteBuffer?
        switch byteCheck {
        case 1: expected = try dataOut(command, length: Int(r.blocks) * blockSize)
        case 3: expected = try dataOut(command, length: blockSize)
        default: expected = nil
        }
        if r.blocks == 0 { return .good }
        let medium = try await readBlocks(lba: r.lba, blocks: UInt64(r.blocks))
        guard let expected else { return .good }
        if let offset = firstMismatch(medium, expected, repeating: byteCheck == 3) {
            throw .miscompare(offset: UInt64(offset))
        }
        return .good
    }

    /// COMPARE AND WRITE (SBC-4 §5.3): under the range lock, compares the
    /// first half of the Data-Out with the medium and, when equal, writes the
    /// second half.
    func compareAndWrite(_ command: SCSICommand) async throws(SenseData) -> SCSIResult {
        let cdb = command.cdb
        if cdb[1] >> 5 != 0 { throw .invalidFieldInCDB(byte: 1, bit: 7) }
        let lba = cdb.be64(2)
        let blocks = UInt64(cdb[13])
        if blocks > UInt64(limits.maximumCompareAndWriteLength) { throw .invalidFieldInCDB(byte: 13) }
        try checkRange(lba: lba, blocks: blocks)
        let length = Int(blocks) * blockSize
        // A Data-Out that is not exactly the verify and write instances is an
        // invalid NUMBER OF LOGICAL BLOCKS, as LIO answers it (libiscsi CompareAndWrite.Simple).
        guard Int(command.expectedDataTransferLength) == 2 * length, command.dataOut.readableBytes >= 2 * length,
            let data = command.dataOut.getSlice(at: command.dataOut.readerIndex, length: 2 * length)
        else { throw .invalidFieldInCDB(byte: 13) }
        if blocks == 0 { return .good }
        let verifyData = data.getSlice(at: data.readerIndex, length: length) ?? ByteBuffer()
        let writeData = data.getSlice(at: data.readerIndex + length, length: length) ?? ByteBuffer()

        let token = await rangeLock.lock(lba: lba, blocks: blocks)
        defer { rangeLock.unlock(token) }
        let medium = try await readBlocks(lba: lba, blocks: blocks)
        if let offset = firstMismatch(medium, verifyData, repeating: false) {
            throw .miscompare(offset: UInt64(offset))
        }
        try await writeBlocks(lba: lba, data: writeData, fua: cdb[1] & 0x08 != 0)
        return .good
    }

    /// ORWRITE(16) (SBC-4 §5.10): medium = medium OR Data-Out, atomically
    /// with respect to other writes of the range.
    func orWrite(_ command: SCSICommand) async throws(SenseData) -> SCSIResult {
        let r = ReadWriteCDB(command.cdb)
        try checkTransfer(r)
        let data = try dataOut(command, length: Int(r.blocks) * blockSize)
        if r.blocks == 0 { return .good }
        let token = await rangeLock.lock(lba: r.lba, blocks: UInt64(r.blocks))
        defer { rangeLock.unlock(token) }
        var medium = try await readBlocks(lba: r.lba, blocks: UInt64(r.blocks))
        var result = ByteBufferAllocator().buffer(capacity: data.readableBytes)
        medium.withUnsafeMutableReadableBytes { m in
            data.withUnsafeReadableBytes { d in
                for i in 0..<Swift.min(m.count, d.count) { m[i] |= d[i] }
            }
        }
        result.writeBuffer(&medium)
        try await writeBlocks(lba: r.lba, data: result, fua: r.fua)
        return .good
    }

    /// WRITE SAME(10/16) (SBC-4 §5.47, §5.48): one block of Data-Out (or
    /// zeros with NDOB) written to every block of the range; with UNMAP and a
    /// block of zeros, the range is deallocated instead (reads return zeros, LBPRZ).
    func writeSame(_ command: SCSICommand) async throws(SenseData) -> SCSIResult {
        let cdb = command.cdb
        let sixteen = cdb[0] == Opcode.writeSame16
        if cdb[1] >> 5 != 0 { throw .invalidFieldInCDB(byte: 1, bit: 7) }
        if cdb[1] & 0x10 != 0 { throw .invalidFieldInCDB(byte: 1, bit: 4) }  // ANCHOR: ANC_SUP is 0
        let unmapRequested = cdb[1] & 0x08 != 0
        let noDataOutBuffer = sixteen && cdb[1] & 0x01 != 0
        let lba = sixteen ? cdb.be64(2) : UInt64(cdb.be32(2))
        let blocks = sixteen ? UInt64(cdb.be32(10)) : UInt64(cdb.be16(7))
        let lengthByte = sixteen ? 10 : 7
        try checkRange(lba: lba, blocks: blocks)
        // WSNZ = 0: NUMBER OF LOGICAL BLOCKS 0 means through the last LBA (SBC-4 §5.48).
        let count = blocks == 0 ? blockCount - lba : blocks
        if limits.maximumWriteSameLength != 0 && count > limits.maximumWriteSameLength {
            throw .invalidFieldInCDB(byte: lengthByte)
        }
        if count == 0 { return .good }
        return try await writeSame(command, lba: lba, blocks: count, unmapRequested: unmapRequested,
                                   noDataOutBuffer: noDataOutBuffer)
    }

    /// WRITE SAME over [lba, lba + blocks), in 1 MiB pieces or as one deallocation.
    private func writeSame(
        _ command: SCSICommand, lba: UInt64, blocks: UInt64, unmapRequested: Bool, noDataOutBuffer: Bool
    ) async throws(SenseData) -> SCSIResult {
        var block: ByteBuffer
        if noDataOutBuffer {
            block = ByteBufferAllocator().buffer(capacity: blockSize)
            block.writeRepeatingByte(0, count: blockSize)
        } else {
            block = try dataOut(command, length: blockSize)
        }

        let token = await rangeLock.lock(lba: lba, blocks: blocks)
        defer { rangeLock.unlock(token) }
        // UNMAP set: the range is deallocated whatever the block holds, as LIO
        // does and libiscsi's UnmapUntilEnd expects (SBC-3 §5.45); LBPRZ then
        // makes it read back as zeros.
        if unmapRequested && device.supportsUnmap {
            do {
                try await device.unmap(offset: lba * UInt64(blockSize), length: Int(blocks) * blockSize)
            } catch {
                throw SenseData.from(error, lba: lba, isWrite: true)
            }
            return .good
        }
        let chunkBlocks = Swift.min(blocks, UInt64(Swift.max(1, (1 << 20) / blockSize)))
        var chunk = ByteBufferAllocator().buffer(capacity: Int(chunkBlocks) * blockSize)
        for _ in 0..<chunkBlocks { chunk.writeImmutableBuffer(block) }
        var done: UInt64 = 0
        while done < blocks {
            let n = Swift.min(chunkBlocks, blocks - done)
            let piece = n == chunkBlocks ? chunk : (chunk.getSlice(at: chunk.readerIndex, length: Int(n) * blockSize) ?? chunk)
            try await writeBlocks(lba: lba + done, data: piece, fua: false)
            done += n
        }
        return .good
    }

    // MARK: - Logical block provisioning

    /// UNMAP (SBC-4 §5.32): validates the whole parameter list, then
    /// deallocates each described range.
    func unmap(_ command: SCSICommand) async throws(SenseData) -> SCSIResult {
        let cdb = command.cdb
        if cdb[1] & 0x01 != 0 { throw .invalidFieldInCDB(byte: 1, bit: 0) }  // ANCHOR: ANC_SUP is 0
        let length = Int(cdb.be16(7))
        if length == 0 { return .good }
        if length < 8 { throw .parameterListLengthError }
        let buffer = try dataOut(command, length: length, exact: false)
        let list = buffer.getBytes(at: buffer.readerIndex, length: length) ?? []
        let descriptorBytes = Swift.min(Int(list.be16(2)), length - 8)
        let count = descriptorBytes / 16
        if count > Int(limits.maximumUnmapDescriptors) { throw .invalidFieldInParameterList(byte: 2) }
        var ranges: [(lba: UInt64, blocks: UInt64)] = []
        ranges.reserveCapacity(count)
        for i in 0..<count {
            let at = 8 + 16 * i
            let lba = list.be64(at)
            let blocks = UInt64(list.be32(at + 8))
            if blocks > UInt64(limits.maximumUnmapLBACount) { throw .invalidFieldInParameterList(byte: at + 8) }
            try checkRange(lba: lba, blocks: blocks)
            if blocks > 0 { ranges.append((lba, blocks)) }
        }
        for range in ranges {
            let token = await rangeLock.lock(lba: range.lba, blocks: range.blocks)
            defer { rangeLock.unlock(token) }
            do {
                try await device.unmap(offset: range.lba * UInt64(blockSize), length: Int(range.blocks) * blockSize)
            } catch {
                throw SenseData.from(error, lba: range.lba, isWrite: true)
            }
        }
        return .good
    }

    /// GET LBA STATUS (SBC-4 §5.8): provisioning status descriptors from
    /// STARTING LOGICAL BLOCK ADDRESS on, as many as the allocation length holds.
    func getLBAStatus(_ command: SCSICommand) async throws(SenseData) -> SCSIResult {
        let cdb = command.cdb
        let start = cdb.be64(2)
        let allocation = Int(cdb.be32(10))
        let count = blockCount
        guard start < count else { throw .lbaOutOfRange }
        let window = Swift.min(count - start, 1 << 20)
        let bs = UInt64(blockSize)
        let extents: [AllocationExtent]
        do {
            extents = try await device.allocationStatus(offset: start * bs, length: Int(window * bs))
        } catch {
            throw SenseData.from(error, lba: start, isWrite: false)
        }
        let maxDescriptors = Swift.max(1, (allocation - 8) / 16)
        var runs: [(lba: UInt64, blocks: UInt64, deallocated: Bool)] = []
        var next = start
        for e in extents.sorted(by: { $0.offset < $1.offset }) {
            let lo = Swift.max(e.offset / bs, next)
            let hi = Swift.min((e.offset + e.length) / bs, start + window)
            guard hi > lo else { continue }
            if lo > next { runs.append((next, lo - next, false)) }  // a gap the device left out: mapped
            let deallocated = e.status == .deallocated
            if let last = runs.last, last.deallocated == deallocated, last.lba + last.blocks == lo {
                runs[runs.count - 1].blocks += hi - lo
            } else {
                runs.append((lo, hi - lo, deallocated))
            }
            next = hi
        }
        if runs.isEmpty { runs.append((start, window, false)) }
        var data: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0]
        for run in runs.prefix(maxDescriptors) {
            var d = [UInt8](repeating: 0, count: 16)
            d.put(run.lba, at: 0, width: 8)
            d.put(UInt32(clamping: run.blocks), at: 8, width: 4)
            d[12] = run.deallocated ? 0x01 : 0x00  // PROVISIONING STATUS
            data += d
        }
        data.put(UInt32(data.count - 4), at: 0, width: 4)
        return dataIn(data, allocationLength: allocation)
    }

    // MARK: - Cache and capacity

    /// SYNCHRONIZE CACHE(10/16) (SBC-4 §5.26, §5.27): NUMBER OF LOGICAL BLOCKS
    /// 0 means to the end of the medium; the whole device is flushed.
    func synchronizeCache(_ command: SCSICommand) async throws(SenseData) -> SCSIResult {
        let r = ReadWriteCDB(command.cdb)
        try checkRange(lba: r.lba, blocks: UInt64(r.blocks))
        do {
            try await device.flush()
        } catch {
            throw SenseData.from(error, lba: r.lba, isWrite: true)
        }
        return .good
    }

    /// PRE-FETCH(10/16) (SBC-4 §5.9, §5.10): range-checked; GOOD means the
    /// blocks were not staged in a cache (there is none to stage them in).
    func preFetch(_ command: SCSICommand) throws(SenseData) -> SCSIResult {
        let r = ReadWriteCDB(command.cdb)
        try checkRange(lba: r.lba, blocks: UInt64(r.blocks))
        return .good
    }

    /// READ CAPACITY(10) (SBC-4 §5.20): RETURNED LOGICAL BLOCK ADDRESS capped at FFFFFFFFh.
    func readCapacity10(_ command: SCSICommand) throws(SenseData) -> SCSIResult {
        let cdb = command.cdb
        if cdb[8] & 0x01 == 0 && cdb.be32(2) != 0 { throw .invalidFieldInCDB(byte: 2) }
        var data = [UInt8](repeating: 0, count: 8)
        let last = blockCount == 0 ? 0 : blockCount - 1
        data.put(UInt32(clamping: last), at: 0, width: 4)
        data.put(UInt32(blockSize), at: 4, width: 4)
        return dataIn(data, allocationLength: 8)
    }

    /// READ CAPACITY(16) (SBC-4 §5.21): LBPME and LBPRZ with unmap support.
    func readCapacity16(_ command: SCSICommand) throws(SenseData) -> SCSIResult {
        let cdb = command.cdb
        if cdb[14] & 0x01 == 0 && cdb.be64(2) != 0 { throw .invalidFieldInCDB(byte: 2) }
        let allocation = Int(cdb.be32(10))
        var data = [UInt8](repeating: 0, count: 32)
        data.put(blockCount == 0 ? 0 : blockCount - 1, at: 0, width: 8)
        data.put(UInt32(blockSize), at: 8, width: 4)
        // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT: images live on 4 KiB pages and
        // sectors, so initiators that align to it avoid read-modify-write under O_DIRECT.
        data[13] = UInt8(physicalBlockExponent)
        if supportsUnmap { data[14] = 0x80 | 0x40 }  // LBPME, LBPRZ
        return dataIn(data, allocationLength: allocation)
    }

    /// READ DEFECT DATA(10/12) (SBC-4 §5.17, §5.18): an empty defect list in
    /// the requested format.
    func readDefectData(_ command: SCSICommand) -> SCSIResult {
        let cdb = command.cdb
        if cdb[0] == Opcode.readDefectData10 {
            return dataIn([0, cdb[2] & 0x1F, 0, 0], allocationLength: Int(cdb.be16(7)))
        }
        return dataIn([0, cdb[1] & 0x1F, 0, 0, 0, 0, 0, 0], allocationLength: Int(cdb.be32(6)))
    }
}

/// Offset of the first byte where `medium` differs from `expected` (or, with
/// `repeating`, from `expected` repeated for every block), nil when equal.
func firstMismatch(_ medium: ByteBuffer, _ expected: ByteBuffer, repeating: Bool) -> Int? {
    medium.withUnsafeReadableBytes { m -> Int? in
        expected.withUnsafeReadableBytes { e -> Int? in
            guard !e.isEmpty else { return nil }
            if !repeating {
                let n = Swift.min(m.count, e.count)
                if n > 0, let mb = m.baseAddress, let eb = e.baseAddress, memcmp(mb, eb, n) == 0 { return nil }
                for i in 0..<n where m[i] != e[i] { return i }
                return nil
            }
            for i in 0..<m.count where m[i] != e[i % e.count] { return i }
            return nil
        }
    }
}
