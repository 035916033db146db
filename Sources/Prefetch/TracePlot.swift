// Plots of a trace's reads, LBA over time, for `livemount trace show --plot` (text) and `--png FILE`.

/// Draws a trace's reads as LBA (y, growing upwards) over issue time (x).
public enum TracePlot {
    // MARK: - Text

    /// A text plot of `width` × `height` character cells with axis labels. A cell shows how many reads
    /// touched it: `.` one, `:` two or three, `o` four to nine, `#` ten or more. A read spanning several rows
    /// marks all of them.
    public static func text(_ trace: Trace, width: Int = 72, height: Int = 20) -> String {
        let width = max(width, 8)
        let height = max(height, 4)
        guard let frame = Frame(trace) else { return "(no reads)\n" }
        var counts = [[Int]](repeating: [Int](repeating: 0, count: width), count: height)
        for read in trace.reads {
            let column = frame.column(read.issued, cells: width)
            let rows = frame.rows(read, cells: height)
            for row in rows { counts[row][column] += 1 }
        }
        let top = "\(frame.maxLBA)"
        let middle = "\(frame.minLBA + (frame.maxLBA - frame.minLBA) / 2)"
        let bottom = "\(frame.minLBA)"
        let labelWidth = max(top.count, bottom.count, 3)
        func label(_ text: String) -> String { String(repeating: " ", count: labelWidth - text.count) + text }

        var lines: [String] = [label("LBA")]
        for row in stride(from: height - 1, through: 0, by: -1) {
            let name =
                row == height - 1
                ? label(top) : row == 0 ? label(bottom) : row == height / 2 ? label(middle) : label("")
            let cells = counts[row].map { count -> Character in
                switch count {
                case 0: " "
                case 1: "."
                case 2...3: ":"
                case 4...9: "o"
                default: "#"
                }
            }
            lines.append(name + " |" + String(cells))
        }
        lines.append(label("") + " +" + String(repeating: "-", count: width))
        let start = formatSeconds(0)
        let mid = formatSeconds(frame.maxTime / 2)
        let end = formatSeconds(frame.maxTime)
        var axis = [Character](repeating: " ", count: width + 2)
        func place(_ text: String, at position: Int) {
            let characters = Array(text)
            let from = max(0, min(position, axis.count - characters.count))
            for (offset, character) in characters.enumerated() where from + offset < axis.count {
                axis[from + offset] = character
            }
        }
        place(start, at: 0)
        place(mid, at: width / 2 - mid.count / 2)
        place(end, at: axis.count - end.count)
        lines.append(label("") + String(axis).replacingTrailingSpaces())
        lines.append(label("") + "  issue time; . 1 read  : 2-3  o 4-9  # 10+")
        return lines.joined(separator: "\n") + "\n"
    }

    private static func formatSeconds(_ microseconds: UInt64) -> String {
        let tenths = (microseconds + 50_000) / 100_000
        return "\(tenths / 10).\(tenths % 10) s"
    }

    /// The ranges a plot spans: LBAs from the lowest read to the end of the highest, times from 0 to the last
    /// issue.
    private struct Frame {
        var minLBA: UInt64
        var maxLBA: UInt64
        var maxTime: UInt64

        init?(_ trace: Trace) {
            guard !trace.reads.isEmpty else { return nil }
            minLBA = .max
            maxLBA = 0
            maxTime = 0
            for read in trace.reads {
                minLBA = min(minLBA, read.lba)
                maxLBA = max(maxLBA, Self.lastBlock(read))
                maxTime = max(maxTime, read.issued)
            }
        }

        static func lastBlock(_ read: TraceRead) -> UInt64 {
            let (end, overflow) = read.lba.addingReportingOverflow(UInt64(max(read.blocks, 1)) - 1)
            return overflow ? .max : end
        }

        /// Scales `value` in `0...range` to `0..<cells`.
        static func scale(_ value: UInt64, range: UInt64, cells: Int) -> Int {
            guard range > 0 else { return 0 }
            let scaled = Double(value) / Double(range) * Double(cells - 1)
            return min(cells - 1, max(0, Int(scaled.rounded())))
        }

        func column(_ time: UInt64, cells: Int) -> Int { Self.scale(time, range: maxTime, cells: cells) }

        func rows(_ read: TraceRead, cells: Int) -> ClosedRange<Int> {
            let range = maxLBA - minLBA
            let low = Self.scale(read.lba - minLBA, range: range, cells: cells)
            let high = Self.scale(Self.lastBlock(read) - minLBA, range: range, cells: cells)
            return low...max(low, high)
        }
    }

    // MARK: - PNG

    /// A PNG image (RGB, `width` × `height` pixels) of the reads: one dot per read, coloured by source
    /// (backup red, cache green, overlay blue, zero grey; a prefetched read dark green), on white with axes and
    /// a tick every tenth of each axis. Written by hand: stored (uncompressed) deflate blocks inside a zlib
    /// stream (RFC 1950, RFC 1951 §3.2.4), chunks with CRC-32 (PNG spec §5.3).
    public static func png(_ trace: Trace, width: Int = 800, height: Int = 400) -> [UInt8] {
        let width = max(width, 64)
        let height = max(height, 64)
        let margin = 24
        var canvas = Canvas(width: width, height: height)
        let plotWidth = width - 2 * margin
        let plotHeight = height - 2 * margin
        // Axes and ticks.
        for x in margin..<(width - margin) { canvas.set(x, height - margin, [0x40, 0x40, 0x40]) }
        for y in margin..<(height - margin + 1) { canvas.set(margin - 1, y, [0x40, 0x40, 0x40]) }
        for tick in 0...10 {
            let x = margin + tick * (plotWidth - 1) / 10
            let y = height - margin - tick * (plotHeight - 1) / 10
            for d in 1...4 {
                canvas.set(x, height - margin + d, [0x40, 0x40, 0x40])
                canvas.set(margin - 1 - d, y, [0x40, 0x40, 0x40])
            }
        }
        if let frame = Frame(trace) {
            for read in trace.reads {
                let color: [UInt8] =
                    switch read.source {
                    case .backup: [0xD0, 0x20, 0x20]
                    case .cache: read.prefetched ? [0x10, 0x70, 0x10] : [0x30, 0xB0, 0x30]
                    case .overlay: [0x20, 0x40, 0xD0]
                    case .zero: [0x90, 0x90, 0x90]
                    }
                let x = margin + frame.column(read.issued, cells: plotWidth)
                let rows = frame.rows(read, cells: plotHeight)
                for row in rows {
                    let y = height - margin - 1 - row
                    canvas.set(x, y, color)
                    canvas.set(x + 1, y, color)
                    canvas.set(x, y - 1, color)
                    canvas.set(x + 1, y - 1, color)
                }
            }
        }
        return PNGEncoder.encode(rgb: canvas.pixels, width: width, height: height)
    }

    /// An RGB raster, white to start.
    private struct Canvas {
        let width: Int
        let height: Int
        var pixels: [UInt8]

        init(width: Int, height: Int) {
            self.width = width
            self.height = height
            pixels = [UInt8](repeating: 0xFF, count: width * height * 3)
        }

        mutating func set(_ x: Int, _ y: Int, _ color: [UInt8]) {
            guard x >= 0, x < width, y >= 0, y < height else { return }
            let base = (y * width + x) * 3
            pixels[base] = color[0]
            pixels[base + 1] = color[1]
            pixels[base + 2] = color[2]
        }
    }
}

/// A minimal PNG writer: 8-bit RGB, no filtering, stored deflate blocks.
enum PNGEncoder {
    static let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

    /// The PNG file for `rgb` (row-major, 3 bytes a pixel).
    static func encode(rgb: [UInt8], width: Int, height: Int) -> [UInt8] {
        var raw: [UInt8] = []
        raw.reserveCapacity((width * 3 + 1) * height)
        for y in 0..<height {
            raw.append(0)  // filter type None (PNG spec §9.2)
            raw.append(contentsOf: rgb[(y * width * 3)..<((y + 1) * width * 3)])
        }
        var header: [UInt8] = []
        header.appendBigEndian(UInt32(width))
        header.appendBigEndian(UInt32(height))
        header += [8, 2, 0, 0, 0]  // bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace
        var file = signature
        file += chunk("IHDR", header)
        file += chunk("IDAT", zlibStored(raw))
        file += chunk("IEND", [])
        return file
    }

    /// One chunk: length, type, data, CRC-32 of type and data (PNG spec §5.3).
    static func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.appendBigEndian(UInt32(data.count))
        let typed = Array(type.utf8) + data
        out += typed
        out.appendBigEndian(crc32(typed))
        return out
    }

    /// A zlib stream of stored deflate blocks (RFC 1950 §2.2, RFC 1951 §3.2.4), ending in the Adler-32.
    static func zlibStored(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [0x78, 0x01]
        var offset = 0
        repeat {
            let count = min(65_535, data.count - offset)
            let final: UInt8 = offset + count == data.count ? 1 : 0
            out.append(final)  // BFINAL, BTYPE 00 (stored)
            out.append(UInt8(count & 0xFF))
            out.append(UInt8(count >> 8))
            out.append(UInt8(~count & 0xFF))
            out.append(UInt8((~count >> 8) & 0xFF))
            out += data[offset..<(offset + count)]
            offset += count
        } while offset < data.count
        out.appendBigEndian(adler32(data))
        return out
    }

    private static let crcTable: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 == 1 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    /// CRC-32 (ISO 3309, as PNG uses it).
    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes { crc = crcTable[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }

    /// Adler-32 (RFC 1950 §8).
    static func adler32(_ bytes: [UInt8]) -> UInt32 {
        var a: UInt32 = 1
        var b: UInt32 = 0
        var index = 0
        while index < bytes.count {
            // 5552 bytes is the most that cannot overflow before the modulo (RFC 1950 §9, zlib's NMAX).
            let end = min(index + 5552, bytes.count)
            for byte in bytes[index..<end] {
                a += UInt32(byte)
                b += a
            }
            a %= 65_521
            b %= 65_521
            index = end
        }
        return b << 16 | a
    }
}

extension [UInt8] {
    fileprivate mutating func appendBigEndian(_ value: UInt32) {
        append(UInt8(value >> 24))
        append(UInt8((value >> 16) & 0xFF))
        append(UInt8((value >> 8) & 0xFF))
        append(UInt8(value & 0xFF))
    }
}

extension String {
    fileprivate func replacingTrailingSpaces() -> String {
        var copy = self
        while copy.last == " " { copy.removeLast() }
        return copy
    }
}
