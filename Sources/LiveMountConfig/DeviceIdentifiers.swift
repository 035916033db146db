/// Stable identifiers for a logical unit, derived from its target's name and its LUN so that they survive
/// restarts and reconfiguration (initiators' multipath and udev key on them).
public enum DeviceIdentifiers {
    /// The 24-bit IEEE COMPANY_ID placed in derived NAA identifiers: 02-4C-4D ("\u{2}LM").
    ///
    /// LiveMount has no IEEE-assigned OUI, so it uses a locally administered one: in the first octet
    /// 0x02 the U/L bit (0x02) is set and the I/G bit (0x01) clear, which marks it as an Administratively
    /// Assigned Identifier (IEEE 802c SLAP quadrant 00), never handed out by the IEEE Registration
    /// Authority and so never clashing with a vendor's registered designators. Configure an explicit
    /// serial or keep target names unique to keep identifiers unique across hosts.
    public static let locallyAdministeredOUI: UInt32 = 0x02_4C_4D

    /// A 64-bit NAA IEEE Registered designator (SPC-4 §7.8.6.6.4, VPD page 83h): NAA = 5 (4 bits),
    /// IEEE COMPANY_ID (24 bits) = `locallyAdministeredOUI`, VENDOR SPECIFIC IDENTIFIER (36 bits) from a
    /// hash of the target name (compared case-insensitively, as iSCSI names are, RFC 3722) and the LUN.
    public static func naaIdentifier(targetName: String, lun: UInt64) -> UInt64 {
        let vendorSpecific = hash(targetName: targetName, lun: lun) & 0xF_FFFF_FFFF
        return 0x5 << 60 | UInt64(locallyAdministeredOUI) << 36 | vendorSpecific
    }

    /// The default unit serial number (VPD 80h, SPC-4 §7.8.16): 16 uppercase hex digits of the same hash
    /// that feeds `naaIdentifier`, so it is stable and, like the NAA, differs between LUNs.
    public static func serialNumber(targetName: String, lun: UInt64) -> String {
        let digits = String(hash(targetName: targetName, lun: lun), radix: 16, uppercase: true)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// FNV-1a 64 over the lowercased name, a NUL separator and the LUN (big-endian), finished with
    /// MurmurHash3's fmix64 so every input bit reaches the low 36 bits. Fixed forever: changing it changes
    /// every LUN's identity.
    static func hash(targetName: String, lun: UInt64) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        func mix(_ byte: UInt8) {
            h ^= UInt64(byte)
            h = h &* 0x0000_0100_0000_01B3
        }
        for byte in targetName.lowercased().utf8 { mix(byte) }
        mix(0)
        for shift in stride(from: 56, through: 0, by: -8) { mix(UInt8(truncatingIfNeeded: lun >> UInt64(shift))) }
        h ^= h >> 33
        h = h &* 0xFF51_AFD7_ED55_8CCD
        h ^= h >> 33
        h = h &* 0xC4CE_B9FE_1A85_EC53
        h ^= h >> 33
        return h
    }
}
