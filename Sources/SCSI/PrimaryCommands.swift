import Dispatch
import NIOCore

// MARK: - SPC-4 commands other than INQUIRY and MODE SENSE/SELECT

extension LogicalUnit {
    /// TEST UNIT READY (SPC-4 §6.47): the medium is always present.
    func testUnitReady(_ command: SCSICommand) -> SCSIResult { .good }

    /// REQUEST SENSE (SPC-4 §6.39): the oldest pending unit attention (which
    /// it clears) or NO SENSE, in fixed or (DESC = 1) descriptor format.
    func requestSense(_ command: SCSICommand) -> SCSIResult {
        let descriptor = command.cdb[1] & 0x01 != 0
        let allocation = Int(command.cdb[4])
        let sense = takeUnitAttention(for: command.nexus) ?? SenseData(key: .noSense, asc: 0, ascq: 0)
        return dataIn(descriptor ? sense.descriptorFormatBytes : sense.fixedFormatBytes, allocationLength: allocation)
    }

    /// START STOP UNIT (SBC-4 §5.25): accepted, except loading or ejecting
    /// (LOEJ with POWER CONDITION 0h), which a non-removable medium cannot do.
    /// With another power condition, START and LOEJ are ignored.
    func startStopUnit(_ command: SCSICommand) throws(SenseData) -> SCSIResult {
        let powerCondition = command.cdb[4] >> 4
        if powerCondition == 0 && command.cdb[4] & 0x02 != 0 { throw .invalidFieldInCDB(byte: 4, bit: 1) }
        return .good
    }

    /// PREVENT ALLOW MEDIUM REMOVAL (SBC-4 §5.11): PREVENT 00b/01b accepted
    /// (nothing to lock on a non-removable medium); 10b/11b are for medium changers.
    func preventAllowMediumRemoval(_ command: SCSICommand) throws(SenseData) -> SCSIResult {
        if command.cdb[4] & 0x02 != 0 { throw .invalidFieldInCDB(byte: 4, bit: 1) }
        return .good
    }

    /// PERSISTENT RESERVE OUT: delegated; the unit attentions it produces are
    /// queued on the nexuses they name. It commits the new state to SQLite
    /// (an fsync) before answering, so it runs on a Dispatch worker: SCSI
    /// handlers run on the connections' event loops, which must never block.
    func persistentReserveOut(_ command: SCSICommand) async -> SCSIResult {
        let reservations = self.reservations
        let (result, attentions) = await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(
                    returning: reservations.persistentReserveOut(
                        cdb: command.cdb, parameters: command.dataOut, nexus: command.nexus))
            }
        }
        for request in attentions { queueUnitAttention(request.sense, for: request.nexus) }
        return result
    }

    // MARK: REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35)

    /// Answers from the opcode table: all commands (option 0) or one command
    /// (options 1-3), with command timeouts descriptors when RCTD is set.
    func reportSupportedOperationCodes(_ command: SCSICommand) throws(SenseData) -> SCSIResult {
        let cdb = command.cdb
        let rctd = cdb[2] & 0x80 != 0
        let option = cdb[2] & 0x07
        let requestedOpcode = cdb[3]
        let requestedSA = cdb.be16(4)
        let allocation = Int(cdb.be32(6))
        let supported = OpcodeTable.supported(on: self)

        func timeouts(_ d: CommandDescriptor) -> [UInt8] {
            var t: [UInt8] = [0x00, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
            t.put(d.timeoutSeconds, at: 8, width: 4)
            return t
        }

        switch option {
        case 0:
            var data: [UInt8] = [0, 0, 0, 0]
            for d in supported {
                var entry: [UInt8] = [d.opcode, 0, 0, 0, 0, 0, 0, 0]
                if let sa = d.serviceAction {
                    entry.put(sa, at: 2, width: 2)
                    entry[5] |= 0x01  // SERVACTV
                }
                if rctd { entry[5] |= 0x02 }  // CTDP
                entry.put(UInt16(d.cdbLength), at: 6, width: 2)
                data += entry
                if rctd { data += timeouts(d) }
            }
            data.put(UInt32(data.count - 4), at: 0, width: 4)
            return dataIn(data, allocationLength: allocation)
        case 1, 2, 3:
            let hasSA = OpcodeTable.hasServiceActions(requestedOpcode)
            if option == 1 && hasSA { throw .invalidFieldInCDB(byte: 2, bit: 2) }
            if option == 2 && !hasSA && !OpcodeTable.byOpcode[Int(requestedOpcode)].isEmpty {
                throw .invalidFieldInCDB(byte: 2, bit: 2)
            }
            let match = supported.first { d in
                d.opcode == requestedOpcode && (!hasSA || d.serviceAction == requestedSA)
            }
            guard let d = match else {
                // SUPPORT 001b: not supported.
                return dataIn([0, 0x01, 0, 0], allocationLength: allocation)
            }
            var data: [UInt8] = [0, (rctd ? 0x80 : 0) | 0x03, 0, 0]
            data.put(UInt16(d.cdbLength), at: 2, width: 2)
            data += d.usage
            if rctd { data += timeouts(d) }
            return dataIn(data, allocationLength: allocation)
        default:
            throw .invalidFieldInCDB(byte: 2, bit: 2)
        }
    }

    /// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 §6.37): ABORT TASK,
    /// ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET and TARGET RESET.
    func reportSupportedTaskManagementFunctions(_ command: SCSICommand) -> SCSIResult {
        let repd = command.cdb[2] & 0x80 != 0
        let allocation = Int(command.cdb.be32(6))
        var data: [UInt8] = [0x80 | 0x40 | 0x10 | 0x08 | 0x02, 0x00, 0x00, 0x00]
        if repd {
            data[3] = 0x0C
            data += [UInt8](repeating: 0, count: 12)
        }
        return dataIn(data, allocationLength: allocation)
    }
}
