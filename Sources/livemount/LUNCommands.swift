import ArgumentParser
import BlockDevice
import Crypto
import Foundation

/// `livemount lun read URL`: reads a whole LUN through libiscsi and reports the rate and the SHA-256 of its
/// contents: a byte-for-byte check of a live mount against its source image (`sha256sum disk.img`), and the
/// cold-read benchmark's stopwatch.
struct LUNCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lun", abstract: "Add or remove a raw LUN of a running daemon; inspect a LUN through libiscsi.",
        subcommands: [LUNAddCommand.self, LUNRemoveCommand.self, LUNReadCommand.self, LUNSoakCommand.self])
}

struct LUNReadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read",
        abstract: "Read a whole LUN sequentially; print bytes, time, rate and SHA-256.",
        discussion: """
            One session reads the LUN from start to end, one command at a time, as a
            restore or a copy would. Output: "BYTES bytes in SECONDS s (MIB/s) sha256 HEX".
            """)

    @Argument(help: ArgumentHelp("iscsi://HOST[:PORT]/TARGET/LUN", valueName: "url"))
    var url: String

    @Option(name: .customLong("block-size"), help: ArgumentHelp("Bytes per READ (default 1 MiB).", valueName: "bytes"))
    var blockSize = 1 << 20

    @Option(help: ArgumentHelp("Initiator name.", valueName: "iqn"))
    var initiator = "iqn.2026-11.org.livemount:reader"

    @Flag(name: .customLong("no-sha256"), help: "Only time the read (no SHA-256).")
    var noSHA256 = false

    func validate() throws {
        guard blockSize >= 512, blockSize <= 32 << 20 else {
            throw ValidationError("--block-size \(blockSize): expected 512 bytes to 32 MiB")
        }
        guard url.hasPrefix("iscsi://") else { throw ValidationError("\(url): expected an iscsi:// URL") }
    }

    func run() async throws {
        let client = ISCSIClient()
        try client.connect(url: url, initiatorName: initiator)
        defer { try? client.logout() }
        let capacity = try client.readCapacity16()
        let blocksPerRead = max(1, blockSize / capacity.blockSize)
        // SHA-256 runs on its own thread while the next READ is in flight (without SHA-NI it is slower than
        // the network path), bounded to a few reads ahead so memory stays flat.
        let hasher = Hasher()
        let hashing = DispatchQueue(label: "livemount.lun-read.sha256")
        let ahead = DispatchSemaphore(value: 8)
        let start = ContinuousClock.now
        var lba: UInt64 = 0
        while lba < capacity.blockCount {
            let count = Int(min(UInt64(blocksPerRead), capacity.blockCount - lba))
            let data = try client.read(lba: lba, blocks: count)
            if !noSHA256 {
                ahead.wait()
                hashing.async {
                    hasher.update(data)
                    ahead.signal()
                }
            }
            lba += UInt64(count)
        }
        let readDone = ContinuousClock.now
        hashing.sync {}
        let elapsed = (noSHA256 ? readDone : ContinuousClock.now) - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let bytes = capacity.blockCount * UInt64(capacity.blockSize)
        let digest = noSHA256 ? "not computed" : hasher.finalize()
        let rate = String(
            format: "%llu bytes in %.3f s (%.1f MiB/s)", bytes, seconds, Double(bytes) / 1_048_576 / max(seconds, 1e-9))
        print("\(rate) sha256 \(digest)")
    }
}

/// A SHA-256 fed from the hashing queue only.
private final class Hasher: @unchecked Sendable {
    private var state = SHA256()

    func update(_ bytes: [UInt8]) { state.update(data: bytes) }

    func finalize() -> String { state.finalize().map { String(format: "%02x", $0) }.joined() }
}
