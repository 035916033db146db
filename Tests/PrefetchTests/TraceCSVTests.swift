import Foundation
import Testing

@testable import Prefetch

@Suite("Trace CSV")
struct TraceCSVTests {
    @Test("export → parse → export is identical, and parse gives the trace back")
    func roundTrip() throws {
        let trace = sampleTrace(reads: 50)
        let text = TraceCSV.export(trace)
        let parsed = try TraceCSV.parse(text, source: "t.csv")
        #expect(parsed == trace)
        #expect(TraceCSV.export(parsed) == text)
    }

    @Test("the export starts with the metadata and the header")
    func layout() {
        let lines = TraceCSV.export(sampleTrace(reads: 1)).split(separator: "\n")
        #expect(
            Array(lines.prefix(11)) == [
                "# livemount-trace v1", "# profile=web01", "# vm=web01-vm", "# backup_id=17", "# disk=disk0",
                "# block_size=512", "# chunk_size=1048576", "# recorded_at=1714560000", "# note=cold boot",
                "issued_us,completed_us,lba,blocks,source,prefetched", "0,250,0,16,zero,1",
            ])
    }

    @Test(
        "any note and name round-trips",
        arguments: [
            "", "plain", "100% done", "%41 is not A", "line one\nline two\r\n", "a,b=c # d", "tab\there", " lead",
            "trail ", "ünïcødé — ✓", "\u{0}\u{1F}\u{7F}", "%", "%%25",
        ])
    func escaping(note: String) throws {
        var trace = sampleTrace(reads: 2)
        trace.info.note = note
        trace.info.profile = "p " + note
        trace.info.vm = note
        trace.info.disk = note
        trace.info.backupID = note
        let text = TraceCSV.export(trace)
        #expect(text.split(separator: "\n").count == 10 + 2)
        let parsed = try TraceCSV.parse(text, source: "t.csv")
        #expect(parsed == trace)
        #expect(TraceCSV.export(parsed) == text)
    }

    @Test("absent backup id and disk stay absent")
    func optionalFields() throws {
        var trace = sampleTrace(reads: 3)
        trace.info.backupID = nil
        trace.info.disk = nil
        let text = TraceCSV.export(trace)
        #expect(!text.contains("backup_id"))
        #expect(try TraceCSV.parse(text, source: "t.csv") == trace)
    }

    @Test("an empty trace round-trips")
    func empty() throws {
        let trace = Trace(info: sampleTrace().info, reads: [])
        let text = TraceCSV.export(trace)
        #expect(try TraceCSV.parse(text, source: "t.csv") == trace)
    }

    @Test("CRLF line ends parse the same")
    func crlf() throws {
        let trace = sampleTrace(reads: 4)
        let text = TraceCSV.export(trace).replacingOccurrences(of: "\n", with: "\r\n")
        #expect(try TraceCSV.parse(text, source: "t.csv") == trace)
    }

    @Test("a foreign CSV without metadata imports with the caller's profile and block size")
    func foreign() throws {
        let text = """
            lba, blocks, issued_us
            2048, 8, 300
            0, 1, 100

            4096, 16, 200
            """
        let defaults = TraceInfo(profile: "imported", vm: "guest", blockSize: 4_096, chunkSize: 65_536, recordedAt: 9)
        let trace = try TraceCSV.parse(text, source: "foreign.csv", defaults: defaults)
        #expect(trace.info == defaults)
        #expect(
            trace.reads == [
                TraceRead(issued: 100, completed: 100, lba: 0, blocks: 1, source: .backup, prefetched: false),
                TraceRead(issued: 200, completed: 200, lba: 4_096, blocks: 16, source: .backup, prefetched: false),
                TraceRead(issued: 300, completed: 300, lba: 2_048, blocks: 8, source: .backup, prefetched: false),
            ])
        #expect(throws: TraceCSVError.self) { try TraceCSV.parse(text, source: "foreign.csv") }
    }

    @Test("metadata wins over the caller's defaults")
    func metadataWins() throws {
        let trace = sampleTrace(reads: 2)
        let defaults = TraceInfo(profile: "other", vm: "x", blockSize: 4_096, chunkSize: 4_096, recordedAt: 1)
        #expect(try TraceCSV.parse(TraceCSV.export(trace), source: "t.csv", defaults: defaults) == trace)
    }

    /// The message of the error parsing `text` throws.
    private func failure(_ text: String, source: String = "x.csv") -> String? {
        do {
            _ = try TraceCSV.parse(text, source: source)
            return nil
        } catch {
            return error.description
        }
    }

    private let head = "# profile=p\n# block_size=512\nissued_us,completed_us,lba,blocks,source,prefetched\n"

    @Test("parse errors name the file, the line and the field")
    func errors() {
        #expect(failure(head + "0,1,2,3,backup,0\n1,2,abc,4,cache,1\n") == "x.csv line 5: lba: not a number: 'abc'")
        #expect(failure(head + "0,1,2,3,backup\n") == "x.csv line 4: expected 6 fields, found 5")
        #expect(failure(head + "0,1,2,0,backup,0\n") == "x.csv line 4: blocks: must be at least 1")
        #expect(failure(head + "0,1,2,99999999999,backup,0\n") == "x.csv line 4: blocks: out of range: '99999999999'")
        #expect(failure(head + "5,1,2,3,backup,0\n") == "x.csv line 4: completed_us: 1 is before issued_us 5")
        #expect(
            failure(head + "0,1,2,3,disk,0\n")
                == "x.csv line 4: source: unknown source 'disk' (one of zero, overlay, cache, backup)")
        #expect(failure(head + "0,1,2,3,cache,maybe\n") == "x.csv line 4: prefetched: expected 0 or 1, found 'maybe'")
        #expect(failure(head + "-1,1,2,3,cache,0\n") == "x.csv line 4: issued_us: not a number: '-1'")
        #expect(
            failure("# profile=p\n# block_size=abc\nissued_us,lba,blocks\n")
                == "x.csv line 2: block_size: not a number: 'abc'")
        #expect(
            failure("# profile=p\n# note=bad %G1\nissued_us,lba,blocks\n")
                == "x.csv line 2: note: bad %-escape in '# note=bad %G1'")
        #expect(
            failure("# block_size=512\nissued_us,lba,blocks\n")
                == "x.csv: profile: no '# profile=' line and no profile given")
        #expect(
            failure("# profile=p\nissued_us,lba,blocks\n")
                == "x.csv: block_size: no '# block_size=' line and no block size given")
        #expect(
            failure("# profile=p\n# block_size=512\n")
                == "x.csv: no header line (expected \(TraceCSV.columns.joined(separator: ",")))")
        #expect(
            failure("# profile=p\n# block_size=512\nissued_us,lba,when\n")
                == "x.csv line 3: unknown column 'when' in the header (columns: \(TraceCSV.columns.joined(separator: ",")))"
        )
        #expect(
            failure("# profile=p\n# block_size=512\nissued_us,blocks\n")
                == "x.csv line 3: the header has no lba column (expected \(TraceCSV.columns.joined(separator: ",")))")
        #expect(
            failure("# livemount-trace v2\n# profile=p\n")
                == "x.csv line 1: unsupported format 'livemount-trace v2' (this version reads livemount-trace v1)")
    }
}

@Suite("Trace plots")
struct TracePlotTests {
    @Test("the text plot puts low LBAs at the bottom, early reads on the left, and counts reads per cell")
    func text() {
        let info = TraceInfo(profile: "p", vm: "v", blockSize: 512, chunkSize: 65_536, recordedAt: 0)
        var reads = [TraceRead(issued: 0, completed: 5, lba: 0, blocks: 1, source: .backup, prefetched: false)]
        reads += (0..<12).map { _ in
            TraceRead(issued: 10_000_000, completed: 10_000_005, lba: 999, blocks: 1, source: .cache, prefetched: true)
        }
        let lines = TracePlot.text(Trace(info: info, reads: reads), width: 40, height: 10).split(separator: "\n")
        #expect(lines.count == 1 + 10 + 3)
        let rows = lines[1...10].map { String($0.split(separator: "|", maxSplits: 1)[1]) }
        #expect(rows.allSatisfy { $0.count == 40 })
        #expect(rows[9].first == ".")  // bottom row, first column: the read at LBA 0, t = 0
        #expect(rows[0].last == "#")  // top row, last column: twelve reads at LBA 999, t = 10 s
        #expect(rows.joined().filter { $0 != " " }.count == 2)
        #expect(lines[1].hasPrefix("999 |"))
        #expect(lines[10].hasPrefix("  0 |"))
        #expect(lines[12].hasSuffix("10.0 s"))
        #expect(TracePlot.text(Trace(info: info, reads: [])) == "(no reads)\n")
    }

    @Test("the PNG has the signature, the size asked for, and valid checksums")
    func png() {
        #expect(PNGEncoder.crc32(Array("IEND".utf8)) == 0xAE42_6082)
        #expect(PNGEncoder.adler32(Array("Wikipedia".utf8)) == 0x11E6_0398)
        let image = TracePlot.png(sampleTrace(reads: 30), width: 200, height: 100)
        #expect(Array(image.prefix(8)) == PNGEncoder.signature)
        #expect(Array(image[16..<24]) == [0, 0, 0, 200, 0, 0, 0, 100])
        // Walk the chunks: each CRC matches, the last is IEND.
        var offset = 8
        var types: [String] = []
        while offset + 12 <= image.count {
            let length = image[offset..<(offset + 4)].reduce(0) { $0 << 8 | Int($1) }
            let typed = Array(image[(offset + 4)..<(offset + 8 + length)])
            let crc = image[(offset + 8 + length)..<(offset + 12 + length)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            #expect(PNGEncoder.crc32(typed) == crc)
            types.append(String(decoding: typed.prefix(4), as: UTF8.self))
            offset += 12 + length
        }
        #expect(types == ["IHDR", "IDAT", "IEND"])
        #expect(offset == image.count)
    }

    @Test("stored deflate blocks hold at most 65535 bytes and end in the Adler-32")
    func zlib() {
        let data = (0..<150_000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let stream = PNGEncoder.zlibStored(data)
        #expect(stream.count == 2 + 3 * 5 + data.count + 4)
        #expect(stream[2] == 0 && stream[3] == 0xFF && stream[4] == 0xFF)  // first block: not final, 65535 bytes
        let adler = PNGEncoder.adler32(data)
        #expect(
            Array(stream.suffix(4)) == [
                UInt8(adler >> 24), UInt8(adler >> 16 & 0xFF), UInt8(adler >> 8 & 0xFF), UInt8(adler & 0xFF),
            ])
    }
}
