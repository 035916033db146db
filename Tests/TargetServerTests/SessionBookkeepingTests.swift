import ISCSIProtocol
import NIOCore
import Testing

@testable import TargetServer

@Suite("Command window (RFC 7143 §4.2.2.1)")
struct CommandWindowTests {
    @Test("in-order commands advance ExpCmdSN; MaxCmdSN tracks outstanding commands")
    func inOrder() {
        var w = CommandWindow(initialCmdSN: 10, size: 4)
        #expect(w.maxCmdSN == 13)
        #expect(w.received(cmdSN: 10, immediate: false) == .deliver)
        #expect(w.received(cmdSN: 11, immediate: false) == .deliver)
        #expect(w.expCmdSN == 12)
        // Two outstanding: the window does not move forward yet.
        #expect(w.maxCmdSN == 13)
        w.completed()
        #expect(w.maxCmdSN == 14)
    }

    @Test("CmdSN above MaxCmdSN or below ExpCmdSN is ignored")
    func outside() {
        var w = CommandWindow(initialCmdSN: 1, size: 8)
        #expect(w.received(cmdSN: 9, immediate: false) == .ignore)
        #expect(w.received(cmdSN: 0, immediate: false) == .ignore)
        #expect(w.received(cmdSN: 1, immediate: false) == .deliver)
        #expect(w.received(cmdSN: 1, immediate: false) == .ignore)
    }

    @Test("a command after a gap is held until the gap fills")
    func gap() {
        var w = CommandWindow(initialCmdSN: 5, size: 8)
        #expect(w.received(cmdSN: 7, immediate: false) == .hold)
        #expect(w.received(cmdSN: 6, immediate: false) == .hold)
        #expect(w.nextHeld() == nil)
        #expect(w.received(cmdSN: 5, immediate: false) == .deliver)
        #expect(w.nextHeld() == 6)
        #expect(w.nextHeld() == 7)
        #expect(w.nextHeld() == nil)
        #expect(w.expCmdSN == 8)
    }

    @Test("immediate commands do not advance ExpCmdSN")
    func immediate() {
        var w = CommandWindow(initialCmdSN: 3, size: 8)
        #expect(w.received(cmdSN: 3, immediate: true) == .deliver)
        #expect(w.expCmdSN == 3)
    }

    @Test("serial arithmetic wraps around 2^32")
    func wrap() {
        var w = CommandWindow(initialCmdSN: 0xFFFF_FFFE, size: 4)
        #expect(w.received(cmdSN: 0xFFFF_FFFE, immediate: false) == .deliver)
        #expect(w.received(cmdSN: 0xFFFF_FFFF, immediate: false) == .deliver)
        #expect(w.received(cmdSN: 0, immediate: false) == .deliver)
        #expect(w.expCmdSN == 1)
        #expect(SerialNumber.lessThan(0xFFFF_FFFF, 0))
    }
}

@Suite("Data-Out assembly (RFC 7143 §4.2.2.3, §11.7, §11.8)")
struct DataOutAssemblerTests {
    private let limits = DataOutAssembler.Limits(
        firstBurstLength: 8192, maxBurstLength: 16384, maxOutstandingR2T: 1, initialR2T: false, dataPDUInOrder: true)

    private func dataOut(ttt: UInt32, dataSN: UInt32, offset: Int, count: Int, final: Bool = false) -> DataOutPDU {
        DataOutPDU(
            final: final, lun: 0, initiatorTaskTag: 1, targetTransferTag: ttt, expStatSN: 0, dataSN: dataSN,
            bufferOffset: UInt32(offset), data: ByteBuffer(repeating: UInt8(offset & 0xFF), count: count))
    }

    @Test("immediate + unsolicited + solicited data assemble in place")
    func fullSequence() throws {
        var a = try DataOutAssembler(
            expectedLength: 40000, immediateData: ByteBuffer(repeating: 0, count: 4096), final: false, limits: limits,
            allocator: ByteBufferAllocator())
        // Unsolicited data still open: no R2T yet.
        var tag: UInt32 = 100
        #expect(a.nextR2Ts { tag += 1; return tag }.isEmpty)
        try a.receive(dataOut(ttt: 0xFFFF_FFFF, dataSN: 0, offset: 4096, count: 4096, final: true))
        let first = a.nextR2Ts { tag += 1; return tag }
        #expect(first == [.init(r2tSN: 0, targetTransferTag: 101, offset: 8192, length: 16384)])
        try a.receive(dataOut(ttt: 101, dataSN: 0, offset: 8192, count: 8192))
        try a.receive(dataOut(ttt: 101, dataSN: 1, offset: 16384, count: 8192, final: true))
        let second = a.nextR2Ts { tag += 1; return tag }
        #expect(second == [.init(r2tSN: 1, targetTransferTag: 102, offset: 24576, length: 15424)])
        try a.receive(dataOut(ttt: 102, dataSN: 0, offset: 24576, count: 15424, final: true))
        #expect(a.isComplete)
        #expect(a.assembled.readableBytes == 40000)
        #expect(a.assembled.getInteger(at: 8192, as: UInt8.self) == UInt8(8192 & 0xFF))
    }

    @Test("a wrong DataSN is a violation")
    func wrongDataSN() throws {
        var a = try DataOutAssembler(
            expectedLength: 1024, immediateData: ByteBuffer(), final: true, limits: limits, allocator: ByteBufferAllocator())
        _ = a.nextR2Ts { 5 }
        #expect(throws: DataOutAssembler.Violation.self) { try a.receive(dataOut(ttt: 5, dataSN: 27, offset: 0, count: 512)) }
    }

    @Test("data beyond the R2T, beyond EDTL, or unsolicited past FirstBurstLength is a violation")
    func limitsEnforced() throws {
        var a = try DataOutAssembler(
            expectedLength: 20000, immediateData: ByteBuffer(), final: false, limits: limits, allocator: ByteBufferAllocator())
        #expect(throws: DataOutAssembler.Violation.self) {
            try a.receive(dataOut(ttt: 0xFFFF_FFFF, dataSN: 0, offset: 0, count: 9000))
        }
        var b = try DataOutAssembler(
            expectedLength: 1000, immediateData: ByteBuffer(), final: true, limits: limits, allocator: ByteBufferAllocator())
        _ = b.nextR2Ts { 9 }
        #expect(throws: DataOutAssembler.Violation.self) { try b.receive(dataOut(ttt: 9, dataSN: 0, offset: 0, count: 1004)) }
        #expect(throws: DataOutAssembler.Violation.self) {
            try DataOutAssembler(
                expectedLength: 100, immediateData: ByteBuffer(repeating: 0, count: 200), final: true, limits: limits,
                allocator: ByteBufferAllocator())
        }
    }

    @Test("R2Ts stay within the connection's budget and resume when it frees up")
    func budget() throws {
        var a = try DataOutAssembler(
            expectedLength: 48 * 1024, immediateData: ByteBuffer(), final: true,
            limits: .init(firstBurstLength: 8192, maxBurstLength: 16384, maxOutstandingR2T: 2, initialR2T: false,
                          dataPDUInOrder: true),
            allocator: ByteBufferAllocator())
        var tag: UInt32 = 0
        #expect(a.nextR2Ts(budget: 10000) { tag += 1; return tag }.isEmpty)
        #expect(a.needsR2T)
        let first = a.nextR2Ts(budget: 20000) { tag += 1; return tag }
        #expect(first.count == 1)
        #expect(a.solicitedBytes == 16384)
        let rest = a.nextR2Ts(budget: .max) { tag += 1; return tag }
        #expect(rest.map(\.offset) == [16384])
        #expect(!a.needsR2T)
    }

    @Test("InitialR2T=Yes forbids unsolicited Data-Out")
    func initialR2T() {
        var strict = limits
        strict.initialR2T = true
        #expect(throws: DataOutAssembler.Violation.self) {
            try DataOutAssembler(
                expectedLength: 100, immediateData: ByteBuffer(), final: false, limits: strict, allocator: ByteBufferAllocator())
        }
    }

    @Test("LUN fields decode in peripheral and flat addressing (SAM-5 §4.7)")
    func luns() {
        #expect(decodeLUN(0x0001_0000_0000_0000) == 1)
        #expect(decodeLUN(0x4123_0000_0000_0000) == 0x123)
        #expect(decodeLUN(encodeLUN(300)) == 300)
        #expect(decodeLUN(encodeLUN(7)) == 7)
    }
}

/// Peripheral addressing below 256, flat above (SAM-5 §4.7), for building LUN fields in tests.
private func encodeLUN(_ lun: UInt64) -> UInt64 {
    lun < 256 ? lun << 48 : ((0x4000 | (lun & 0x3FFF)) << 48)
}
