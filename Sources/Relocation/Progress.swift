// Pure formatting of relocation figures for `livemount relocate status` (issue 5): the one-line progress bar, the
// table of all relocations, byte sizes, rates and ETAs. No I/O here, so every piece is tested by feeding it values.

// MARK: - Naming a mount

/// A mounted LUN as the CLI names it: `TARGET/LUN` (`iqn.2026-11.org.livemount:web/0`).
///
/// The split is at the last '/', so a target name containing '/' (none valid by RFC 7143 §4.2.7, but the daemon
/// decides) still parses.
public struct MountAddress: Sendable, Equatable, CustomStringConvertible {
    public var target: String
    public var lun: UInt64

    public init(target: String, lun: UInt64) {
        self.target = target
        self.lun = lun
    }

    /// Parses `TARGET/LUN`; nil when there is no '/', the target is empty, or LUN is not a decimal number.
    public init?(_ text: String) {
        guard let slash = text.lastIndex(of: "/") else { return nil }
        let target = text[..<slash]
        let number = text[text.index(after: slash)...]
        guard !target.isEmpty, !number.isEmpty, number.allSatisfy({ $0.isASCII && $0.isNumber }),
            let lun = UInt64(number)
        else { return nil }
        self.init(target: String(target), lun: lun)
    }

    public var description: String { "\(target)/\(lun)" }
}

// MARK: - Phases

extension RelocationPhase {
    /// Whether `status --watch` (and `relocate --wait`) stops at this phase: the final ones, and `failed`, which
    /// waits for an operator's `resume`.
    public var endsWatch: Bool { isFinal || self == .failed }
}

// MARK: - Formatting

/// Text for relocation figures: sizes in binary units, rates in MiB/s, ETAs as h:mm:ss, a bar of `#` and `-`.
public enum RelocationProgressFormat {
    /// What an unknown ETA shows.
    public static let unknownETA = "-:--:--"

    /// The share of the disk that is on the destination, 0...1: the first pass's progress (`bytesDone`), less
    /// the regions waiting to be copied again (`bytesLeft` counts both). A completed relocation is 1.
    public static func fraction(_ status: RelocationStatus) -> Double {
        if status.phase == .completed { return 1 }
        guard status.bytesTotal > 0 else { return 0 }
        let total = status.bytesTotal
        let done = min(status.bytesDone, total)
        let settled = total - min(status.bytesLeft, total)
        return Double(min(done, settled)) / Double(total)
    }

    /// `42.3%` (one decimal; never shows 100.0% before the fraction really is 1).
    public static func percent(_ fraction: Double) -> String {
        let clamped = fraction.isFinite ? min(max(fraction, 0), 1) : 0
        var tenths = (clamped * 1000).rounded(.down)
        if tenths >= 1000, clamped < 1 { tenths = 999 }
        return fixed(tenths / 10, decimals: 1) + "%"
    }

    /// `[######----]`: `width` cells between the brackets, filled in proportion to `fraction` (rounded down, so
    /// a full bar means done).
    public static func bar(_ fraction: Double, width: Int) -> String {
        let cells = max(width, 0)
        let clamped = fraction.isFinite ? min(max(fraction, 0), 1) : 0
        let filled = min(cells, Int((clamped * Double(cells)).rounded(.down)))
        return "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: cells - filled) + "]"
    }

    /// A byte count with a binary unit and three significant digits: `512 B`, `1.50 KiB`, `12.3 MiB`,
    /// `512 MiB`, `2.00 GiB`.
    public static func bytes(_ count: UInt64) -> String {
        let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        guard count >= 1024 else { return "\(count) B" }
        var value = Double(count) / 1024
        var unit = 0
        while unit + 1 < units.count, value.rounded() >= 1024 {
            value /= 1024
            unit += 1
        }
        return significant(value) + " " + units[unit]
    }

    /// `112.4 MiB/s` (a negative or non-finite rate shows as 0).
    public static func rate(_ bytesPerSecond: Double) -> String {
        let value = bytesPerSecond.isFinite && bytesPerSecond > 0 ? bytesPerSecond / 1_048_576 : 0
        return fixed(value, decimals: 1) + " MiB/s"
    }

    /// `h:mm:ss` (`0:00:05`, `1:02:03`, `27:46:40`), rounded up to the next second so that a few milliseconds
    /// to go never show as done; `-:--:--` when unknown (nil, negative or not finite).
    public static func eta(_ seconds: Double?) -> String {
        guard let seconds, seconds.isFinite, seconds >= 0, seconds < Double(Int64.max / 2) else { return unknownETA }
        let whole = Int64(seconds.rounded(.up))
        let hours = whole / 3600
        let minutes = whole / 60 % 60
        let rest = whole % 60
        return "\(hours):" + twoDigits(minutes) + ":" + twoDigits(rest)
    }

    /// The progress line of `status --watch` without the bar's width settled: phase, percent, bar, bytes
    /// done/total, rate, ETA, dirty regions and back-offs, then the error when there is one.
    ///
    /// `copying    42.3% [############----------------]  1.23 GiB / 2.91 GiB  112.4 MiB/s  ETA 0:00:15  dirty 3  back-offs 2`
    public static func line(_ status: RelocationStatus, barWidth: Int = 30) -> String {
        let fraction = fraction(status)
        let done = status.phase == .completed ? status.bytesTotal : min(status.bytesDone, status.bytesTotal)
        var parts = [
            pad(status.phase.rawValue, to: phaseWidth) + " " + pad(percent(fraction), to: 6, left: true) + " "
                + bar(fraction, width: barWidth),
            // Fixed widths, so that a line redrawn in place keeps its columns and its bar width.
            pad(bytes(done), to: 8, left: true) + " / " + bytes(status.bytesTotal),
            pad(rate(status.phase == .completed ? 0 : status.rateBytesPerSecond), to: 11, left: true),
            "ETA " + pad(status.phase == .completed ? eta(0) : eta(status.etaSeconds), to: 7, left: true),
            "dirty \(status.dirtyRegions)",
            "back-offs \(status.backoffs)",
        ]
        if status.verifyMismatches > 0 { parts.append("mismatches \(status.verifyMismatches)") }
        if let error = status.error, !error.isEmpty { parts.append("error: \(error)") }
        return parts.joined(separator: "  ")
    }

    /// The progress line made to fit `columns` terminal columns (so a `\r` redraw never wraps): the bar takes
    /// what the rest leaves, between 10 and 40 cells; on a very narrow terminal the line is cut. An error text
    /// does not shrink the bar (it is cut instead), so the bar keeps its width when one appears.
    public static func line(_ status: RelocationStatus, fitting columns: Int) -> String {
        var plain = status
        plain.error = nil
        let fixedPart = line(plain, barWidth: 0).count
        let width = min(40, max(10, columns - 1 - fixedPart))
        let text = line(status, barWidth: width)
        guard columns > 1, text.count > columns - 1 else { return text }
        return String(text.prefix(columns - 1))
    }

    /// The table of `livemount relocate status` without a mount: a header and one aligned row per relocation.
    public static func table(_ statuses: [RelocationStatus]) -> [String] {
        let header = ["MOUNT", "PHASE", "DONE", "COPIED", "RATE", "ETA", "DIRTY", "BACK-OFFS", "DESTINATION"]
        let rows = statuses.map { status -> [String] in
            let done = status.phase == .completed ? status.bytesTotal : min(status.bytesDone, status.bytesTotal)
            return [
                MountAddress(target: status.target, lun: status.lun).description,
                status.phase.rawValue,
                percent(fraction(status)),
                "\(bytes(done)) / \(bytes(status.bytesTotal))",
                rate(status.phase == .completed ? 0 : status.rateBytesPerSecond),
                status.phase == .completed ? eta(0) : eta(status.etaSeconds),
                "\(status.dirtyRegions)",
                "\(status.backoffs)",
                status.destination + (status.error.map { $0.isEmpty ? "" : "  (\($0))" } ?? ""),
            ]
        }
        let all = [header] + rows
        let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
        let rightAligned: Set<Int> = [2, 4, 5, 6, 7]
        return all.map { row in
            row.indices.map { column in
                column == row.count - 1
                    ? row[column] : pad(row[column], to: widths[column], left: rightAligned.contains(column))
            }.joined(separator: "  ")
        }
    }

    // MARK: Helpers

    /// The widest phase name, so that the percent after it stays in one column while the phase changes.
    static let phaseWidth = RelocationPhase.allCases.map(\.rawValue.count).max() ?? 0

    /// Three significant digits: two decimals below 10, one below 100, none above.
    static func significant(_ value: Double) -> String {
        if (value * 100).rounded() < 1000 { return fixed(value, decimals: 2) }
        if (value * 10).rounded() < 1000 { return fixed(value, decimals: 1) }
        return fixed(value, decimals: 0)
    }

    /// `value` rounded to `decimals` places, without Foundation's `String(format:)`.
    static func fixed(_ value: Double, decimals: Int) -> String {
        guard value.isFinite else { return "0" }
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        guard scaled < 9e18 else { return value < 0 ? "-inf" : "inf" }
        let units = UInt64(scaled)
        let divisor = UInt64(scale)
        let sign = value < 0 && units > 0 ? "-" : ""
        guard decimals > 0 else { return sign + "\(units)" }
        let fraction = String(units % divisor)
        return sign + "\(units / divisor)." + String(repeating: "0", count: decimals - fraction.count) + fraction
    }

    private static func twoDigits(_ value: Int64) -> String { value < 10 ? "0\(value)" : "\(value)" }

    private static func pad(_ text: String, to width: Int, left: Bool = false) -> String {
        let padding = String(repeating: " ", count: max(0, width - text.count))
        return left ? padding + text : text + padding
    }
}
