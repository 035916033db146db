import BlockDevice
import Foundation
import ISCSIProtocol
import Logging
import NIOCore
import SCSI
import TargetServer

/// A target server on 127.0.0.1 with a free port, serving in-memory LUNs.
struct TestTarget {
    let server: ISCSITargetServer
    let port: Int
    let devices: [UInt64: MemoryBlockDevice]
    let targetName: String

    static let defaultName = "iqn.2026-11.org.livemount:test"

    /// Starts a server; `luns` maps LUN → (blocks, read-only).
    static func start(
        name: String = defaultName, luns: [UInt64: (blocks: UInt64, readOnly: Bool)] = [0: (16384, false)],
        chap: CHAPCredentials? = nil, mutualChap: CHAPCredentials? = nil, allowed: [String] = [],
        discoveryChap: CHAPCredentials? = nil, nopInInterval: Int = 0, nopInTimeout: Int = 30,
        loginTimeout: Int = 30, stateDirectory: String? = nil
    ) async throws -> TestTarget {
        var devices: [UInt64: MemoryBlockDevice] = [:]
        var units: [LogicalUnitConfiguration] = []
        for (lun, spec) in luns.sorted(by: { $0.key < $1.key }) {
            let device = MemoryBlockDevice(blockCount: spec.blocks, readOnly: false)
            devices[lun] = device
            units.append(
                LogicalUnitConfiguration(
                    lun: lun, device: device, readOnly: spec.readOnly, serialNumber: "TEST\(lun)",
                    naaIdentifier: 0x5024_C4D0_0000_0000 | lun))
        }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let configuration = ServerConfiguration(
            portals: [PortalConfiguration(host: "127.0.0.1", port: 0)],
            targets: [
                TargetConfiguration(
                    name: name, logicalUnits: units, chap: chap, mutualChap: mutualChap, allowedInitiators: allowed)
            ],
            discoveryChap: discoveryChap, stateDirectory: stateDirectory, nopInInterval: nopInInterval,
            nopInTimeout: nopInTimeout, loginTimeout: loginTimeout)
        let server = try ISCSITargetServer(configuration: configuration, logger: logger)
        let bound = try await server.start()
        guard let port = bound.first?.port else { throw TargetServerError("no port") }
        return TestTarget(server: server, port: port, devices: devices, targetName: name)
    }

    func url(lun: UInt64 = 0) -> String { "iscsi://127.0.0.1:\(port)/\(targetName)/\(lun)" }

    func stop() async { await server.shutdown() }
}

/// Runs blocking work (libiscsi's sync API, raw sockets) on its own thread,
/// never on the concurrency pool that the target itself runs on.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread {
            do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
}

/// A plain TCP connection for sending hand-made (and malformed) PDUs.
final class RawConnection: @unchecked Sendable {
    private let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw TargetServerError("connect failed: errno \(errno)") }
        var timeout = timeval(tv_sec: RawConnection.patience, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// How long `receive` waits for the target before reporting `.timedOut`. The
    /// target answers, pings or closes within about a second; CI runs every suite
    /// at once on two cores, so the wait is generous (a passing test never waits it out).
    static let patience = 30

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            offset += n
        }
    }

    func send(_ pdu: ISCSIPDU, headerDigest: Bool = false, dataDigest: Bool = false) {
        var serializer = PDUSerializer()
        serializer.headerDigest = headerDigest
        serializer.dataDigest = dataDigest
        var buffer = ByteBuffer()
        serializer.write(pdu, into: &buffer)
        send(Array(buffer.readableBytesView))
    }

    /// What the target did next.
    enum Event: Equatable {
        case pdu(opcode: UInt8, header: [UInt8], data: [UInt8])
        case closed
        case timedOut
    }

    private var pending: [UInt8] = []

    /// Reads one PDU (no digests), or reports that the target closed the connection.
    func receive() -> Event {
        while true {
            if pending.count >= 48 {
                let dataLength = Int(pending[5]) << 16 | Int(pending[6]) << 8 | Int(pending[7])
                let ahs = Int(pending[4]) * 4
                let total = 48 + ahs + ((dataLength + 3) & ~3)
                if pending.count >= total {
                    let header = Array(pending[0..<48])
                    let data = Array(pending[(48 + ahs)..<(48 + ahs + dataLength)])
                    pending.removeFirst(total)
                    return .pdu(opcode: header[0] & 0x3F, header: header, data: data)
                }
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return .closed }
            if n < 0 { return errno == EAGAIN || errno == EWOULDBLOCK ? .timedOut : .closed }
            pending += chunk[0..<n]
        }
    }

    /// Like `receive`, with a shorter timeout.
    func receiveWithin(seconds: Int) -> Event {
        var short = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &short, socklen_t(MemoryLayout<timeval>.size))
        defer {
            var normal = timeval(tv_sec: RawConnection.patience, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &normal, socklen_t(MemoryLayout<timeval>.size))
        }
        return receive()
    }

    /// Reads until the connection closes, returning the opcodes seen on the way.
    func drainUntilClosed() -> (opcodes: [UInt8], closed: Bool) {
        var opcodes: [UInt8] = []
        while true {
            switch receive() {
            case .pdu(let opcode, _, _): opcodes.append(opcode)
            case .closed: return (opcodes, true)
            case .timedOut: return (opcodes, false)
            }
        }
    }

    /// Logs in to a normal session without authentication; returns the next CmdSN.
    func login(
        target: String, initiator: String = "iqn.2026-11.org.livemount:raw", isid: UInt64 = 0x8000_0000_0001,
        headerDigest: Bool = false
    ) throws -> UInt32 {
        var text = ByteBuffer()
        for pair in [
            "InitiatorName=\(initiator)", "TargetName=\(target)", "SessionType=Normal", "AuthMethod=None",
        ] { text.writeString(pair + "\0") }
        send(LoginRequestPDU(transit: true, currentStage: 0, nextStage: 1, isid: isid, cmdSN: 1, data: text).pdu)
        guard case .pdu(0x23, let h1, _) = receive(), h1[36] == 0 else { throw TargetServerError("security stage refused") }
        var ops = ByteBuffer()
        for pair in ["HeaderDigest=\(headerDigest ? "CRC32C" : "None")", "DataDigest=None", "MaxRecvDataSegmentLength=65536"] {
            ops.writeString(pair + "\0")
        }
        send(LoginRequestPDU(transit: true, currentStage: 1, nextStage: 3, isid: isid, cmdSN: 1, data: ops).pdu)
        guard case .pdu(0x23, let h2, _) = receive(), h2[36] == 0, h2[1] & 0x80 != 0 else {
            throw TargetServerError("operational stage refused")
        }
        return 1
    }
}

/// A TEST UNIT READY command PDU.
func testUnitReadyPDU(itt: UInt32, cmdSN: UInt32) -> ISCSIPDU {
    SCSICommandPDU(
        lun: 0, initiatorTaskTag: itt, expectedDataTransferLength: 0, cmdSN: cmdSN, expStatSN: 0,
        cdb: [0, 0, 0, 0, 0, 0], read: false, write: false
    ).pdu
}
