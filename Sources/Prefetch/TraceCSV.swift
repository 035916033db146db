// Boot traces as CSV: `livemount trace export` writes it, `livemount trace import` reads it back, and
// foreign traces (a header and rows, no metadata) import when the caller says what they are.

/// A CSV line that could not be read: the source name, the line number and the field, so the message reads
/// `x.csv line 12: lba: not a number: 'abc'`.
public struct TraceCSVError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file name (or other label) the text came from.
    public var source: String
    /// 1-based line number, when the problem is on one line.
    public var line: Int?
    /// The column or metadata key at fault, when there is one.
    public var field: String?
    /// What is wrong.
    public var reason: String

    public init(source: String, line: Int?, field: String?, reason: String) {
        self.source = source
        self.line = line
        self.field = field
        self.reason = reason
    }

    public var description: String {
        var text = source
        if let line { text += " line \(line)" }
        text += ": "
        if let field { text += "\(field): " }
        return text + reason
    }
}

/// The trace CSV format, version 1.
///
/// ```
/// # livemount-trace v1
/// # profile=web01
/// # vm=web01
/// # backup_id=17
/// # disk=disk0
/// # block_size=512
/// # chunk_size=1048576
/// # recorded_at=1714560000
/// # note=cold boot
/// issued_us,completed_us,lba,blocks,source,prefetched
/// 0,812,2048,8,backup,0
/// ```
///
/// Metadata lines come before the header, as `# key=value`. Text values escape `%` and every control
/// character as `%XX` (two hex digits of the UTF-8 byte), so a note with newlines, commas or `=` signs
/// round-trips. An absent `backup_id` or `disk` line means the trace has none. Other `#` lines, blank lines
/// and unknown keys are ignored, so later versions can add keys.
///
/// Rows: times in µs since the trace's start, the first LBA, the number of blocks, the source (`zero`,
/// `overlay`, `cache`, `backup`) and whether the read was prefetched (`0`/`1`). On import the header may
/// list the columns in any order; `issued_us`, `lba` and `blocks` are required, a missing `completed_us`
/// means "completed when issued", a missing `source` means `backup`, a missing `prefetched` means `0`.
/// Rows are sorted by issue time (stably) so the trace is in issue order.
public enum TraceCSV {
    /// The first line of an exported trace.
    public static let magic = "# livemount-trace v1"
    /// The columns, in export order.
    public static let columns = ["issued_us", "completed_us", "lba", "blocks", "source", "prefetched"]

    // MARK: - Export

    /// The trace as CSV text (with metadata), ending in a newline.
    public static func export(_ trace: Trace) -> String {
        let info = trace.info
        var text = magic + "\n"
        text.reserveCapacity(trace.reads.count * 32 + 256)
        text += "# profile=\(escape(info.profile))\n"
        text += "# vm=\(escape(info.vm))\n"
        if let backupID = info.backupID { text += "# backup_id=\(escape(backupID))\n" }
        if let disk = info.disk { text += "# disk=\(escape(disk))\n" }
        text += "# block_size=\(info.blockSize)\n"
        text += "# chunk_size=\(info.chunkSize)\n"
        text += "# recorded_at=\(info.recordedAt)\n"
        text += "# note=\(escape(info.note))\n"
        text += columns.joined(separator: ",") + "\n"
        for read in trace.reads {
            text += "\(read.issued),\(read.completed),\(read.lba),\(read.blocks),\(read.source.rawValue),"
            text += read.prefetched ? "1\n" : "0\n"
        }
        return text
    }

    /// `%` and control characters as `%XX`; everything else as it is.
    static func escape(_ value: String) -> String {
        var out = ""
        out.reserveCapacity(value.utf8.count)
        for scalar in value.unicodeScalars {
            if scalar == "%" || scalar.value < 0x20 || scalar.value == 0x7F {
                out += "%" + hex(UInt8(scalar.value))
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    private static func hex(_ byte: UInt8) -> String {
        let digits = Array("0123456789ABCDEF")
        return String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
    }

    /// Undoes `escape`; nil if a `%` is not followed by two hex digits or the bytes are not UTF-8.
    static func unescape(_ value: Substring) -> String? {
        guard value.contains("%") else { return String(value) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(value.utf8.count)
        var iterator = value.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                return nil
            }
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        default: nil
        }
    }

    // MARK: - Parse

    /// Reads a trace from CSV `text`; `source` names it in error messages (a file name).
    ///
    /// `defaults` supplies what the text's metadata does not say (a foreign trace has none): without it, the
    /// `profile` and `block_size` lines are required, `vm` defaults to the profile, `chunk_size` to 1 MiB,
    /// `recorded_at` to 0. The result's `info.id` is 0.
    public static func parse(
        _ text: String, source: String, defaults: TraceInfo? = nil
    ) throws(TraceCSVError) -> Trace {
        var metadata: [String: (value: String, line: Int)] = [:]
        var header: [Int]?  // column index in the row of each of `columns`, -1 when absent
        var headerCount = 0
        var reads: [TraceRead] = []
        var lineNumber = 0

        for rawLine in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            lineNumber += 1
            let line = rawLine.last == "\r" ? rawLine.dropLast() : rawLine
            if line.isEmpty { continue }
            if line.first == "#" {
                guard header == nil else { continue }
                if line == magic { continue }
                if line.hasPrefix("# livemount-trace ") {
                    throw TraceCSVError(
                        source: source, line: lineNumber, field: nil,
                        reason: "unsupported format '\(line.dropFirst(2))' (this version reads livemount-trace v1)")
                }
                var body = line.dropFirst()
                if body.first == " " { body = body.dropFirst() }
                guard let equals = body.firstIndex(of: "=") else { continue }
                let key = String(body[..<equals])
                guard let value = unescape(body[body.index(after: equals)...]) else {
                    throw TraceCSVError(
                        source: source, line: lineNumber, field: key, reason: "bad %-escape in '\(line)'")
                }
                metadata[key] = (value, lineNumber)
                continue
            }
            let fields = line.split(separator: ",", omittingEmptySubsequences: false)
            guard let order = header else {
                header = try parseHeader(fields, source: source, line: lineNumber)
                headerCount = fields.count
                continue
            }
            guard fields.count == headerCount else {
                throw TraceCSVError(
                    source: source, line: lineNumber, field: nil,
                    reason: "expected \(headerCount) fields, found \(fields.count)")
            }
            reads.append(try parseRow(fields, order: order, source: source, line: lineNumber))
        }
        guard header != nil else {
            throw TraceCSVError(
                source: source, line: nil, field: nil,
                reason: "no header line (expected \(columns.joined(separator: ",")))")
        }
        let info = try parseInfo(metadata, defaults: defaults, source: source)
        if !reads.isEmpty && zip(reads, reads.dropFirst()).contains(where: { $0.issued > $1.issued }) {
            reads = reads.enumerated().sorted { ($0.element.issued, $0.offset) < ($1.element.issued, $1.offset) }
                .map(\.element)
        }
        return Trace(info: info, reads: reads)
    }

    /// Maps each of `columns` to its index in the header (-1 when absent), checking the required ones.
    private static func parseHeader(
        _ fields: [Substring], source: String, line: Int
    ) throws(TraceCSVError) -> [Int] {
        let names = fields.map { $0.trimmingSpaces().lowercased() }
        for (index, name) in names.enumerated() {
            guard columns.contains(name) else {
                throw TraceCSVError(
                    source: source, line: line, field: nil,
                    reason: "unknown column '\(name)' in the header (columns: \(columns.joined(separator: ",")))")
            }
            guard names[..<index].firstIndex(of: name) == nil else {
                throw TraceCSVError(source: source, line: line, field: name, reason: "column given twice")
            }
        }
        let order = columns.map { names.firstIndex(of: $0) ?? -1 }
        for required in ["issued_us", "lba", "blocks"] where !names.contains(required) {
            throw TraceCSVError(
                source: source, line: line, field: nil,
                reason: "the header has no \(required) column (expected \(columns.joined(separator: ",")))")
        }
        return order
    }

    /// One row, given the header's column order.
    private static func parseRow(
        _ fields: [Substring], order: [Int], source: String, line: Int
    ) throws(TraceCSVError) -> TraceRead {
        func field(_ column: Int) -> Substring? { order[column] < 0 ? nil : fields[order[column]].trimmingSpaces() }
        func number<T: FixedWidthInteger>(_ column: Int, _ type: T.Type) throws(TraceCSVError) -> T? {
            guard let text = field(column) else { return nil }
            guard let value = T(text) else {
                let reason =
                    text.allSatisfy(\.isNumber) && !text.isEmpty
                    ? "out of range: '\(text)'" : "not a number: '\(text)'"
                throw TraceCSVError(source: source, line: line, field: columns[column], reason: reason)
            }
            return value
        }
        let issued = try number(0, UInt64.self) ?? 0
        let completed = try number(1, UInt64.self) ?? issued
        guard completed >= issued else {
            throw TraceCSVError(
                source: source, line: line, field: columns[1],
                reason: "\(completed) is before issued_us \(issued)")
        }
        let lba = try number(2, UInt64.self) ?? 0
        let blocks = try number(3, UInt32.self) ?? 0
        guard blocks > 0 else {
            throw TraceCSVError(source: source, line: line, field: columns[3], reason: "must be at least 1")
        }
        var readSource = ReadSource.backup
        if let text = field(4) {
            guard let parsed = ReadSource(rawValue: text.lowercased()) else {
                let known = ReadSource.allCases.map(\.rawValue).joined(separator: ", ")
                throw TraceCSVError(
                    source: source, line: line, field: columns[4], reason: "unknown source '\(text)' (one of \(known))")
            }
            readSource = parsed
        }
        var prefetched = false
        if let text = field(5) {
            switch text.lowercased() {
            case "0", "false", "no", "": prefetched = false
            case "1", "true", "yes": prefetched = true
            default:
                throw TraceCSVError(
                    source: source, line: line, field: columns[5], reason: "expected 0 or 1, found '\(text)'")
            }
        }
        return TraceRead(
            issued: issued, completed: completed, lba: lba, blocks: blocks, source: readSource, prefetched: prefetched)
    }

    /// The trace's description from its metadata lines, falling back on `defaults`.
    private static func parseInfo(
        _ metadata: [String: (value: String, line: Int)], defaults: TraceInfo?, source: String
    ) throws(TraceCSVError) -> TraceInfo {
        func integer(_ key: String, minimum: Int64) throws(TraceCSVError) -> Int64? {
            guard let entry = metadata[key] else { return nil }
            guard let value = Int64(entry.value) else {
                throw TraceCSVError(
                    source: source, line: entry.line, field: key, reason: "not a number: '\(entry.value)'")
            }
            guard value >= minimum else {
                throw TraceCSVError(source: source, line: entry.line, field: key, reason: "must be at least \(minimum)")
            }
            return value
        }
        guard let profile = metadata["profile"]?.value ?? defaults?.profile, !profile.isEmpty else {
            throw TraceCSVError(
                source: source, line: metadata["profile"]?.line, field: "profile",
                reason: "no '# profile=' line and no profile given")
        }
        guard let blockSize = try integer("block_size", minimum: 1).map(Int.init) ?? defaults?.blockSize else {
            throw TraceCSVError(
                source: source, line: nil, field: "block_size",
                reason: "no '# block_size=' line and no block size given")
        }
        let chunkSize = try integer("chunk_size", minimum: 1).map(Int.init) ?? defaults?.chunkSize ?? (1 << 20)
        let recordedAt = try integer("recorded_at", minimum: Int64.min) ?? defaults?.recordedAt ?? 0
        return TraceInfo(
            profile: profile, vm: metadata["vm"]?.value ?? defaults?.vm ?? profile,
            backupID: metadata["backup_id"]?.value ?? defaults?.backupID,
            disk: metadata["disk"]?.value ?? defaults?.disk, blockSize: blockSize, chunkSize: chunkSize,
            recordedAt: recordedAt, note: metadata["note"]?.value ?? defaults?.note ?? "")
    }
}

extension Substring {
    /// Without leading and trailing spaces and tabs.
    fileprivate func trimmingSpaces() -> Substring {
        var result = self
        while let first = result.first, first == " " || first == "\t" { result = result.dropFirst() }
        while let last = result.last, last == " " || last == "\t" { result = result.dropLast() }
        return result
    }
}
