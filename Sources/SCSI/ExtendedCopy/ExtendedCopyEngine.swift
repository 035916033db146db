import BlockDevice
import NIOCore
import Synchronization

/// How EXTENDED COPY finds a copy source or destination by its VPD 83h NAA designator bytes (8 bytes, NAA 6? or 5).
struct CopyTargetDevice: Sendable {
    var device: any BlockDevice
    var readOnly: Bool
}

typealias CopyTargetResolver = @Sendable ([UInt8]) -> CopyTargetDevice?

/// The copy manager: EXTENDED COPY (LID1) with identification-descriptor
/// CSCDs and block→block segments, RECEIVE COPY RESULTS, and the
/// third-party copy VPD page that advertises them (SPC-4 §6.4, §6.18, §7.8.17).
///
/// Results of copies whose LIST ID USAGE asks for it (00b) are held per I_T
/// nexus and list identifier until RECEIVE COPY RESULTS reads them, the nexus
/// goes away, or `heldListLimit` newer ones push them out.
final class ExtendedCopyEngine: Sendable {
    // MARK: - Limits (reported in VPD 8Fh and OPERATING PARAMETERS)

    /// Most CSCD descriptors in one parameter list.
    static let maximumCSCDDescriptorCount = 8
    /// Most segment descriptors in one parameter list.
    static let maximumSegmentDescriptorCount = 64
    /// Most bytes of CSCD plus segment descriptors.
    static let maximumDescriptorListLength = 4096
    /// Most bytes one segment copies: bounds how long one command can keep a device busy.
    static let maximumSegmentLength = 64 << 20
    /// Bytes read and written per device call while copying a segment.
    static let chunkLength = 1 << 20
    /// Copies the engine runs at once, and list identifiers it holds results for.
    static let maximumConcurrentCopies = 16
    /// Held results kept at most (older ones are discarded first).
    static let heldListLimit = 64
    /// Segment lengths are multiples of 2^9 bytes (DATA SEGMENT GRANULARITY).
    static let dataSegmentGranularityLog2: UInt8 = 9

    /// Descriptor type codes implemented (SPC-4 §6.4.5, §6.4.6).
    static let identificationDescriptorCSCD: UInt8 = 0xE4
    static let blockToBlockSegment: UInt8 = 0x02

    /// The outcome of one held copy, for RECEIVE COPY RESULTS.
    private struct CopyRecord: Sendable {
        enum Status: UInt8 {
            case inProgress = 0x00
            case completed = 0x01
            case failed = 0x02
        }
        var status: Status
        var segmentsProcessed: Int
        var bytesTransferred: UInt64
        /// The sense data of a failed copy (FAILED SEGMENT DETAILS).
        var sense: SenseData?
        var holdResults: Bool
        var sequence: UInt64
    }

    /// A held copy is named by its I_T nexus and its LIST IDENTIFIER.
    private struct ListKey: Hashable, Sendable {
        var initiatorPort: String
        var targetPort: String
        var listID: UInt8
    }

    private struct State {
        var lists: [ListKey: CopyRecord] = [:]
        var sequence: UInt64 = 0
        var running = 0
    }

    private let state = Mutex(State())

    init() {}

    // MARK: - VPD page 8Fh (SPC-4 §7.8.17)

    /// VPD page 8Fh (third-party copy, SPC-4 §7.8.17), whole page including its 4-byte header.
    func thirdPartyCopyVPD() -> [UInt8] {
        var descriptors: [UInt8] = []

        /// Appends one third-party copy descriptor, padded to a multiple of four.
        func descriptor(_ type: Int, _ body: [UInt8]) {
            var padded = body
            while padded.count % 4 != 0 { padded.append(0) }
            var header = [UInt8](repeating: 0, count: 4)
            CopySense.put16(type, &header, at: 0)
            CopySense.put16(padded.count, &header, at: 2)
            descriptors += header + padded
        }

        // Supported Commands (0001h): EXTENDED COPY(LID1); RECEIVE COPY RESULTS
        // COPY STATUS, OPERATING PARAMETERS, FAILED SEGMENT DETAILS.
        let commands: [UInt8] = [0x83, 1, 0x00, 0x84, 3, 0x00, 0x03, 0x04]
        descriptor(0x0001, [UInt8(commands.count)] + commands)

        // Parameter Data (0008h).
        var parameters = [UInt8](repeating: 0, count: 28)
        CopySense.put16(Self.maximumCSCDDescriptorCount, &parameters, at: 4)
        CopySense.put16(Self.maximumSegmentDescriptorCount, &parameters, at: 6)
        CopySense.put32(Self.maximumDescriptorListLength, &parameters, at: 8)
        CopySense.put32(0, &parameters, at: 12)  // MAXIMUM INLINE DATA LENGTH
        descriptor(0x0008, parameters)

        // Supported Descriptors (0081h).
        let types = [Self.blockToBlockSegment, Self.identificationDescriptorCSCD]
        descriptor(0x0081, [UInt8(types.count)] + types)

        // Supported CSCD Descriptor IDs (0082h): none beyond the descriptor list.
        descriptor(0x0082, [0, 0])

        // General Copy Operations (8001h).
        var general = [UInt8](repeating: 0, count: 32)
        CopySense.put32(Self.maximumConcurrentCopies, &general, at: 0)  // TOTAL CONCURRENT COPIES
        CopySense.put32(Self.maximumConcurrentCopies, &general, at: 4)  // MAXIMUM IDENTIFIED CONCURRENT COPIES
        CopySense.put32(Self.maximumSegmentLength, &general, at: 8)
        general[12] = Self.dataSegmentGranularityLog2
        general[13] = 0  // INLINE DATA GRANULARITY: no inline data
        descriptor(0x8001, general)

        var page: [UInt8] = [0x00, 0x8F, 0, 0]
        CopySense.put16(descriptors.count, &page, at: 2)
        return page + descriptors
    }

    // MARK: - EXTENDED COPY (LID1), SPC-4 §6.4

    /// A validated copy source or destination.
    private struct CopyTarget {
        var device: any BlockDevice
        var readOnly: Bool
        var blockLength: Int
    }

    /// A validated block→block segment.
    private struct Segment {
        var source: Int
        var destination: Int
        var sourceOffset: UInt64
        var destinationOffset: UInt64
        var length: Int
    }

    func extendedCopy(cdb: [UInt8], parameters: ByteBuffer, nexus: ITNexus, resolve: CopyTargetResolver) async
        -> SCSIResult
    {
        guard cdb.count >= 16 else { return .checkCondition(CopySense.invalidFieldInCDB(byte: 0)) }
        // Service action 00h is EXTENDED COPY(LID1); LID4 (01h) is not implemented.
        guard cdb[1] & 0x1F == 0x00 else { return .checkCondition(CopySense.invalidFieldInCDB(byte: 1)) }
        let listLength = CopySense.be32(cdb, 10)
        var result = await runExtendedCopy(
            listLength: listLength, parameters: parameters, nexus: nexus, resolve: resolve)
        result.dataOutLength = listLength
        return result
    }

    private func runExtendedCopy(listLength: Int, parameters: ByteBuffer, nexus: ITNexus, resolve: CopyTargetResolver)
        async -> SCSIResult
    {
        // A zero-length parameter list copies nothing and is not an error (SPC-4 §6.4.1).
        if listLength == 0 { return .good }
        let available = min(parameters.readableBytes, listLength)
        let p = parameters.getBytes(at: parameters.readerIndex, length: available) ?? []
        guard p.count == listLength, listLength >= 16 else {
            return .checkCondition(CopySense.parameterListLengthError)
        }

        // Parameter list header (SPC-4 §6.4.3, table 107).
        let listID = p[0]
        let listIDUsage = (p[1] >> 3) & 0x03
        let cscdListLength = CopySense.be16(p, 2)
        let segmentListLength = CopySense.be32(p, 8)
        let inlineDataLength = CopySense.be32(p, 12)
        guard listIDUsage != 0x01 else { return .checkCondition(CopySense.invalidFieldInParameterList(byte: 1)) }
        guard 16 + cscdListLength + segmentListLength + inlineDataLength <= listLength else {
            return .checkCondition(CopySense.parameterListLengthError)
        }
        guard cscdListLength + segmentListLength <= Self.maximumDescriptorListLength else {
            return .checkCondition(CopySense.parameterListLengthError)
        }
        guard inlineDataLength == 0 else { return .checkCondition(CopySense.inlineDataLengthExceeded) }

        let targets: [CopyTarget]
        let segments: [Segment]
        switch parseCSCDs(p, from: 16, length: cscdListLength, resolve: resolve) {
        case .failure(let failure): return .checkCondition(failure.sense)
        case .success(let parsed): targets = parsed
        }
        switch parseSegments(p, from: 16 + cscdListLength, length: segmentListLength, targets: targets) {
        case .failure(let failure): return .checkCondition(failure.sense)
        case .success(let parsed): segments = parsed
        }

        // LIST ID USAGE 00b and 10b make the list identifier unique among this nexus's copies.
        let key = ListKey(initiatorPort: nexus.initiatorPortName, targetPort: nexus.targetPortName, listID: listID)
        let tracked = listIDUsage != 0x03
        let admitted: SenseData? = state.withLock { state in
            if tracked, let existing = state.lists[key], existing.status == .inProgress {
                return CopySense.operationInProgress
            }
            guard state.running < Self.maximumConcurrentCopies else {
                return SenseData(key: .illegalRequest, asc: 0x55, ascq: 0x03)  // INSUFFICIENT RESOURCES
            }
            state.running += 1
            if tracked {
                state.sequence += 1
                state.lists[key] = CopyRecord(
                    status: .inProgress, segmentsProcessed: 0, bytesTransferred: 0, sense: nil,
                    holdResults: listIDUsage == 0x00, sequence: state.sequence)
            }
            return nil
        }
        if let admitted { return .checkCondition(admitted) }

        var processed = 0
        var transferred: UInt64 = 0
        var failure: SenseData?
        for segment in segments {
            if let sense = await copy(segment, targets: targets, transferred: &transferred) {
                failure = sense
                break
            }
            processed += 1
        }

        state.withLock { state in
            state.running -= 1
            guard tracked, var record = state.lists[key] else { return }
            guard record.holdResults else {
                state.lists[key] = nil
                return
            }
            record.status = failure == nil ? .completed : .failed
            record.segmentsProcessed = processed
            record.bytesTransferred = transferred
            record.sense = failure
            state.lists[key] = record
            Self.trimHeldLists(&state)
        }
        if let failure { return .checkCondition(failure) }
        return .good
    }

    /// Drops the oldest finished records beyond `heldListLimit`.
    private static func trimHeldLists(_ state: inout State) {
        let finished = state.lists.filter { $0.value.status != .inProgress }
        guard finished.count > heldListLimit else { return }
        for (key, _) in finished.sorted(by: { $0.value.sequence < $1.value.sequence }).prefix(
            finished.count - heldListLimit)
        {
            state.lists[key] = nil
        }
    }

    /// Parses the CSCD descriptor list (SPC-4 §6.4.5): only identification
    /// descriptor CSCDs (E4h) naming a block device by an NAA designator.
    private func parseCSCDs(_ p: [UInt8], from start: Int, length: Int, resolve: CopyTargetResolver)
        -> Result<[CopyTarget], CopyFailure>
    {
        // Count first: too many descriptors is reported before their contents.
        var offsets: [Int] = []
        var offset = start
        while offset < start + length {
            offsets.append(offset)
            offset += Self.cscdDescriptorLength(p[offset])
        }
        guard offsets.count <= Self.maximumCSCDDescriptorCount else {
            return .failure(CopyFailure(CopySense.tooManyTargetDescriptors))
        }
        guard offset == start + length else { return .failure(CopyFailure(CopySense.parameterListLengthError)) }

        var targets: [CopyTarget] = []
        for at in offsets {
            guard p[at] == Self.identificationDescriptorCSCD else {
                return .failure(CopyFailure(CopySense.unsupportedTargetDescriptorType))
            }
            // LU ID TYPE (byte 1 bits 7-6) is ignored: SPC-4 §6.4.5.1 makes the
            // designator, not a LUN, identify the copy target (libiscsi's
            // ValidTgtDescr expects GOOD from an SPC-4 device).
            // NUL: a null device cannot source or sink block data.
            guard p[at + 1] & 0x20 == 0 else { return .failure(CopyFailure(CopySense.targetNotReachable)) }
            // PERIPHERAL DEVICE TYPE 00h: direct-access block device.
            guard p[at + 1] & 0x1F == 0 else { return .failure(CopyFailure(CopySense.targetNotReachable)) }
            // Designation descriptor (SPC-4 §7.8.6.1) in bytes 4-27: an NAA designator with LU association.
            let designatorType = p[at + 5] & 0x0F
            let association = (p[at + 5] >> 4) & 0x03
            let designatorLength = Int(p[at + 7])
            guard designatorType == 0x3, association == 0, designatorLength > 0, designatorLength <= 20 else {
                return .failure(CopyFailure(CopySense.targetNotReachable))
            }
            let designator = Array(p[(at + 8)..<(at + 8 + designatorLength)])
            guard let resolved = resolve(designator) else { return .failure(CopyFailure(CopySense.targetNotReachable)) }
            // Block device type-specific parameters (SPC-4 §6.4.5.2): DISK BLOCK LENGTH.
            let blockLength = Int(p[at + 29]) << 16 | Int(p[at + 30]) << 8 | Int(p[at + 31])
            guard blockLength == resolved.device.blockSize else {
                return .failure(CopyFailure(CopySense.invalidFieldInParameterList(byte: at + 29)))
            }
            targets.append(CopyTarget(device: resolved.device, readOnly: resolved.readOnly, blockLength: blockLength))
        }
        return .success(targets)
    }

    /// Length of a CSCD descriptor by its type code (SPC-4 §6.4.5, table 112).
    private static func cscdDescriptorLength(_ type: UInt8) -> Int {
        type == 0xEA || type == 0xEB ? 64 : 32
    }

    /// Parses the segment descriptor list (SPC-4 §6.4.6): block→block (02h) only.
    private func parseSegments(_ p: [UInt8], from start: Int, length: Int, targets: [CopyTarget])
        -> Result<[Segment], CopyFailure>
    {
        var offsets: [Int] = []
        var offset = start
        while offset + 4 <= start + length {
            offsets.append(offset)
            offset += 4 + CopySense.be16(p, offset + 2)
        }
        guard offsets.count <= Self.maximumSegmentDescriptorCount else {
            return .failure(CopyFailure(CopySense.tooManySegmentDescriptors))
        }
        guard offset == start + length else { return .failure(CopyFailure(CopySense.parameterListLengthError)) }

        var segments: [Segment] = []
        for at in offsets {
            guard p[at] == Self.blockToBlockSegment else {
                return .failure(CopyFailure(CopySense.unsupportedSegmentDescriptorType))
            }
            guard CopySense.be16(p, at + 2) == 0x18 else {
                return .failure(CopyFailure(CopySense.invalidFieldInParameterList(byte: at + 2)))
            }
            let sourceIndex = CopySense.be16(p, at + 4)
            let destinationIndex = CopySense.be16(p, at + 6)
            guard sourceIndex < targets.count, destinationIndex < targets.count else {
                return .failure(CopyFailure(CopySense.targetNotReachable))
            }
            let source = targets[sourceIndex]
            let destination = targets[destinationIndex]
            // DC: NUMBER OF BLOCKS counts destination blocks instead of source blocks.
            let countsDestination = p[at + 1] & 0x02 != 0
            let blocks = CopySense.be16(p, at + 10)
            let length = blocks * (countsDestination ? destination.blockLength : source.blockLength)
            guard length % source.blockLength == 0, length % destination.blockLength == 0 else {
                return .failure(CopyFailure(CopySense.unexpectedInexactSegment))
            }
            guard length <= Self.maximumSegmentLength else {
                return .failure(CopyFailure(CopySense.invalidFieldInParameterList(byte: at + 10)))
            }
            let sourceLBA = CopySense.be64(p, at + 12)
            let destinationLBA = CopySense.be64(p, at + 20)
            let sourceBlocks = UInt64(length / source.blockLength)
            let destinationBlocks = UInt64(length / destination.blockLength)
            guard sourceLBA <= source.device.blockCount, sourceBlocks <= source.device.blockCount - sourceLBA,
                destinationLBA <= destination.device.blockCount,
                destinationBlocks <= destination.device.blockCount - destinationLBA
            else {
                return .failure(CopyFailure(CopySense.segmentOutOfRange))
            }
            if destination.readOnly && length > 0 {
                return .failure(CopyFailure(SenseData(key: .copyAborted, asc: 0x27, ascq: 0x00)))
            }
            segments.append(
                Segment(
                    source: sourceIndex, destination: destinationIndex,
                    sourceOffset: sourceLBA * UInt64(source.blockLength),
                    destinationOffset: destinationLBA * UInt64(destination.blockLength), length: length))
        }
        return .success(segments)
    }

    /// Copies one segment in `chunkLength` pieces; returns the sense of a failure.
    private func copy(_ segment: Segment, targets: [CopyTarget], transferred: inout UInt64) async -> SenseData? {
        let source = targets[segment.source].device
        let destination = targets[segment.destination].device
        // On one device with the destination inside the source range, copy from the
        // end, so no chunk is read after it has been overwritten (memmove semantics).
        let backwards =
            source === destination && segment.destinationOffset > segment.sourceOffset
            && segment.destinationOffset < segment.sourceOffset + UInt64(segment.length)
        var done = 0
        while done < segment.length {
            let length = min(Self.chunkLength, segment.length - done)
            let position = UInt64(backwards ? segment.length - done - length : done)
            do {
                let data = try await source.read(offset: segment.sourceOffset + position, length: length)
                guard data.readableBytes == length else {
                    return SenseData(key: .copyAborted, asc: 0x11, ascq: 0x00)
                }
                try await destination.write(offset: segment.destinationOffset + position, data: data, fua: false)
            } catch {
                return CopySense.copyAborted(error)
            }
            done += length
            transferred += UInt64(length)
        }
        return nil
    }

    // MARK: - RECEIVE COPY RESULTS (SPC-4 §6.18)

    /// 84h: service actions 00h COPY STATUS, 03h OPERATING PARAMETERS, 04h FAILED SEGMENT DETAILS.
    func receiveCopyResults(cdb: [UInt8], nexus: ITNexus) -> SCSIResult {
        guard cdb.count >= 16 else { return .checkCondition(CopySense.invalidFieldInCDB(byte: 0)) }
        let listID = cdb[2]
        let allocationLength = CopySense.be32(cdb, 10)
        let key = ListKey(initiatorPort: nexus.initiatorPortName, targetPort: nexus.targetPortName, listID: listID)
        let bytes: [UInt8]
        switch cdb[1] & 0x1F {
        case 0x00:
            guard
                let record = state.withLock({ state -> CopyRecord? in
                    guard let record = state.lists[key], record.holdResults else { return nil }
                    // Status of a finished copy is reported once; a failure stays for FAILED SEGMENT DETAILS.
                    if record.status == .completed { state.lists[key] = nil }
                    return record
                })
            else { return .checkCondition(CopySense.invalidFieldInCDB(byte: 2)) }
            bytes = Self.copyStatus(record)
        case 0x03:
            bytes = Self.operatingParameters()
        case 0x04:
            guard
                let record = state.withLock({ state -> CopyRecord? in
                    guard let record = state.lists[key], record.holdResults, record.status != .inProgress else {
                        return nil
                    }
                    state.lists[key] = nil
                    return record
                })
            else { return .checkCondition(CopySense.invalidFieldInCDB(byte: 2)) }
            bytes = Self.failedSegmentDetails(record)
        default:
            return .checkCondition(CopySense.invalidFieldInCDB(byte: 1))
        }
        return .good(data: ByteBuffer(bytes: bytes.prefix(allocationLength)))
    }

    /// The I_T nexus is gone: its held copy results go with it.
    func nexusReleased(_ nexus: ITNexus) {
        state.withLock { state in
            state.lists = state.lists.filter {
                !($0.key.initiatorPort == nexus.initiatorPortName && $0.key.targetPort == nexus.targetPortName
                    && $0.value.status != .inProgress)
            }
        }
    }

    /// COPY STATUS parameter data (SPC-4 §6.18.3, table 361).
    private static func copyStatus(_ record: CopyRecord) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 12)
        CopySense.put32(8, &b, at: 0)
        b[4] = record.status.rawValue  // HDD = 0
        CopySense.put16(record.segmentsProcessed, &b, at: 5)
        // TRANSFER COUNT UNITS: bytes while they fit, else kibibytes (01h).
        if record.bytesTransferred <= UInt64(UInt32.max) {
            b[7] = 0x00
            CopySense.put32(Int(record.bytesTransferred), &b, at: 8)
        } else {
            b[7] = 0x01
            CopySense.put32(Int(min(record.bytesTransferred >> 10, UInt64(UInt32.max))), &b, at: 8)
        }
        return b
    }

    /// OPERATING PARAMETERS parameter data (SPC-4 §6.18.4, table 363).
    private static func operatingParameters() -> [UInt8] {
        let implemented = [blockToBlockSegment, identificationDescriptorCSCD]
        var b = [UInt8](repeating: 0, count: 44)
        CopySense.put32(40 + implemented.count, &b, at: 0)  // AVAILABLE DATA
        CopySense.put16(maximumCSCDDescriptorCount, &b, at: 8)
        CopySense.put16(maximumSegmentDescriptorCount, &b, at: 10)
        CopySense.put32(maximumDescriptorListLength, &b, at: 12)
        CopySense.put32(maximumSegmentLength, &b, at: 16)
        CopySense.put32(0, &b, at: 20)  // MAXIMUM INLINE DATA LENGTH
        CopySense.put32(0, &b, at: 24)  // HELD DATA LIMIT: no RECEIVE DATA
        CopySense.put32(0, &b, at: 28)  // MAXIMUM STREAM DEVICE TRANSFER SIZE
        CopySense.put16(maximumConcurrentCopies, &b, at: 34)  // TOTAL CONCURRENT COPIES
        b[36] = UInt8(maximumConcurrentCopies)  // MAXIMUM CONCURRENT COPIES
        b[37] = dataSegmentGranularityLog2
        b[38] = 0  // INLINE DATA GRANULARITY
        b[39] = 0  // HELD DATA GRANULARITY
        b[43] = UInt8(implemented.count)
        return b + implemented
    }

    /// FAILED SEGMENT DETAILS parameter data (SPC-4 §6.18.5, table 365):
    /// the status and sense data of a failed copy; only the header for a successful one.
    private static func failedSegmentDetails(_ record: CopyRecord) -> [UInt8] {
        guard let sense = record.sense else { return [0, 0, 0, 0] }
        let senseBytes = sense.fixedFormatBytes
        var b = [UInt8](repeating: 0, count: 60)
        CopySense.put32(56 + senseBytes.count, &b, at: 0)
        b[56] = SCSIStatus.checkCondition.rawValue
        CopySense.put16(senseBytes.count, &b, at: 58)
        return b + senseBytes
    }
}

/// A SenseData carried through `Result` (which needs an `Error`).
struct CopyFailure: Error {
    var sense: SenseData
    init(_ sense: SenseData) { self.sense = sense }
}
