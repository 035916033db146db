import Relocation
import Testing

@Suite("Relocation progress formatting")
struct ProgressTests {
    typealias Format = RelocationProgressFormat

    /// A relocation of a 4 GiB disk, a quarter copied, at 100 MiB/s.
    static func status(
        phase: RelocationPhase = .copying, done: UInt64 = 1 << 30, left: UInt64 = 3 << 30, dirty: Int = 0,
        eta: Double? = 30.7, error: String? = nil
    ) -> RelocationStatus {
        RelocationStatus(
            target: "iqn.2026-11.org.livemount:web", lun: 0, destination: "/dev/sdb", phase: phase,
            bytesTotal: 4 << 30, bytesDone: done, bytesLeft: left, dirtyRegions: dirty,
            rateBytesPerSecond: 100 * 1_048_576, etaSeconds: eta, backoffs: 2, error: error)
    }

    @Test("the bar has exactly its width between brackets and fills in proportion, rounding down")
    func bar() {
        #expect(Format.bar(0, width: 10) == "[----------]")
        #expect(Format.bar(0.25, width: 8) == "[##------]")
        #expect(Format.bar(0.999, width: 10) == "[#########-]")
        #expect(Format.bar(1, width: 10) == "[##########]")
        #expect(Format.bar(1.5, width: 4) == "[####]")
        #expect(Format.bar(-1, width: 4) == "[----]")
        #expect(Format.bar(.nan, width: 4) == "[----]")
        #expect(Format.bar(0.5, width: 0) == "[]")
        for width in [1, 7, 30, 57] { #expect(Format.bar(0.37, width: width).count == width + 2) }
    }

    @Test("percent has one decimal and shows 100% only when done")
    func percent() {
        #expect(Format.percent(0) == "0.0%")
        #expect(Format.percent(0.4234) == "42.3%")
        #expect(Format.percent(0.07) == "7.0%")
        #expect(Format.percent(0.99999) == "99.9%")
        #expect(Format.percent(1) == "100.0%")
        #expect(Format.percent(2) == "100.0%")
        #expect(Format.percent(.infinity) == "0.0%")
    }

    @Test("the fraction counts the first pass less the regions to copy again; completed is whole")
    func fraction() {
        #expect(Format.fraction(Self.status()) == 0.25)
        // The first pass is done but 512 MiB of dirty regions wait: 7/8 is on the destination.
        #expect(Format.fraction(Self.status(done: 4 << 30, left: 512 << 20, dirty: 512)) == 0.875)
        // A daemon that reports no bytesLeft still shows the first pass's progress.
        #expect(Format.fraction(Self.status(left: 0)) == 0.25)
        #expect(Format.fraction(Self.status(phase: .completed, done: 0, left: 0)) == 1)
        var empty = Self.status()
        empty.bytesTotal = 0
        #expect(Format.fraction(empty) == 0)
    }

    @Test("rates are MiB/s with one decimal")
    func rate() {
        #expect(Format.rate(0) == "0.0 MiB/s")
        #expect(Format.rate(1_048_576) == "1.0 MiB/s")
        #expect(Format.rate(117_859_532.8) == "112.4 MiB/s")
        #expect(Format.rate(52_429) == "0.1 MiB/s")
        #expect(Format.rate(-5) == "0.0 MiB/s")
        #expect(Format.rate(.infinity) == "0.0 MiB/s")
    }

    @Test("ETA is h:mm:ss, rounded up, and unknown when nil, negative or not finite")
    func eta() {
        #expect(Format.eta(0) == "0:00:00")
        #expect(Format.eta(5) == "0:00:05")
        #expect(Format.eta(4.2) == "0:00:05")
        #expect(Format.eta(59.5) == "0:01:00")
        #expect(Format.eta(3723) == "1:02:03")
        #expect(Format.eta(100_000) == "27:46:40")
        #expect(Format.eta(nil) == "-:--:--")
        #expect(Format.eta(-1) == "-:--:--")
        #expect(Format.eta(.nan) == "-:--:--")
        #expect(Format.eta(.infinity) == "-:--:--")
        #expect(Format.eta(1e300) == "-:--:--")
    }

    @Test("sizes use binary units with three significant digits")
    func sizes() {
        #expect(Format.bytes(0) == "0 B")
        #expect(Format.bytes(1023) == "1023 B")
        #expect(Format.bytes(1024) == "1.00 KiB")
        #expect(Format.bytes(1536) == "1.50 KiB")
        #expect(Format.bytes(12_897_485) == "12.3 MiB")
        #expect(Format.bytes(512 << 20) == "512 MiB")
        #expect(Format.bytes(1_073_741_823) == "1.00 GiB")
        #expect(Format.bytes(4 << 30) == "4.00 GiB")
        #expect(Format.bytes(3 << 40) == "3.00 TiB")
        #expect(Format.bytes(UInt64.max) == "16.0 EiB")
    }

    @Test("the progress line carries phase, percent, bar, bytes, rate, ETA, dirty regions and back-offs")
    func line() {
        let line = Format.line(Self.status(dirty: 3), barWidth: 20)
        #expect(
            line
                == "copying    25.0% [#####---------------]  1.00 GiB / 4.00 GiB  100.0 MiB/s  ETA 0:00:31  dirty 3  back-offs 2"
        )
        let unknown = Format.line(Self.status(phase: .paused, eta: nil, error: "paused by the operator"), barWidth: 4)
        #expect(unknown.hasPrefix("paused     25.0% [#---]"))
        #expect(unknown.contains("ETA -:--:--"))
        #expect(unknown.hasSuffix("error: paused by the operator"))
        let done = Format.line(Self.status(phase: .completed, done: 4 << 30, left: 0, eta: nil), barWidth: 4)
        #expect(done.hasPrefix("completed 100.0% [####]  4.00 GiB / 4.00 GiB    0.0 MiB/s  ETA 0:00:00"))
    }

    @Test("the line keeps its length while the figures change, so a redraw in place does not jitter")
    func stableWidth() {
        let total: UInt64 = 4 << 30
        let lengths = [UInt64(1_593_000), 805 << 20, 1_690_000_000, total - 1].enumerated().map { index, done in
            var status = Self.status(done: done, left: total - done, eta: [3, 75, 1800, 0.2][index])
            status.rateBytesPerSecond = [5e5, 2e7, 3e8, 1e9][index]
            return Format.line(status, barWidth: 20).count
        }
        #expect(Set(lengths).count == 1, "\(lengths)")
    }

    @Test("a line fitted to the terminal never reaches its last column, and the bar takes the slack")
    func fitting() {
        let status = Self.status(dirty: 12)
        for columns in [40, 80, 120, 200] {
            let line = Format.line(status, fitting: columns)
            #expect(line.count <= columns - 1, "\(columns): \(line)")
        }
        let wide = Format.line(status, fitting: 200)
        #expect(wide.contains("[" + String(repeating: "#", count: 10) + String(repeating: "-", count: 30) + "]"))
        let rest = Format.line(status, barWidth: 0).count
        let fitted = Format.line(status, fitting: rest + 26)
        #expect(fitted == Format.line(status, barWidth: 25))
        #expect(fitted.count == rest + 25)
        // An error is cut rather than shrinking the bar.
        var failed = status
        failed.error = String(repeating: "x", count: 300)
        let cut = Format.line(failed, fitting: rest + 26)
        #expect(cut.count == rest + 25)
        #expect(cut.hasPrefix(Format.line(status, barWidth: 25)))
    }

    @Test("the table aligns its columns and shows every relocation")
    func table() {
        var other = Self.status(phase: .failed, eta: nil, error: "destination full")
        other.target = "iqn.2026-11.org.livemount:database"
        other.lun = 12
        other.destination = "iscsi://san/iqn.2026-11.org.san:vol/3"
        let lines = Format.table([Self.status(), other])
        #expect(lines.count == 3)
        #expect(lines[0].hasPrefix("MOUNT"))
        #expect(lines[1].hasPrefix("iqn.2026-11.org.livemount:web/0 "))
        #expect(lines[2].hasPrefix("iqn.2026-11.org.livemount:database/12  failed"))
        #expect(lines[2].hasSuffix("iscsi://san/iqn.2026-11.org.san:vol/3  (destination full)"))
        // Text columns start where their header starts; figures end where their header ends.
        func start(_ text: String, in line: String) -> Int? {
            line.firstRange(of: text).map { line.distance(from: line.startIndex, to: $0.lowerBound) }
        }
        func end(_ text: String, in line: String) -> Int? {
            line.firstRange(of: text).map { line.distance(from: line.startIndex, to: $0.upperBound) }
        }
        #expect(start("PHASE", in: lines[0]) == start("copying", in: lines[1]))
        #expect(start("PHASE", in: lines[0]) == start("failed", in: lines[2]))
        #expect(start("DESTINATION", in: lines[0]) == start("/dev/sdb", in: lines[1]))
        #expect(start("DESTINATION", in: lines[0]) == start("iscsi://", in: lines[2]))
        #expect(end("ETA", in: lines[0]) == end("0:00:31", in: lines[1]))
        #expect(end("ETA", in: lines[0]) == end("-:--:--", in: lines[2]))
        #expect(end("DONE", in: lines[0]) == end("25.0%", in: lines[1]))
        #expect(lines[1].contains(" 25.0% ") && lines[1].contains(" 0:00:31 "))
        #expect(lines[2].contains(" -:--:-- "))
    }

    @Test("a mount is TARGET/LUN, split at the last slash")
    func mountAddress() {
        #expect(
            MountAddress("iqn.2026-11.org.livemount:web/0")
                == MountAddress(target: "iqn.2026-11.org.livemount:web", lun: 0))
        #expect(MountAddress("a/b/17") == MountAddress(target: "a/b", lun: 17))
        #expect(MountAddress("iqn.2026-11.org.livemount:web/0")?.description == "iqn.2026-11.org.livemount:web/0")
        for bad in ["iqn.x", "/0", "iqn.x/", "iqn.x/-1", "iqn.x/+1", "iqn.x/1a", "iqn.x/99999999999999999999999"] {
            #expect(MountAddress(bad) == nil, "\(bad)")
        }
    }

    @Test("watching stops at completed, cancelled and failed, not while copying or paused")
    func endsWatch() {
        #expect(RelocationPhase.allCases.filter(\.endsWatch) == [.completed, .cancelled, .failed])
    }
}
