import NIOCore

// MARK: - Block limits (SBC-4 §6.6.4)

/// The limits this target reports in the Block Limits VPD page and enforces.
struct BlockLimits: Sendable {
    /// MAXIMUM TRANSFER LENGTH in blocks (8 MiB).
    let maximumTransferLength: UInt32
    /// OPTIMAL TRANSFER LENGTH in blocks (1 MiB).
    let optimalTransferLength: UInt32
    /// OPTIMAL TRANSFER LENGTH GRANULARITY in blocks (4 KiB).
    let optimalGranularity: UInt16
    /// MAXIMUM UNMAP LBA COUNT (256 MiB; 0 without unmap support). libiscsi
    /// calls anything above 1M blocks insane.
    let maximumUnmapLBACount: UInt32
    /// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
    let maximumUnmapDescriptors: UInt32
    /// MAXIMUM WRITE SAME LENGTH in blocks (64 MiB).
    let maximumWriteSameLength: UInt64
    /// MAXIMUM COMPARE AND WRITE LENGTH in blocks.
    let maximumCompareAndWriteLength: UInt8 = 255

    init(blockSize: Int, supportsUnmap: Bool) {
        let bs = UInt32(Swift.max(blockSize, 1))
        // 32 MiB: reads never buffer more than the initiator's Expected Data
        // Transfer Length, and the transport bounds what a connection holds.
        maximumTransferLength = (32 << 20) / bs
        optimalTransferLength = (1 << 20) / bs
        optimalGranularity = UInt16(Swift.max(1, 4096 / bs))
        maximumUnmapLBACount = supportsUnmap ? (256 << 20) / bs : 0
        maximumUnmapDescriptors = supportsUnmap ? 256 : 0
        // 0: no limit. WRITE SAME moves one block of data and writes or
        // deallocates the range in 1 MiB pieces, so any length is cheap to accept.
        maximumWriteSameLength = 0
    }
}

// MARK: - INQUIRY (SPC-4 §6.6) and VPD pages (SPC-4 §7.8, SBC-4 §6.6)

extension LogicalUnit {
    /// VPD pages in ascending order (the Supported VPD Pages page lists them).
    static let vpdPages: [UInt8] = [0x00, 0x80, 0x83, 0x86, 0x8F, 0xB0, 0xB1, 0xB2]

    /// INQUIRY: standard data or a VPD page, truncated to ALLOCATION LENGTH.
    func inquiry(_ command: SCSICommand) throws(SenseData) -> SCSIResult {
        let cdb = command.cdb
        let evpd = cdb[1] & 0x01 != 0
        let pageCode = cdb[2]
        let allocation = Int(cdb.be16(3))
        if !evpd {
            // SPC-4 §6.6.1: PAGE CODE must be zero without EVPD.
            guard pageCode == 0 else { throw .invalidFieldInCDB(byte: 2) }
            return dataIn(standardInquiryData(peripheral: 0x00), allocationLength: allocation)
        }
        let page: [UInt8]
        switch pageCode {
        case 0x00: page = vpdHeader(0x00, Self.vpdPages)
        case 0x80: page = vpdHeader(0x80, Array(configuration.serialNumber.utf8))
        case 0x83: page = deviceIdentificationPage(nexus: command.nexus)
        case 0x86: page = extendedInquiryPage()
        case 0x8F: page = copyEngine.thirdPartyCopyVPD()
        case 0xB0: page = blockLimitsPage()
        case 0xB1: page = blockDeviceCharacteristicsPage()
        case 0xB2: page = logicalBlockProvisioningPage()
        default: throw .invalidFieldInCDB(byte: 2)
        }
        return dataIn(page, allocationLength: allocation)
    }

    /// Standard INQUIRY data, 96 bytes (SPC-4 §6.6.2).
    func standardInquiryData(peripheral: UInt8) -> [UInt8] {
        Self.standardInquiryData(
            peripheral: peripheral, vendor: configuration.vendor, product: configuration.product,
            revision: configuration.revision)
    }

    /// Standard INQUIRY data with the given first byte (0x00: connected disk;
    /// 0x7F: no LU at this LUN, SPC-4 §6.6.2 table 140).
    static func standardInquiryData(peripheral: UInt8, vendor: String, product: String, revision: String) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 96)
        b[0] = peripheral
        b[1] = 0x00  // RMB 0: not removable
        b[2] = 0x06  // VERSION: SPC-4
        b[3] = 0x12  // HISUP, RESPONSE DATA FORMAT 2
        b[4] = UInt8(b.count - 5)
        b[5] = 0x08  // 3PC: EXTENDED COPY supported; TPGS 00b
        b[6] = 0x00
        b[7] = 0x02  // CMDQUE
        b.replaceSubrange(8..<16, with: asciiField(vendor, 8))
        b.replaceSubrange(16..<32, with: asciiField(product, 16))
        b.replaceSubrange(32..<36, with: asciiField(revision, 4))
        // VERSION DESCRIPTORS (SPC-4 table 146): SAM-5, iSCSI, SPC-4, SBC-3.
        let versions: [UInt16] = [0x00A0, 0x0960, 0x0460, 0x04C0]
        for (i, v) in versions.enumerated() { b.put(v, at: 58 + 2 * i, width: 2) }
        return b
    }

    /// A VPD page: peripheral byte, page code, 16-bit PAGE LENGTH, payload.
    func vpdHeader(_ code: UInt8, _ payload: [UInt8]) -> [UInt8] {
        var b: [UInt8] = [0x00, code, 0, 0]
        b.put(UInt16(payload.count), at: 2, width: 2)
        return b + payload
    }

    /// Device Identification VPD page (SPC-4 §7.8.6): the LU's NAA and T10
    /// vendor ID designators, then the target port's relative port, target port
    /// group and SCSI name string, then the target device's name.
    func deviceIdentificationPage(nexus: ITNexus) -> [UInt8] {
        var p: [UInt8] = []
        // NAA IEEE Registered (type 3), binary, associated with the LU.
        p += [0x01, 0x03, 0x00, 0x08] + naaDesignator
        // T10 vendor ID (type 1), ASCII: vendor + the unit serial number.
        let t10 = asciiField(configuration.vendor, 8) + Array(configuration.serialNumber.utf8)
        p += [0x02, 0x01, 0x00, UInt8(t10.count)] + t10
        // Relative target port (type 4), target port association, PIV, iSCSI.
        var rel: [UInt8] = [0x51, 0x94, 0x00, 0x04, 0, 0, 0, 0]
        rel.put(nexus.relativeTargetPortID, at: 6, width: 2)
        p += rel
        // Target port group (type 5).
        p += [0x51, 0x95, 0x00, 0x04, 0, 0, 0, 0]
        // SCSI name string (type 8), UTF-8, target port: "<TargetName>,t,0x<TPGT>".
        p += scsiNameString(nexus.targetPortName, association: 0x10)
        // SCSI name string of the target device (association 10b).
        p += scsiNameString(targetName, association: 0x20)
        return vpdHeader(0x83, p)
    }

    /// A SCSI name string designator: null-terminated, padded to a multiple of 4.
    private func scsiNameString(_ name: String, association: UInt8) -> [UInt8] {
        var s = Array(name.utf8) + [0]
        while s.count % 4 != 0 { s.append(0) }
        let length = UInt8(clamping: s.count)
        return [0x53, 0x80 | association | 0x08, 0x00, length] + s.prefix(Int(length))
    }

    /// Extended INQUIRY Data VPD page (SPC-4 §7.8.7).
    func extendedInquiryPage() -> [UInt8] {
        var p = [UInt8](repeating: 0, count: 60)
        p[1] = 0x01  // SIMPSUP
        p[3] = 0x01  // LUICLR
        return vpdHeader(0x86, p)
    }

    /// Block Limits VPD page (SBC-4 §6.6.4).
    func blockLimitsPage() -> [UInt8] {
        var p = [UInt8](repeating: 0, count: 60)  // payload starts at page byte 4
        p[0] = 0x00  // WSNZ 0: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 writes through the last LBA
        p[1] = limits.maximumCompareAndWriteLength
        p.put(limits.optimalGranularity, at: 2, width: 2)
        p.put(limits.maximumTransferLength, at: 4, width: 4)
        p.put(limits.optimalTransferLength, at: 8, width: 4)
        p.put(UInt32(0), at: 12, width: 4)  // MAXIMUM PREFETCH LENGTH: not reported
        p.put(limits.maximumUnmapLBACount, at: 16, width: 4)
        p.put(limits.maximumUnmapDescriptors, at: 20, width: 4)
        p.put(UInt32(supportsUnmap ? 1 : 0), at: 24, width: 4)  // OPTIMAL UNMAP GRANULARITY
        p.put(limits.maximumWriteSameLength, at: 32, width: 8)
        return vpdHeader(0xB0, p)
    }

    /// Block Device Characteristics VPD page (SBC-4 §6.6.2): non-rotating medium.
    func blockDeviceCharacteristicsPage() -> [UInt8] {
        var p = [UInt8](repeating: 0, count: 60)
        p.put(UInt16(1), at: 0, width: 2)
        return vpdHeader(0xB1, p)
    }

    /// Logical Block Provisioning VPD page (SBC-4 §6.6.6).
    func logicalBlockProvisioningPage() -> [UInt8] {
        var p = [UInt8](repeating: 0, count: 4)
        if supportsUnmap {
            p[1] = 0x80 | 0x40 | 0x20 | 0x04  // LBPU, LBPWS, LBPWS10, LBPRZ 001b
            p[2] = 0x02  // PROVISIONING TYPE: thin
        }
        return vpdHeader(0xB2, p)
    }
}

/// `s` as an ASCII field of `width` bytes, space padded (SPC-4 §4.4.1).
func asciiField(_ s: String, _ width: Int) -> [UInt8] {
    var b = Array(s.utf8.prefix(width)).map { $0 >= 0x20 && $0 < 0x7F ? $0 : 0x20 }
    while b.count < width { b.append(0x20) }
    return b
}
