import Foundation
import NIOCore
import Testing

@testable import SCSI

// MARK: - Helpers

private let target = "iqn.2024-01.io.livemount:t1"
private let initiatorA = "iqn.1994-05.com.redhat:alpha"
private let initiatorB = "iqn.1994-05.com.redhat:beta"

private func nexus(_ name: String, isid: UInt64 = 0x23D0_0000_0001, tpgt: UInt16 = 1) -> ITNexus {
    ITNexus(initiatorName: name, isid: isid, targetName: target, portalGroupTag: tpgt)
}

private let a = nexus(initiatorA)
private let b = nexus(initiatorB)
/// Same initiator name as `a`, another ISID: a second path (MultipathIO).
private let a2 = nexus(initiatorA, isid: 0x23D0_0000_0002)

private let read10: [UInt8] = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0]
private let write10: [UInt8] = [0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0]
private let inquiry: [UInt8] = [0x12, 0, 0, 0, 36, 0]
private let modeSense6: [UInt8] = [0x1A, 0, 0x3F, 0, 192, 0]
private let reserve6: [UInt8] = [0x16, 0, 0, 0, 0, 0]
private let release6: [UInt8] = [0x17, 0, 0, 0, 0, 0]

private func be64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * $0)) } }


private func be64(_ b: [UInt8], _ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 << 8 | UInt64(b[at + $1]) } }

enum PRKind: UInt8 {
    case we = 1, ea = 3, wero = 5, earo = 6, wear = 7, eaar = 8
}

/// Drives one ReservationManager the way the SCSI core does.
private struct PR {
    let manager: ReservationManager

    init(directory: String? = nil) throws {
        manager = try ReservationManager(lunKey: target + "/0", stateDirectory: directory)
    }

    @discardableResult
    func out(
        _ action: UInt8, from n: ITNexus, key: UInt64 = 0, sark: UInt64 = 0, type: PRKind? = nil, flags: UInt8 = 0,
        extra: [UInt8] = [], listLength: Int? = nil
    ) -> (SCSIResult, [UnitAttentionRequest]) {
        var params = be64(key) + be64(sark) + [0, 0, 0, 0, flags, 0, 0, 0]
        params += extra
        let length = UInt32(listLength ?? params.count)
        let cdb: [UInt8] = [
            0x5F, action, type?.rawValue ?? 0, 0, 0, UInt8(length >> 24), UInt8((length >> 16) & 0xFF),
            UInt8((length >> 8) & 0xFF), UInt8(length & 0xFF), 0,
        ]
        return manager.persistentReserveOut(cdb: cdb, parameters: ByteBuffer(bytes: params), nexus: n)
    }

    func status(
        _ action: UInt8, from n: ITNexus, key: UInt64 = 0, sark: UInt64 = 0, type: PRKind? = nil, flags: UInt8 = 0
    )
        -> SCSIStatus
    {
        out(action, from: n, key: key, sark: sark, type: type, flags: flags).0.status
    }

    func register(_ n: ITNexus, _ key: UInt64) { #expect(status(6, from: n, sark: key) == .good) }

    func prIn(_ action: UInt8, from n: ITNexus = a, allocation: UInt16 = 8192) -> SCSIResult {
        manager.persistentReserveIn(
            cdb: [0x5E, action, 0, 0, 0, 0, 0, UInt8(allocation >> 8), UInt8(allocation & 0xFF), 0], nexus: n)
    }

    func data(_ action: UInt8, from n: ITNexus = a, allocation: UInt16 = 8192) -> [UInt8] {
        let r = prIn(action, from: n, allocation: allocation)
        #expect(r.status == .good)
        guard var buffer = r.dataIn else { return [] }
        return buffer.readBytes(length: buffer.readableBytes) ?? []
    }

    func keys() -> [UInt64] {
        let d = data(0)
        let count = Int(be32(d, 4)) / 8
        return (0..<count).map { be64(d, 8 + 8 * $0) }
    }

    func generation() -> UInt32 { be32(data(0), 0) }

    /// (key, type) of the reservation, nil when there is none.
    func reservation() -> (UInt64, UInt8)? {
        let d = data(1)
        guard be32(d, 4) == 16 else { return nil }
        return (be64(d, 8), d[21] & 0x0F)
    }
}

private func makeTemporaryDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "reservations-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

// MARK: - Tests

@Suite("Persistent reservations")
struct ReservationTests {
    @Test("REGISTER and READ KEYS: keys, generation, re-register conflicts, unregister")
    func registerAndReadKeys() throws {
        let pr = try PR()
        #expect(pr.keys() == [])
        #expect(pr.generation() == 0)
        #expect(pr.status(0, from: a, sark: 0x1111) == .good)
        #expect(pr.keys() == [0x1111])
        #expect(pr.generation() == 1)
        // REGISTER again with a wrong RESERVATION KEY: conflict, no generation bump.
        #expect(pr.status(0, from: a, key: 0, sark: 0x1112) == .reservationConflict)
        #expect(pr.generation() == 1)
        // Change the key with the right one.
        #expect(pr.status(0, from: a, key: 0x1111, sark: 0x2222) == .good)
        #expect(pr.keys() == [0x2222])
        // An unregistered nexus registering with a non-zero RESERVATION KEY conflicts.
        #expect(pr.status(0, from: b, key: 5, sark: 0x3333) == .reservationConflict)
        // Unregister; unregistering again (SARK 0 while unregistered) is GOOD and changes nothing.
        #expect(pr.status(0, from: a, key: 0x2222, sark: 0) == .good)
        #expect(pr.keys() == [])
        let generation = pr.generation()
        #expect(pr.status(0, from: a, sark: 0) == .good)
        #expect(pr.generation() == generation)
    }

    @Test("READ KEYS honours the allocation length but reports the full ADDITIONAL LENGTH")
    func readKeysTruncated() throws {
        let pr = try PR()
        pr.register(a, 1)
        pr.register(b, 2)
        let d = pr.data(0, allocation: 8)
        #expect(d.count == 8)
        #expect(be32(d, 4) == 16)
    }

    @Test("PERSISTENT RESERVE IN service actions 0-3 work, 4-1Fh get INVALID FIELD IN CDB")
    func prInServiceActionRange() throws {
        let pr = try PR()
        for action in UInt8(0)...3 { #expect(pr.prIn(action).status == .good) }
        for action in UInt8(4)...0x1F {
            let r = pr.prIn(action)
            #expect(r.status == .checkCondition)
            #expect(r.sense?.key == .illegalRequest)
            #expect(r.sense?.asc == 0x24)
        }
    }

    @Test("REPORT CAPABILITIES advertises every type, CRH, SIP_C, ATP_C, PTPL_C, TMV and PTPL_A")
    func reportCapabilities() throws {
        let pr = try PR()
        var d = pr.data(2)
        #expect(d.count == 8)
        #expect(d[0] == 0 && d[1] == 8)
        #expect(d[2] == 0x1D)
        #expect(d[3] & 0x80 != 0)
        #expect((d[3] >> 4) & 0x07 <= 5)
        #expect(d[3] & 0x01 == 0)
        #expect(d[4] == 0xEA && d[5] == 0x01)
        // APTPL=1 on REGISTER makes PTPL_A 1.
        #expect(pr.status(6, from: a, sark: 9, flags: 0x01) == .good)
        d = pr.data(2)
        #expect(d[3] & 0x01 == 1)
    }

    @Test("every reservation type can be reserved, read back, and released by its holder")
    func reserveEveryType() throws {
        let pr = try PR()
        pr.register(a, 0xAA)
        for kind in [PRKind.we, .ea, .wero, .earo, .wear, .eaar] {
            #expect(pr.status(1, from: a, key: 0xAA, type: kind) == .good)
            let res = try #require(pr.reservation())
            #expect(res.1 == kind.rawValue)
            // All-registrants types report a zero key (SPC-4 §6.15.3).
            #expect(res.0 == ((kind == .wear || kind == .eaar) ? 0 : 0xAA))
            // Reserving again with the same type is GOOD; with another type, a conflict.
            #expect(pr.status(1, from: a, key: 0xAA, type: kind) == .good)
            #expect(pr.status(1, from: a, key: 0xAA, type: kind == .we ? .ea : .we) == .reservationConflict)
            #expect(pr.status(2, from: a, key: 0xAA, type: kind) == .good)
            #expect(pr.reservation() == nil)
        }
        // RESERVE and RELEASE do not change PRGENERATION.
        #expect(pr.generation() == 1)
    }

    @Test("RESERVE needs a registration with the right key, LU scope and a valid type")
    func reserveChecks() throws {
        let pr = try PR()
        #expect(pr.status(1, from: a, key: 0xAA, type: .we) == .reservationConflict)
        pr.register(a, 0xAA)
        #expect(pr.status(1, from: a, key: 0xAB, type: .we) == .reservationConflict)
        let badType = pr.manager.persistentReserveOut(
            cdb: [0x5F, 1, 0x02, 0, 0, 0, 0, 0, 24, 0],
            parameters: ByteBuffer(bytes: be64(0xAA) + [UInt8](repeating: 0, count: 16)),
            nexus: a)
        #expect(badType.0.sense?.asc == 0x24)
        let badScope = pr.manager.persistentReserveOut(
            cdb: [0x5F, 1, 0x21, 0, 0, 0, 0, 0, 24, 0],
            parameters: ByteBuffer(bytes: be64(0xAA) + [UInt8](repeating: 0, count: 16)),
            nexus: a)
        #expect(badScope.0.sense?.asc == 0x24)
        // Another registrant cannot take a reservation that is held.
        pr.register(b, 0xBB)
        #expect(pr.status(1, from: a, key: 0xAA, type: .ea) == .good)
        #expect(pr.status(1, from: b, key: 0xBB, type: .ea) == .reservationConflict)
    }

    @Test("parameter list length must be 24 without SPEC_I_PT; the data must all be there")
    func parameterListLength() throws {
        let pr = try PR()
        let short = pr.out(6, from: a, sark: 1, listLength: 23)
        #expect(short.0.sense == SenseData(key: .illegalRequest, asc: 0x1A, ascq: 0))
        let long = pr.out(6, from: a, sark: 1, extra: [0, 0, 0, 0])
        #expect(long.0.sense == SenseData(key: .illegalRequest, asc: 0x1A, ascq: 0))
        #expect(long.0.dataOutLength == 28)
        let missing = pr.out(6, from: a, sark: 1, listLength: 40)
        #expect(missing.0.sense?.asc == 0x1A)
        #expect(pr.keys() == [])
        let badAction = pr.out(8, from: a, sark: 1)
        #expect(badAction.0.sense?.asc == 0x24)
    }

    /// The access matrix of libiscsi's ProutReserve.Access* tests: (registered
    /// read, registered write, unregistered read, unregistered write) for a non-holder.
    @Test(
        "conflict table: access of a non-holder by reservation type",
        arguments: [
            (PRKind.ea, [false, false, false, false]),
            (PRKind.we, [true, false, true, false]),
            (PRKind.earo, [true, true, false, false]),
            (PRKind.wero, [true, true, true, false]),
            (PRKind.eaar, [true, true, false, false]),
            (PRKind.wear, [true, true, true, false]),
        ])
    func accessMatrix(kind: PRKind, expected: [Bool]) throws {
        let pr = try PR()
        pr.register(a, 0xA)
        pr.register(b, 0xB)
        #expect(pr.status(1, from: a, key: 0xA, type: kind) == .good)
        // The holder may do anything.
        #expect(!pr.manager.conflicts(cdb: read10, nexus: a))
        #expect(!pr.manager.conflicts(cdb: write10, nexus: a))
        #expect(pr.manager.conflicts(cdb: read10, nexus: b) == !expected[0])
        #expect(pr.manager.conflicts(cdb: write10, nexus: b) == !expected[1])
        #expect(pr.status(0, from: b, key: 0xB, sark: 0) == .good)
        #expect(pr.manager.conflicts(cdb: read10, nexus: b) == !expected[2])
        #expect(pr.manager.conflicts(cdb: write10, nexus: b) == !expected[3])
        // Commands SPC-4 allows under every reservation.
        let allowed: [[UInt8]] = [
            inquiry, testUnitReady, [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], [0x5E, 0, 0, 0, 0, 0, 0, 0, 8, 0],
        ]
        for cdb in allowed {
            #expect(!pr.manager.conflicts(cdb: cdb, nexus: b))
        }
        // MODE SENSE conflicts like a write (SPC-4 table 66).
        #expect(pr.manager.conflicts(cdb: modeSense6, nexus: b) == !expected[3])
    }

    @Test("a second path (another ISID) of the holder's initiator is another I_T nexus")
    func multipathNexuses() throws {
        let pr = try PR()
        pr.register(a, 0xA)
        #expect(pr.status(1, from: a, key: 0xA, type: .ea) == .good)
        #expect(pr.manager.conflicts(cdb: read10, nexus: a2))
        // Registering the second path with the same key lets it share an RO reservation.
        #expect(pr.status(2, from: a, key: 0xA, type: .ea) == .good)
        pr.register(a2, 0xA)
        #expect(pr.status(1, from: a, key: 0xA, type: .earo) == .good)
        #expect(!pr.manager.conflicts(cdb: write10, nexus: a2))
        #expect(pr.manager.conflicts(cdb: write10, nexus: b))
        // ALL_TG_PT: a registration through every target port covers a nexus on another portal group.
        #expect(pr.status(6, from: b, sark: 0xB, flags: 0x04) == .good)
        #expect(!pr.manager.conflicts(cdb: write10, nexus: nexus(initiatorB, tpgt: 2)))
    }

    @Test("ownership: the holder unregistering releases WE/EA/RO; AR reservations stay with the other registrants")
    func ownership() throws {
        for (kind, shared) in [
            (PRKind.ea, false), (.we, false), (.earo, false), (.wero, false), (.eaar, true), (.wear, true),
        ] {
            let pr = try PR()
            pr.register(a, 1)
            pr.register(b, 2)
            #expect(pr.status(1, from: a, key: 1, type: kind) == .good)
            let (result, attentions) = pr.out(0, from: a, key: 1, sark: 0)
            #expect(result.status == .good)
            if shared {
                #expect(pr.reservation()?.1 == kind.rawValue)
                #expect(attentions.isEmpty)
                #expect(pr.status(2, from: b, key: 2, type: kind) == .good)
            } else {
                #expect(pr.reservation() == nil)
                // RO reservations released this way tell the other registrants (SPC-4 §5.9.11.3).
                let expectUA = kind == .earo || kind == .wero
                #expect(attentions.map(\.nexus) == (expectUA ? [b] : []))
                if expectUA {
                    #expect(attentions.first?.sense == SenseData(key: .unitAttention, asc: 0x2A, ascq: 0x04))
                }
            }
            #expect(pr.reservation() == nil)
        }
    }

    @Test(
        "RELEASE: non-holders get GOOD with no effect, a wrong type is INVALID RELEASE, RO/AR release tells registrants"
    )
    func release() throws {
        let pr = try PR()
        pr.register(a, 1)
        pr.register(b, 2)
        #expect(pr.status(1, from: a, key: 1, type: .wero) == .good)
        #expect(pr.status(2, from: b, key: 2, type: .wero) == .good)
        #expect(pr.reservation() != nil)
        #expect(pr.status(2, from: b, key: 3, type: .wero) == .reservationConflict)
        let wrongType = pr.out(2, from: a, key: 1, type: .we)
        #expect(wrongType.0.sense == SenseData(key: .illegalRequest, asc: 0x26, ascq: 0x04))
        let (released, attentions) = pr.out(2, from: a, key: 1, type: .wero)
        #expect(released.status == .good)
        #expect(attentions.map(\.nexus) == [b])
        #expect(attentions.first?.sense.ascq == 0x04)
        // Releasing with no reservation is GOOD.
        #expect(pr.status(2, from: a, key: 1, type: .wero) == .good)
    }

    @Test("CLEAR removes everything, bumps PRGENERATION once and preempts the other registrants")
    func clear() throws {
        let pr = try PR()
        pr.register(a, 1)
        pr.register(b, 2)
        let generation = pr.generation()
        #expect(pr.status(1, from: a, key: 1, type: .ea) == .good)
        #expect(pr.status(3, from: b, key: 9) == .reservationConflict)
        let (result, attentions) = pr.out(3, from: b, key: 2)
        #expect(result.status == .good)
        #expect(pr.keys() == [])
        #expect(pr.reservation() == nil)
        #expect(pr.generation() == generation + 1)
        #expect(attentions.map(\.nexus) == [a])
        #expect(attentions.first?.sense == SenseData(key: .unitAttention, asc: 0x2A, ascq: 0x03))
    }

    @Test("PREEMPT without a reservation removes the named registrations (libiscsi ProutPreempt)")
    func preemptRegistrations() throws {
        let pr = try PR()
        pr.register(a, 1)
        pr.register(b, 2)
        let generation = pr.generation()
        let (result, attentions) = pr.out(4, from: b, key: 2, sark: 1, type: .ea)
        #expect(result.status == .good)
        #expect(pr.keys() == [2])
        #expect(pr.generation() == generation + 1)
        #expect(attentions.map(\.nexus) == [a])
        #expect(attentions.first?.sense == SenseData(key: .unitAttention, asc: 0x2A, ascq: 0x05))
        // A key nobody holds: conflict. SARK zero without a reservation: INVALID FIELD IN PARAMETER LIST.
        #expect(pr.status(4, from: b, key: 2, sark: 77, type: .ea) == .reservationConflict)
        #expect(pr.out(4, from: b, key: 2, sark: 0, type: .ea).0.sense?.asc == 0x26)
        #expect(pr.status(4, from: a, key: 1, sark: 2, type: .ea) == .reservationConflict)
    }

    @Test("PREEMPT of the holder moves the reservation, with REGISTRATIONS PREEMPTED and RESERVATIONS RELEASED")
    func preemptHolder() throws {
        let pr = try PR()
        let c = nexus("iqn.1994-05.com.redhat:gamma")
        pr.register(a, 1)
        pr.register(b, 2)
        pr.register(c, 3)
        #expect(pr.status(1, from: a, key: 1, type: .we) == .good)
        let (result, attentions) = pr.out(5, from: b, key: 2, sark: 1, type: .ea)
        #expect(result.status == .good)
        #expect(pr.keys() == [2, 3])
        let res = try #require(pr.reservation())
        #expect(res == (2, PRKind.ea.rawValue))
        #expect(attentions.contains { $0.nexus == a && $0.sense.ascq == 0x05 })
        #expect(attentions.contains { $0.nexus == c && $0.sense.ascq == 0x04 })
        #expect(!attentions.contains { $0.nexus == b })
        // SARK zero with a holder-type reservation is an error.
        #expect(pr.out(4, from: c, key: 3, sark: 0, type: .ea).0.sense?.asc == 0x26)
    }

    @Test("PREEMPT of an all-registrants reservation with SARK zero removes everyone else")
    func preemptAllRegistrants() throws {
        let pr = try PR()
        pr.register(a, 1)
        pr.register(b, 2)
        #expect(pr.status(1, from: a, key: 1, type: .wear) == .good)
        let (result, attentions) = pr.out(4, from: b, key: 2, sark: 0, type: .we)
        #expect(result.status == .good)
        #expect(pr.keys() == [2])
        #expect(pr.reservation()?.1 == PRKind.we.rawValue)
        #expect(attentions.map(\.nexus) == [a])
    }

    @Test("SPEC_I_PT registers the TransportIDs given; READ FULL STATUS reports them in iSCSI format")
    func specifyInitiatorPortsAndFullStatus() throws {
        let pr = try PR()
        let withISID = ISCSITransportID(initiatorName: initiatorB, isid: 0x23D0_0000_0009).bytes
        let nameOnly = ISCSITransportID(initiatorName: "iqn.1994-05.com.redhat:gamma", isid: nil).bytes
        let ids = withISID + nameOnly
        let length = UInt32(ids.count)
        let extra =
            [UInt8(length >> 24), UInt8((length >> 16) & 0xFF), UInt8((length >> 8) & 0xFF), UInt8(length & 0xFF)] + ids
        #expect(pr.out(0, from: a, sark: 0x55, flags: 0x08, extra: extra).0.status == .good)
        #expect(pr.keys() == [0x55, 0x55, 0x55])
        #expect(!pr.manager.conflicts(cdb: write10, nexus: nexus("iqn.1994-05.com.redhat:gamma", isid: 42)))
        #expect(pr.status(1, from: nexus(initiatorB, isid: 0x23D0_0000_0009), key: 0x55, type: .ea) == .good)

        let d = pr.data(3)
        #expect(be32(d, 4) == UInt32(d.count - 8))
        var offset = 8
        var names: [String] = []
        var holders = 0
        while offset < d.count {
            #expect(be64(d, offset) == 0x55)
            if d[offset + 12] & 0x01 != 0 {
                holders += 1
                #expect(d[offset + 13] == PRKind.ea.rawValue)
            }
            let idLength = Int(be32(d, offset + 20))
            let id = Array(d[(offset + 24)..<(offset + 24 + idLength)])
            #expect(id[0] & 0x0F == 0x05)
            let decoded = try #require(ISCSITransportID.decode(id[...]))
            names.append(decoded.0.initiatorName + (decoded.0.isid.map { ",\($0)" } ?? ""))
            offset += 24 + idLength
        }
        #expect(holders == 1)
        #expect(
            names == [
                initiatorA + ",\(0x23D0_0000_0001 as UInt64)", initiatorB + ",\(0x23D0_0000_0009 as UInt64)",
                "iqn.1994-05.com.redhat:gamma",
            ])
        // SPEC_I_PT from a registered nexus, or with another service action, is refused.
        #expect(pr.out(0, from: a, key: 0x55, sark: 0x56, flags: 0x08, extra: [0, 0, 0, 0]).0.sense?.asc == 0x26)
    }

    @Test("TransportIDs encode to a multiple of four and decode back; garbage is refused")
    func transportIDs() {
        for id in [
            ISCSITransportID(initiatorName: "iqn.x:y", isid: 0x8000_1234_5678),
            ISCSITransportID(initiatorName: "iqn.2024-01.io.livemount:a-much-longer-initiator-name", isid: nil),
        ] {
            let bytes = id.bytes
            #expect(bytes.count % 4 == 0 && bytes.count >= 24)
            let decoded = ISCSITransportID.decode(bytes[...])
            #expect(decoded?.0 == id)
            #expect(decoded?.1 == bytes.count)
        }
        #expect(ISCSITransportID.decode([0x41, 0, 0, 4, 0x61, 0, 0, 0][...]) == nil)  // format 01b without an ISID
        #expect(ISCSITransportID.decode([0x06, 0, 0, 4, 0x61, 0, 0, 0][...]) == nil)  // not iSCSI
        #expect(ISCSITransportID.decode([0x05, 0, 0, 8, 0x61][...]) == nil)  // truncated
    }

    @Test("REGISTER AND MOVE hands the reservation to another I_T nexus")
    func registerAndMove() throws {
        let pr = try PR()
        pr.register(a, 1)
        #expect(pr.status(1, from: a, key: 1, type: .we) == .good)
        let id = ISCSITransportID(initiatorName: initiatorB, isid: b.isid).bytes
        let length = UInt32(id.count)
        var params = be64(1) + be64(0xB0) + [0, 0x02, 0, 1]
        params += [
            UInt8(length >> 24), UInt8((length >> 16) & 0xFF), UInt8((length >> 8) & 0xFF), UInt8(length & 0xFF),
        ]
        params += id
        let cdb: [UInt8] = [0x5F, 7, 0x01, 0, 0, 0, 0, 0, UInt8(params.count), 0]
        let (result, _) = pr.manager.persistentReserveOut(cdb: cdb, parameters: ByteBuffer(bytes: params), nexus: a)
        #expect(result.status == .good)
        #expect(pr.keys() == [0xB0])
        let moved = try #require(pr.reservation())
        #expect(moved == (0xB0, PRKind.we.rawValue))
        #expect(!pr.manager.conflicts(cdb: write10, nexus: b))
        #expect(pr.manager.conflicts(cdb: write10, nexus: a))
        // Only the holder may move: `a` is not registered any more.
        let again = pr.manager.persistentReserveOut(cdb: cdb, parameters: ByteBuffer(bytes: params), nexus: a)
        #expect(again.0.status == .reservationConflict)
    }

    @Test("state survives a new manager on the same directory, and lives in reservations.sqlite")
    func persistence() throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let pr = try PR(directory: dir)
            pr.register(a, 0xDEAD_BEEF_0000_0001)
            pr.register(b, 2)
            #expect(pr.status(1, from: a, key: 0xDEAD_BEEF_0000_0001, type: .earo) == .good)
            #expect(pr.status(6, from: nexus(initiatorB, isid: 7), sark: 3, flags: 0x05) == .good)
        }
        #expect(FileManager.default.fileExists(atPath: dir + "/reservations.sqlite"))
        let pr = try PR(directory: dir)
        #expect(pr.keys() == [0xDEAD_BEEF_0000_0001, 2, 3])
        #expect(pr.generation() == 3)
        let restored = try #require(pr.reservation())
        #expect(restored == (0xDEAD_BEEF_0000_0001, PRKind.earo.rawValue))
        #expect(pr.data(2)[3] & 0x01 == 1)  // PTPL_A as set
        #expect(pr.manager.conflicts(cdb: read10, nexus: nexus(initiatorA, isid: 9)))
        #expect(!pr.manager.conflicts(cdb: write10, nexus: nexus(initiatorB, isid: 7, tpgt: 4)))
        // Another LU in the same directory has its own row.
        let other = try ReservationManager(lunKey: target + "/1", stateDirectory: dir)
        #expect(!other.conflicts(cdb: write10, nexus: b))
        // A CLEAR is saved too.
        #expect(pr.status(3, from: a, key: 0xDEAD_BEEF_0000_0001) == .good)
        let cleared = try PR(directory: dir)
        #expect(cleared.keys() == [])
        #expect(cleared.reservation() == nil)
    }

    @Test("RESERVE(6): holder keeps access, others conflict except INQUIRY; RELEASE from others is a no-op")
    func reserve6TwoInitiators() throws {
        let pr = try PR()
        #expect(pr.manager.reserve(cdb: reserve6, nexus: a).status == .good)
        #expect(pr.manager.reserve(cdb: reserve6, nexus: a).status == .good)
        #expect(pr.manager.reserve(cdb: reserve6, nexus: b).status == .reservationConflict)
        #expect(pr.manager.release(cdb: release6, nexus: b).status == .good)
        #expect(!pr.manager.conflicts(cdb: modeSense6, nexus: a))
        #expect(pr.manager.conflicts(cdb: modeSense6, nexus: b))
        #expect(pr.manager.conflicts(cdb: read10, nexus: a2))
        #expect(!pr.manager.conflicts(cdb: inquiry, nexus: b))
        #expect(pr.manager.conflicts(cdb: [0x5E, 0, 0, 0, 0, 0, 0, 0, 8, 0], nexus: b))
        #expect(pr.prIn(0, from: b).status == .reservationConflict)
        #expect(pr.out(6, from: b, sark: 1).0.status == .reservationConflict)
        #expect(pr.manager.release(cdb: release6, nexus: a).status == .good)
        #expect(pr.manager.reserve(cdb: [0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], nexus: b).status == .good)
        #expect(pr.manager.conflicts(cdb: read10, nexus: a))
        #expect(pr.manager.release(cdb: [0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], nexus: b).status == .good)
        #expect(!pr.manager.conflicts(cdb: read10, nexus: a))
        // Third-party RESERVE(10) is not supported.
        #expect(pr.manager.reserve(cdb: [0x56, 0x10, 0, 0, 0, 0, 0, 0, 0, 0], nexus: a).sense?.asc == 0x24)
    }

    @Test("RESERVE(6) is released by nexus loss and by resets, and never persisted")
    func reserve6Release() throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pr = try PR(directory: dir)
        #expect(pr.manager.reserve(cdb: reserve6, nexus: a).status == .good)
        pr.manager.nexusReleased(b)
        #expect(pr.manager.conflicts(cdb: read10, nexus: b))
        pr.manager.nexusReleased(a)
        #expect(!pr.manager.conflicts(cdb: read10, nexus: b))
        #expect(pr.manager.reserve(cdb: reserve6, nexus: b).status == .good)
        pr.manager.reset()
        #expect(!pr.manager.conflicts(cdb: read10, nexus: a))
        #expect(pr.manager.reserve(cdb: reserve6, nexus: a).status == .good)
        let restarted = try PR(directory: dir)
        #expect(!restarted.manager.conflicts(cdb: read10, nexus: b))
    }

    @Test("RESERVE(6) with persistent reservation state: holders get GOOD without effect, others conflict")
    func reserve6WithPersistentReservations() throws {
        let pr = try PR()
        pr.register(a, 1)
        #expect(pr.manager.reserve(cdb: reserve6, nexus: b).status == .reservationConflict)
        #expect(pr.manager.release(cdb: release6, nexus: b).status == .reservationConflict)
        // Registered, no reservation: conflict.
        #expect(pr.manager.reserve(cdb: reserve6, nexus: a).status == .reservationConflict)
        #expect(pr.status(1, from: a, key: 1, type: .we) == .good)
        #expect(pr.manager.reserve(cdb: reserve6, nexus: a).status == .good)
        #expect(!pr.manager.conflicts(cdb: write10, nexus: a))
        #expect(pr.reservation()?.1 == PRKind.we.rawValue)
        #expect(pr.manager.release(cdb: release6, nexus: a).status == .good)
        #expect(pr.reservation()?.1 == PRKind.we.rawValue)
    }

    @Test("resets keep persistent reservations")
    func resetKeepsPersistentReservations() throws {
        let pr = try PR()
        pr.register(a, 1)
        #expect(pr.status(1, from: a, key: 1, type: .ea) == .good)
        pr.manager.reset()
        pr.manager.nexusReleased(a)
        #expect(pr.manager.conflicts(cdb: read10, nexus: b))
        #expect(pr.keys() == [1])
    }
}
