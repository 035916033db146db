import NIOCore

// MARK: - Mode parameters (SPC-4 §7.5, SBC-4 §6.5)

/// The changeable mode parameters of one LU. Everything else in the mode
/// pages is constant.
struct ModeParameters: Sendable, Equatable {
    /// Caching mode page WCE (SBC-4 §6.5.5).
    var writeCacheEnabled: Bool
    /// Control mode page SWP: software write protect (SPC-4 §7.5.8).
    var softwareWriteProtect: Bool

    static func defaults(for configuration: LogicalUnitConfiguration) -> ModeParameters {
        ModeParameters(writeCacheEnabled: configuration.writeCacheEnabled, softwareWriteProtect: false)
    }
}

/// PAGE CONTROL field of MODE SENSE (SPC-4 §6.11.1, table 168).
enum PageControl: UInt8 {
    case current = 0
    case changeable = 1
    case defaultValues = 2
    case saved = 3
}

/// The mode pages a direct-access LU implements, in page-code order.
enum ModePage: UInt8, CaseIterable {
    /// Caching mode page (SBC-4 §6.5.5).
    case caching = 0x08
    /// Control mode page (SPC-4 §7.5.8).
    case control = 0x0A
    /// Informational Exceptions Control mode page (SPC-4 §7.5.14).
    case informationalExceptions = 0x1C

    /// The page bytes (with PS = 0: parameters are not savable) for the given values.
    func bytes(_ p: ModeParameters) -> [UInt8] {
        switch self {
        case .caching:
            var b = [UInt8](repeating: 0, count: 20)
            b[0] = rawValue
            b[1] = 0x12
            b[2] = p.writeCacheEnabled ? 0x04 : 0x00
            return b
        case .control:
            var b = [UInt8](repeating: 0, count: 12)
            b[0] = rawValue
            b[1] = 0x0A
            b[2] = 0x02  // GLTSD: no implicit log parameter saving
            b[3] = 0x10  // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
            b[4] = p.softwareWriteProtect ? 0x08 : 0x00
            b[8] = 0xFF  // BUSY TIMEOUT PERIOD: unlimited
            b[9] = 0xFF
            return b
        case .informationalExceptions:
            var b = [UInt8](repeating: 0, count: 12)
            b[0] = rawValue
            b[1] = 0x0A
            b[2] = 0x08  // DEXCPT: informational exception reporting disabled
            return b
        }
    }

    /// Changeable-values mask (PC = 01b): WCE and SWP only.
    var changeableMask: [UInt8] {
        var b = [UInt8](repeating: 0, count: bytes(ModeParameters(writeCacheEnabled: false, softwareWriteProtect: false)).count)
        b[0] = rawValue
        b[1] = UInt8(b.count - 2)
        switch self {
        case .caching: b[2] = 0x04
        case .control: b[4] = 0x08
        case .informationalExceptions: break
        }
        return b
    }

    /// Folds the changeable bits of `page` (already validated) into `p`.
    func apply(_ page: ArraySlice<UInt8>, to p: inout ModeParameters) {
        let s = page.startIndex
        switch self {
        case .caching: p.writeCacheEnabled = page[s + 2] & 0x04 != 0
        case .control: p.softwareWriteProtect = page[s + 4] & 0x08 != 0
        case .informationalExceptions: break
        }
    }
}

// MARK: - MODE SENSE / MODE SELECT

extension LogicalUnit {
    /// MODE SENSE(6) and MODE SENSE(10) (SPC-4 §6.11, §6.12).
    func modeSense(_ command: SCSICommand) throws(SenseData) -> SCSIResult {
        let cdb = command.cdb
        let ten = cdb[0] == Opcode.modeSense10
        let dbd = cdb[1] & 0x08 != 0
        let llbaa = ten && cdb[1] & 0x10 != 0
        guard let pc = PageControl(rawValue: cdb[2] >> 6) else { throw .invalidFieldInCDB(byte: 2, bit: 7) }
        if pc == .saved { throw .savingParametersNotSupported }
        let pageCode = cdb[2] & 0x3F
        let subpage = cdb[3]
        let allocation = ten ? Int(cdb.be16(7)) : Int(cdb[4])

        let values: ModeParameters
        switch pc {
        case .current: values = mode.withLock { $0 }
        default: values = ModeParameters.defaults(for: configuration)
        }
        func page(_ p: ModePage) -> [UInt8] { pc == .changeable ? p.changeableMask : p.bytes(values) }

        var pages: [UInt8] = []
        if pageCode == 0x3F {
            guard subpage == 0x00 || subpage == 0xFF else { throw .invalidFieldInCDB(byte: 3) }
            for p in ModePage.allCases { pages += page(p) }
        } else {
            guard let p = ModePage(rawValue: pageCode) else { throw .invalidFieldInCDB(byte: 2, bit: 5) }
            guard subpage == 0x00 || subpage == 0xFF else { throw .invalidFieldInCDB(byte: 3) }
            pages = page(p)
        }

        var descriptor: [UInt8] = []
        if !dbd {
            let blocks = blockCount
            if llbaa {
                descriptor = [UInt8](repeating: 0, count: 16)
                if pc != .changeable {
                    descriptor.put(blocks, at: 0, width: 8)
                    descriptor.put(UInt32(blockSize), at: 12, width: 4)
                }
            } else {
                descriptor = [UInt8](repeating: 0, count: 8)
                if pc != .changeable {
                    descriptor.put(UInt32(clamping: blocks), at: 0, width: 4)
                    descriptor.put(UInt32(blockSize), at: 5, width: 3)
                }
            }
        }
        // SBC-4 §6.5.1: device-specific parameter WP (bit 7) and DPOFUA (bit 4).
        let deviceSpecific: UInt8 = (isWriteProtected ? 0x80 : 0) | 0x10
        var data: [UInt8]
        if ten {
            data = [0, 0, 0, deviceSpecific, llbaa ? 0x01 : 0x00, 0, 0, 0]
            data.put(UInt16(descriptor.count), at: 6, width: 2)
            data += descriptor
            data += pages
            data.put(UInt16(data.count - 2), at: 0, width: 2)
        } else {
            data = [0, 0, deviceSpecific, UInt8(descriptor.count)]
            data += descriptor
            data += pages
            data[0] = UInt8(truncatingIfNeeded: data.count - 1)
        }
        return dataIn(data, allocationLength: allocation)
    }

    /// MODE SELECT(6) and MODE SELECT(10) (SPC-4 §6.9, §6.10): only the
    /// changeable bits may differ from the current values; a change
    /// establishes MODE PARAMETERS CHANGED for every other nexus.
    func modeSelect(_ command: SCSICommand) throws(SenseData) -> SCSIResult {
        let cdb = command.cdb
        let ten = cdb[0] == Opcode.modeSelect10
        let length = ten ? Int(cdb.be16(7)) : Int(cdb[4])
        if cdb[1] & 0x01 != 0 { throw .invalidFieldInCDB(byte: 1, bit: 0) }  // SP: nothing is savable
        guard length > 0 else { return .good }
        if cdb[1] & 0x10 == 0 { throw .invalidFieldInCDB(byte: 1, bit: 4) }  // PF: only SPC page format
        let buffer = try dataOut(command, length: length, exact: false)
        let list = buffer.getBytes(at: buffer.readerIndex, length: length) ?? []

        let headerLength = ten ? 8 : 4
        guard list.count >= headerLength else { throw .parameterListLengthError }
        let descriptorLength = ten ? Int(list.be16(6)) : Int(list[3])
        let longLBA = ten && list[4] & 0x01 != 0
        guard headerLength + descriptorLength <= list.count else { throw .parameterListLengthError }
        if list[ten ? 2 : 1] != 0 { throw .invalidFieldInParameterList(byte: ten ? 2 : 1) }  // MEDIUM TYPE

        // Block descriptors: the block length cannot change (SBC-4 §6.4.2).
        if descriptorLength != 0 {
            let expected = longLBA ? 16 : 8
            guard descriptorLength == expected else { throw .invalidFieldInParameterList(byte: ten ? 6 : 3) }
            let d = headerLength
            let blockLength = longLBA ? Int(list.be32(d + 12)) : Int(list.be24(d + 5))
            if blockLength != blockSize { throw .invalidFieldInParameterList(byte: d + (longLBA ? 12 : 5)) }
            let blocks = longLBA ? list.be64(d) : UInt64(list.be32(d))
            if blocks != 0 && blocks != Swift.min(blockCount, longLBA ? UInt64.max : 0xFFFF_FFFF) {
                throw .invalidFieldInParameterList(byte: d)
            }
        }

        // Validate and apply under the lock so concurrent MODE SELECTs don't lose updates.
        let (before, after) = try mode.withLock { current throws(SenseData) -> (ModeParameters, ModeParameters) in
            var updated = current
            var offset = headerLength + descriptorLength
            while offset < list.count {
                guard offset + 2 <= list.count else { throw .parameterListLengthError }
                if list[offset] & 0x40 != 0 { throw .invalidFieldInParameterList(byte: offset, bit: 6) }  // SPF: no subpages
                guard let page = ModePage(rawValue: list[offset] & 0x3F) else {
                    throw .invalidFieldInParameterList(byte: offset, bit: 5)
                }
                let ours = page.bytes(current)
                let mask = page.changeableMask
                guard Int(list[offset + 1]) == ours.count - 2 else { throw .invalidFieldInParameterList(byte: offset + 1) }
                guard offset + ours.count <= list.count else { throw .parameterListLengthError }
                for i in 2..<ours.count where (list[offset + i] ^ ours[i]) & ~mask[i] != 0 {
                    throw .invalidFieldInParameterList(byte: offset + i)
                }
                page.apply(list[offset..<(offset + ours.count)], to: &updated)
                offset += ours.count
            }
            let before = current
            current = updated
            return (before, updated)
        }

        if after != before {
            syncModeCopies()
            establishUnitAttention(.modeParametersChanged, except: command.nexus)
        }
        return .good
    }
}
