import Foundation
import Synchronization

/// What initiators did with one logical unit since it was added: media reads and writes, and when the last of
/// them arrived. Shown by `livemount status`; an archive policy finds idle LUNs with it. Commands that do not
/// touch the medium (TEST UNIT READY, INQUIRY, REPORT LUNS and the like, which initiators send to idle LUNs
/// all the time) do not count as access.
public final class LUNUsage: Sendable {
    /// A copy of the counters at one moment.
    public struct Snapshot: Sendable, Equatable {
        /// READ(6/10/12/16) commands (SBC-4 §5.13-5.16).
        public var reads: UInt64
        /// Commands that modify the medium: WRITE, WRITE AND VERIFY, WRITE SAME, UNMAP, COMPARE AND WRITE.
        public var writes: UInt64
        /// When the last read or write arrived; nil if none has since the LUN was added.
        public var lastAccess: Date?
        /// When counting began (the LUN was added, or the daemon started).
        public var since: Date

        /// The last access, or when counting began if there was none: what an idle time is measured from.
        public var idleSince: Date { lastAccess ?? since }
    }

    /// When counting began.
    public let since = Date()

    private let reads = Atomic<UInt64>(0)
    private let writes = Atomic<UInt64>(0)
    /// Milliseconds since 1970 of the last access; 0 = never.
    private let lastAccessMilliseconds = Atomic<Int64>(0)

    init() {}

    /// Counts `opcode` if it reads or writes the medium.
    func note(opcode: UInt8) {
        switch opcode {
        case Opcode.read6, Opcode.read10, Opcode.read12, Opcode.read16:
            reads.add(1, ordering: .relaxed)
        case Opcode.write6, Opcode.write10, Opcode.write12, Opcode.write16, Opcode.writeAndVerify10,
            Opcode.writeAndVerify12, Opcode.writeAndVerify16, Opcode.writeSame10, Opcode.writeSame16, Opcode.unmap,
            Opcode.compareAndWrite:
            writes.add(1, ordering: .relaxed)
        default:
            return
        }
        lastAccessMilliseconds.store(Int64(Date().timeIntervalSince1970 * 1000), ordering: .relaxed)
    }

    public var snapshot: Snapshot {
        let last = lastAccessMilliseconds.load(ordering: .relaxed)
        return Snapshot(
            reads: reads.load(ordering: .relaxed), writes: writes.load(ordering: .relaxed),
            lastAccess: last == 0 ? nil : Date(timeIntervalSince1970: Double(last) / 1000), since: since)
    }
}
