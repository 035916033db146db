import Testing

@testable import LiveMountConfig

@Suite("Derived NAA identifiers and serial numbers")
struct DeviceIdentifiersTests {
    @Test("NAA 5 layout: NAA nibble, locally administered COMPANY_ID 02-4C-4D, 36-bit vendor part")
    func layout() {
        let naa = DeviceIdentifiers.naaIdentifier(targetName: "iqn.2026-11.org.example:disk0", lun: 0)
        #expect(naa >> 60 == 5)
        #expect((naa >> 36) & 0xFF_FFFF == 0x02_4C_4D)
        #expect(
            naa & 0xF_FFFF_FFFF == DeviceIdentifiers.hash(targetName: "iqn.2026-11.org.example:disk0", lun: 0)
                & 0xF_FFFF_FFFF)
    }

    @Test("stable: pinned values never change (initiators key multipath and udev links on them)")
    func stable() {
        #expect(
            DeviceIdentifiers.naaIdentifier(targetName: "iqn.2026-11.org.example:disk0", lun: 0)
                == 0x5024_C4D9_A8B9_AF7F)
        #expect(
            DeviceIdentifiers.naaIdentifier(targetName: "iqn.2026-11.org.example:disk0", lun: 1)
                == 0x5024_C4D2_1553_6AA4)
        #expect(
            DeviceIdentifiers.serialNumber(targetName: "iqn.2026-11.org.example:disk0", lun: 0) == "F410C6D9A8B9AF7F")
        #expect(DeviceIdentifiers.hash(targetName: "", lun: 0) == Self.referenceHash([0, 0, 0, 0, 0, 0, 0, 0, 0]))
        #expect(
            DeviceIdentifiers.hash(targetName: "iqn.2026-11.org.example:disk0", lun: 258)
                == Self.referenceHash(Array("iqn.2026-11.org.example:disk0".utf8) + [0, 0, 0, 0, 0, 0, 0, 1, 2]))
        #expect(
            DeviceIdentifiers.serialNumber(targetName: "iqn.2026-11.org.example:disk0", lun: 1)
                == DeviceIdentifiers.serialNumber(targetName: "IQN.2026-11.ORG.EXAMPLE:DISK0", lun: 1))
        #expect(
            DeviceIdentifiers.naaIdentifier(targetName: "iqn.2026-11.org.example:disk0", lun: 1)
                == DeviceIdentifiers.naaIdentifier(targetName: "iqn.2026-11.org.example:disk0", lun: 1))
    }

    @Test("unique across LUNs and targets")
    func unique() {
        var seen: Set<UInt64> = []
        var serials: Set<String> = []
        for target in 0..<64 {
            for lun in UInt64(0)..<64 {
                let name = "iqn.2026-11.org.example:disk\(target)"
                #expect(seen.insert(DeviceIdentifiers.naaIdentifier(targetName: name, lun: lun)).inserted)
                serials.insert(DeviceIdentifiers.serialNumber(targetName: name, lun: lun))
            }
        }
        #expect(seen.count == 4096)
        #expect(serials.count == 4096)
    }

    @Test("serial numbers are 16 uppercase hex digits, valid for VPD 80h")
    func serialFormat() {
        for lun in UInt64(0)..<32 {
            let serial = DeviceIdentifiers.serialNumber(targetName: "iqn.2026-11.org.example:x", lun: lun)
            #expect(serial.count == 16)
            #expect(serial.allSatisfy { $0.isHexDigit && !$0.isLowercase })
            #expect(Checks.serialProblem(serial) == nil)
        }
    }

    /// FNV-1a 64 then fmix64, written out independently of the implementation.
    static func referenceHash(_ bytes: [UInt8]) -> UInt64 {
        var h: UInt64 = 14_695_981_039_346_656_037
        for byte in bytes {
            h ^= UInt64(byte)
            h = h &* 1_099_511_628_211
        }
        h ^= h >> 33
        h = h &* 0xFF51_AFD7_ED55_8CCD
        h ^= h >> 33
        h = h &* 0xC4CE_B9FE_1A85_EC53
        h ^= h >> 33
        return h
    }
}
