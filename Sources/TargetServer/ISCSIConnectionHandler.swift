import ISCSIProtocol
import Logging
import NIOCore
import SCSI

/// Negotiated values the full-feature phase works with (from the login's SessionParameters).
struct ConnectionParameters: Sendable {
    var maxRecvDataSegmentLength: Int
    /// What we may send in one PDU: the initiator's MaxRecvDataSegmentLength.
    var maxXmitDataSegmentLength: Int
    var maxBurstLength: Int
    var firstBurstLength: Int
    var initialR2T: Bool
    var immediateData: Bool
    var maxOutstandingR2T: Int
    var dataPDUInOrder: Bool
    var headerDigest: Bool
    var dataDigest: Bool
    var isDiscovery: Bool
    var initiatorName: String
    var targetName: String?
    var isid: UInt64
    var tsih: UInt16
}

/// One iSCSI connection (and, with MaxConnections=1, its session).
///
/// Thin in the STYLE.md sense: bytes in → `PDUParser` → the login state
/// machine or the full-feature bookkeeping (`CommandWindow`,
/// `DataOutAssembler`) → PDUs out. SCSI commands run as Swift tasks on the
/// SCSI layer; their results come back to this event loop.
final class ISCSIConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    // MARK: - State

    private enum Phase {
        /// Before and during login; the driver exists from the first Login Request on, so the login is checked
        /// against the targets and policies of that moment, not of the connection's accept.
        case login(LoginDriver?)
        case fullFeature
        case closing
    }

    /// One task the initiator started and has not seen the end of.
    private final class TaskState {
        let itt: UInt32
        let lun: UInt64
        let command: SCSICommandPDU?
        /// It took a CmdSN slot (non-immediate), freed when it ends.
        let inWindow: Bool
        var assembler: DataOutAssembler?
        /// Bytes this task's R2Ts solicited (returned to the connection's budget when it ends).
        var solicited = 0
        /// Data-In this task may produce (its ExpectedDataTransferLength), counted while it executes.
        var readBytes = 0
        var executing = false
        var aborted = false
        /// Continuations to run when the task ends (a pending TMF waits on it).
        var onEnd: [() -> Void] = []
        /// When its SCSI Command PDU arrived (for the LUN's latency histogram).
        let received = NIODeadline.now()

        init(itt: UInt32, lun: UInt64, command: SCSICommandPDU?, inWindow: Bool) {
            self.itt = itt
            self.lun = lun
            self.command = command
            self.inWindow = inWindow
        }
    }

    private let server: ServerContext
    private var logger: Logger
    private var phase: Phase
    private var parser = PDUParser()
    private var serializer = PDUSerializer()
    private var cumulation: ByteBuffer?
    private var context: ChannelHandlerContext?

    private var statSN: UInt32 = 0
    private var window = CommandWindow(initialCmdSN: 0, size: 1)
    private var parameters: ConnectionParameters?
    private var target: TargetRuntime?
    /// The per-LUN metrics of the LUNs this connection has used.
    private var lunMetrics: [UInt64: LUNMetrics] = [:]
    private var nexus: ITNexus?
    private var sessionKey: SessionRegistry.Key?
    private var tasks: [UInt32: TaskState] = [:]
    /// Commands ahead of a CmdSN gap (RFC 7143 §4.2.2.1), by CmdSN.
    private var heldPDUs: [UInt32: ISCSIPDU] = [:]
    /// Write tasks that failed during their data phase: their remaining
    /// Data-Out PDUs are dropped until the initiator's final one.
    private var drainingTasks: Set<UInt32> = []
    /// Bytes solicited with R2T for tasks not yet finished, against `solicitedLimit`:
    /// what bounds the Data-Out a connection can make the target hold.
    private var solicitedBytes = 0
    /// Write tasks waiting for room under `solicitedLimit`, oldest first.
    private var waitingForR2T: [UInt32] = []
    /// Data-In that executing reads may produce, against `readLimit`. The SCSI
    /// layer never reads past a command's ExpectedDataTransferLength, so this
    /// bounds the read data a connection holds.
    private var executingReadBytes = 0
    /// Reads waiting for room under `readLimit`, oldest first.
    private var waitingToRead: [UInt32] = []
    private var nextTargetTransferTag: UInt32 = 1
    /// Text Requests after login (SendTargets, RFC 7143 §11.10, Appendix C).
    private var textNegotiator: TextNegotiator?
    private var pendingLogout: (() -> Void)?
    private var closeAfterFlush = false
    /// Inside channelRead: responses wait for channelReadComplete's flush.
    private var inChannelRead = false
    /// A flush is queued on the loop for responses sent outside channelRead.
    private var flushScheduled = false

    // Target pings (RFC 7143 §11.19).
    private var lastActivity = NIODeadline.now()
    private var outstandingPing: (tag: UInt32, sent: NIODeadline)?
    private var pingTask: RepeatedTask?
    private var loginDeadline: Scheduled<Void>?

    /// The largest write a command may announce (ExpectedDataTransferLength);
    /// above VPD B0h MAXIMUM TRANSFER LENGTH of every LU.
    static let maxWriteTransferLength = 64 << 20
    /// Solicited Data-Out a connection may have outstanding at once.
    static let solicitedLimit = 64 << 20
    /// Data-In the executing reads of one connection may produce at once.
    static let readLimit = 64 << 20

    init(server: ServerContext, remote: String) {
        self.server = server
        var logger = server.logger
        logger[metadataKey: "peer"] = "\(remote)"
        self.logger = logger
        self.phase = .login(nil)
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelActive(context: ChannelHandlerContext) {
        logger.debug("connection opened")
        // A connection that has not logged in within this time is dropped, so
        // idle or hostile peers cannot hold connections open forever.
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let timeout = server.configuration.loginTimeout
        loginDeadline = context.eventLoop.scheduleTask(in: .seconds(Int64(timeout))) {
            let handler = bound.value
            guard case .login = handler.phase else { return }
            handler.logger.notice("no login within \(timeout) s: closing the connection")
            handler.closeSoon()
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        loginDeadline?.cancel()
        pingTask?.cancel()
        pingTask = nil
        endSession()
        phase = .closing
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if var existing = cumulation {
            existing.writeBuffer(&bytes)
            cumulation = existing
        } else {
            cumulation = bytes
        }
        lastActivity = .now()
        guard var buffer = cumulation else { return }
        cumulation = nil
        inChannelRead = true
        defer {
            inChannelRead = false
            if buffer.readableBytes > 0 {
                if buffer.readerIndex > 65536 { buffer.discardReadBytes() }
                cumulation = buffer
            }
        }
        while true {
            if case .closing = phase { return }
            let outcome: PDUParser.Outcome?
            do {
                outcome = try parser.parse(&buffer)
            } catch {
                connectionError("\(error)", rejecting: nil, reason: .protocolError)
                return
            }
            guard let outcome else { return }
            switch outcome {
            case .pdu(let pdu):
                received(pdu)
            case .dataDigestError(let header):
                // RFC 7143 §7.8: a data digest error is answered with Reject; at
                // ErrorRecoveryLevel 0 the connection cannot recover the data.
                connectionError("data digest error", rejecting: header.bytes, reason: .dataDigestError)
                return
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
        if closeAfterFlush { context.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("connection error: \(error)")
        context.close(promise: nil)
    }

    // MARK: - Dispatch

    private func received(_ pdu: ISCSIPDU) {
        logger.trace(
            "PDU in",
            metadata: [
                "opcode": "0x\(String(pdu.header.rawOpcode, radix: 16))", "itt": "\(pdu.header.initiatorTaskTag)",
                "flags": "0x\(String(pdu.header.flags, radix: 16))", "sn": "\(pdu.header.uint32(at: 24))",
                "ttt": "\(pdu.header.uint32(at: 20))", "datasn": "\(pdu.header.uint32(at: 36))",
                "offset": "\(pdu.header.uint32(at: 40))", "length": "\(pdu.data.readableBytes)",
            ])
        switch phase {
        case .login(let existing):
            var driver = existing ?? LoginDriver(server: server)
            guard pdu.opcode == .loginRequest else {
                // RFC 7143 §6.3: only Login Requests before the full-feature phase.
                logger.info("\(pdu.opcode.map { "\($0)" } ?? "opcode 0x\(String(pdu.header.rawOpcode, radix: 16))") before login completed")
                let response = driver.invalidDuringLogin(pdu)
                send(response)
                closeSoon()
                return
            }
            let outcome = driver.received(LoginRequestPDU(pdu))
            phase = .login(driver)
            handleLogin(outcome, driver: driver)
        case .fullFeature:
            fullFeature(pdu)
        case .closing:
            return
        }
    }

    private func handleLogin(_ outcome: LoginDriver.Outcome, driver: LoginDriver) {
        switch outcome {
        case .respond(let pdu):
            send(pdu)
        case .fail(let pdu, let why):
            server.metrics.loginFailures.increment()
            logger.notice("login refused: \(why)")
            send(pdu)
            closeSoon()
        case .complete(let pdu, let params):
            if let name = params.parameters.targetName, server.target(named: name) == nil {
                // The control plane removed the target while this login ran.
                server.metrics.loginFailures.increment()
                logger.notice("login refused: target \(name) was removed during the login")
                send(driver.targetRemoved(instead: pdu))
                closeSoon()
                return
            }
            send(pdu)
            enterFullFeaturePhase(params)
        }
    }

    private func enterFullFeaturePhase(_ params: LoginDriver.Completed) {
        let p = params.parameters
        parameters = p
        textNegotiator = TextNegotiator(session: params.session, targets: server.discoveryTargets)
        statSN = params.nextStatSN
        window = CommandWindow(initialCmdSN: params.expCmdSN, size: server.configuration.limits.commandWindow)
        // RFC 7143 §13.1: digests start with the first PDU after the final login response.
        parser.headerDigest = p.headerDigest
        parser.dataDigest = p.dataDigest
        parser.maxRecvDataSegmentLength = p.maxRecvDataSegmentLength
        serializer.headerDigest = p.headerDigest
        serializer.dataDigest = p.dataDigest
        logger[metadataKey: "initiator"] = "\(p.initiatorName)"
        server.metrics.logins.increment()
        if let name = p.targetName {
            guard let runtime = server.target(named: name) else {
                logger.notice("target \(name) was removed as the login completed: closing the connection")
                closeSoon()
                return
            }
            target = runtime
            let nexus = ITNexus(
                initiatorName: p.initiatorName, isid: p.isid, targetName: name, portalGroupTag: ServerContext.portalGroupTag)
            self.nexus = nexus
            let key = SessionRegistry.Key(initiatorName: p.initiatorName, isid: p.isid, targetName: name)
            sessionKey = key
            let channel = context?.channel
            if server.registry.register(key, tsih: p.tsih, close: { channel?.close(promise: nil) }) {
                // Session reinstatement (RFC 7143 §6.3.5): the old session's I_T nexus is lost first.
                runtime.scsi.nexusReleased(nexus)
            }
            runtime.scsi.nexusEstablished(nexus)
            server.metrics.sessions.record(server.registry.count)
            guard server.target(named: name) === runtime else {
                // Removed (with force) between the lookup and the registration, after its sessions were ended.
                logger.notice("target \(name) was removed as the session started: closing the connection")
                closeSoon()
                return
            }
            logger.info("session \(p.tsih) logged in to \(name)")
        } else {
            logger.info("discovery session logged in")
        }
        phase = .fullFeature
        loginDeadline?.cancel()
        loginDeadline = nil
        startPings()
    }

    private func endSession() {
        for task in tasks.values { task.aborted = true }
        if let key = sessionKey, let p = parameters, server.registry.unregister(key, tsih: p.tsih) {
            server.metrics.sessions.record(server.registry.count)
            if let nexus, let target { target.scsi.nexusReleased(nexus) }
        }
        sessionKey = nil
        nexus = nil
    }

    // MARK: - Full-feature phase

    private func fullFeature(_ pdu: ISCSIPDU) {
        guard let opcode = pdu.opcode else {
            reject(pdu, reason: .commandNotSupported)
            return
        }
        switch opcode {
        case .scsiCommand, .nopOut, .taskManagementRequest, .textRequest, .logoutRequest:
            ordered(pdu)
        case .dataOut:
            dataOut(DataOutPDU(pdu), header: pdu.header)
        case .snackRequest:
            // RFC 7143 §11.16: SNACK needs ErrorRecoveryLevel > 0; we negotiate 0.
            reject(pdu, reason: .protocolError)
        default:
            // A target opcode from an initiator (RFC 7143 §11.17.1 reason 0x04).
            connectionError("target opcode \(opcode) from the initiator", rejecting: pdu.header.bytes, reason: .protocolError)
        }
    }

    /// PDUs that carry a CmdSN go through the command window.
    private func ordered(_ pdu: ISCSIPDU) {
        let cmdSN = pdu.header.uint32(at: 24)
        // RFC 7143 §11.18: a NOP-Out answering our ping (ITT 0xFFFFFFFF) is not a command.
        if pdu.opcode == .nopOut && pdu.header.initiatorTaskTag == 0xFFFF_FFFF {
            nopOut(NOPOutPDU(pdu), inWindow: false)
            return
        }
        switch window.received(cmdSN: cmdSN, immediate: pdu.header.immediate) {
        case .ignore:
            logger.debug("CmdSN \(cmdSN) outside [\(window.expCmdSN), \(window.maxCmdSN)]: ignored")
        case .hold:
            heldPDUs[cmdSN] = pdu
        case .deliver:
            deliver(pdu, inWindow: !pdu.header.immediate)
            while let next = window.nextHeld() {
                if let held = heldPDUs.removeValue(forKey: next) { deliver(held, inWindow: true) }
            }
        }
    }

    private func deliver(_ pdu: ISCSIPDU, inWindow: Bool) {
        switch pdu.opcode {
        case .scsiCommand:
            do {
                try scsiCommand(SCSICommandPDU(pdu), inWindow: inWindow)
            } catch {
                if inWindow { window.completed() }
                reject(pdu, reason: .invalidPDUField)
            }
        case .nopOut:
            nopOut(NOPOutPDU(pdu), inWindow: inWindow)
        case .taskManagementRequest:
            taskManagement(TaskManagementRequestPDU(pdu), inWindow: inWindow)
        case .textRequest:
            text(TextRequestPDU(pdu), header: pdu.header, inWindow: inWindow)
        case .logoutRequest:
            logout(LogoutRequestPDU(pdu), inWindow: inWindow)
        default:
            if inWindow { window.completed() }
        }
    }

    // MARK: SCSI Command (RFC 7143 §11.3)

    private func scsiCommand(_ command: SCSICommandPDU, inWindow: Bool) {
        guard let params = parameters, let target, let nexus, !params.isDiscovery else {
            // RFC 7143 §4.3: a discovery session carries only Text, NOP and Logout.
            if inWindow { window.completed() }
            reject(command.pdu, reason: .protocolError)
            return
        }
        server.metrics.commands.increment()
        if tasks[command.initiatorTaskTag] != nil {
            // RFC 7143 §11.17.1 reason 0x07: a task with this tag is in progress.
            if inWindow { window.completed() }
            reject(command.pdu, reason: .taskInProgress)
            return
        }
        let task = TaskState(itt: command.initiatorTaskTag, lun: command.lun, command: command, inWindow: inWindow)
        let edtl = Int(command.expectedDataTransferLength)
        if command.write && edtl > Self.maxWriteTransferLength {
            // More than any LU accepts in one command (VPD B0h MAXIMUM TRANSFER
            // LENGTH is smaller): refuse before soliciting or buffering anything.
            tasks[task.itt] = task
            failTask(task, sense: SenseData(key: .illegalRequest, asc: 0x0E, ascq: 0x03), drain: !command.final)
            return
        }
        if command.write && edtl > 0 {
            guard command.data.readableBytes == 0 || params.immediateData else {
                if inWindow { window.completed() }
                connectionError("immediate data with ImmediateData=No", rejecting: command.pdu.header.bytes, reason: .protocolError)
                return
            }
            let limits = DataOutAssembler.Limits(
                firstBurstLength: params.firstBurstLength, maxBurstLength: params.maxBurstLength,
                maxOutstandingR2T: params.maxOutstandingR2T, initialR2T: params.initialR2T,
                dataPDUInOrder: params.dataPDUInOrder)
            tasks[task.itt] = task
            do {
                task.assembler = try DataOutAssembler(
                    expectedLength: edtl, immediateData: command.data, final: command.final, limits: limits,
                    allocator: context?.channel.allocator ?? ByteBufferAllocator())
            } catch {
                failDataPhase(task, error, drain: !command.final)
                return
            }
            advanceWrite(task)
            return
        }
        if command.data.readableBytes > 0 && !command.write {
            if inWindow { window.completed() }
            connectionError("immediate data on a command without W", rejecting: command.pdu.header.bytes, reason: .protocolError)
            return
        }
        tasks[task.itt] = task
        let readBytes = command.read ? edtl : 0
        if readBytes > 0 && executingReadBytes > 0 && executingReadBytes + readBytes > Self.readLimit {
            waitingToRead.append(task.itt)
            return
        }
        task.readBytes = readBytes
        executingReadBytes += readBytes
        execute(task, target: target, nexus: nexus, dataOut: ByteBuffer())
    }

    /// Starts the reads that were waiting for room under `readLimit`.
    private func startWaitingReads() {
        guard let target, let nexus else { return }
        while let itt = waitingToRead.first {
            guard let task = tasks[itt], !task.aborted, let command = task.command else {
                waitingToRead.removeFirst()
                continue
            }
            let bytes = Int(command.expectedDataTransferLength)
            if executingReadBytes > 0 && executingReadBytes + bytes > Self.readLimit { return }
            waitingToRead.removeFirst()
            task.readBytes = bytes
            executingReadBytes += bytes
            execute(task, target: target, nexus: nexus, dataOut: ByteBuffer())
        }
    }

    /// Sends the R2Ts a write task needs, or runs it once its data is in.
    private func advanceWrite(_ task: TaskState) {
        guard var assembler = task.assembler, let target, let nexus else { return }
        if assembler.isComplete {
            task.assembler = nil
            execute(task, target: target, nexus: nexus, dataOut: assembler.assembled)
            return
        }
        let budget = solicitedBytes == 0 ? Int.max : max(0, Self.solicitedLimit - solicitedBytes)
        let requests = assembler.nextR2Ts(budget: budget) { self.makeTargetTransferTag() }
        let newlySolicited = assembler.solicitedBytes - task.solicited
        task.solicited = assembler.solicitedBytes
        solicitedBytes += newlySolicited
        if requests.isEmpty && assembler.needsR2T && !waitingForR2T.contains(task.itt) {
            waitingForR2T.append(task.itt)
        }
        task.assembler = assembler
        for r in requests {
            let r2t = ReadyToTransferPDU(
                lun: task.lun, initiatorTaskTag: task.itt, targetTransferTag: r.targetTransferTag,
                sequence: currentSequence(), r2tSN: r.r2tSN, bufferOffset: UInt32(r.offset),
                desiredDataTransferLength: UInt32(r.length))
            send(r2t.pdu)
        }
    }

    private func makeTargetTransferTag() -> UInt32 {
        let tag = nextTargetTransferTag
        nextTargetTransferTag = nextTargetTransferTag == 0xFFFF_FFFE ? 1 : nextTargetTransferTag + 1
        return tag
    }

    // MARK: Data-Out (RFC 7143 §11.7)

    private func dataOut(_ pdu: DataOutPDU, header: BasicHeaderSegment) {
        if drainingTasks.contains(pdu.initiatorTaskTag) {
            if pdu.final { drainingTasks.remove(pdu.initiatorTaskTag) }
            return
        }
        guard let task = tasks[pdu.initiatorTaskTag], var assembler = task.assembler else {
            // Data for a task we do not know (or that was aborted): RFC 7143 §11.17.1 reason 0x09.
            reject(ISCSIPDU(header: header), reason: .invalidPDUField)
            return
        }
        do {
            try assembler.receive(pdu)
        } catch {
            failDataPhase(task, error, drain: !pdu.final)
            return
        }
        task.assembler = assembler
        advanceWrite(task)
    }

    /// Ends a write task whose Data-Out broke the rules (RFC 7143 §11.7): a
    /// task-level failure, CHECK CONDITION with ABORTED COMMAND / DATA PHASE
    /// ERROR; the session goes on.
    private func failDataPhase(_ task: TaskState, _ violation: DataOutAssembler.Violation, drain: Bool) {
        logger.info("write task \(task.itt) failed in its data phase: \(violation.description)")
        failTask(task, sense: SenseData(key: .abortedCommand, asc: 0x4B, ascq: violation.ascq), drain: drain)
    }

    /// Ends a task before execution with CHECK CONDITION; with `drain`, Data-Out
    /// still on its way for it is dropped until the initiator's final one.
    private func failTask(_ task: TaskState, sense: SenseData, drain: Bool) {
        server.metrics.rejects.increment()
        finish(task)
        if drain { drainingTasks.insert(task.itt) }
        guard let command = task.command, let params = parameters else { return }
        sendResult(.checkCondition(sense), for: command, params: params)
        for end in task.onEnd { end() }
    }

    /// Forgets a task: frees its CmdSN slot and its share of the R2T budget,
    /// and lets writes that were waiting for that budget go on.
    private func finish(_ task: TaskState) {
        tasks[task.itt] = nil
        if task.inWindow { window.completed() }
        waitingToRead.removeAll { $0 == task.itt }
        if task.readBytes > 0 {
            executingReadBytes -= task.readBytes
            task.readBytes = 0
            startWaitingReads()
        }
        if task.solicited > 0 {
            solicitedBytes -= task.solicited
            task.solicited = 0
            waitingForR2T.removeAll { $0 == task.itt }
            let waiting = waitingForR2T
            waitingForR2T = []
            for itt in waiting {
                // advanceWrite queues the task again if the budget is still short.
                if let next = tasks[itt], next.assembler != nil { advanceWrite(next) }
            }
        }
        waitingForR2T.removeAll { $0 == task.itt }
    }

    // MARK: Execution

    private func execute(_ task: TaskState, target: TargetRuntime, nexus: ITNexus, dataOut: ByteBuffer) {
        guard let command = task.command, let eventLoop = context?.eventLoop else { return }
        task.executing = true
        let scsiCommand = SCSICommand(
            cdb: command.cdb, nexus: nexus, expectedDataTransferLength: command.expectedDataTransferLength,
            isWrite: command.write, isRead: command.read, dataOut: dataOut,
            taskAttribute: TaskAttribute(rawValue: command.attribute) ?? .simple, taskTag: command.initiatorTaskTag)
        let lun = decodeLUN(command.lun)
        let itt = task.itt
        let scsi = target.scsi
        // Fast path: a READ whose data is at hand is answered right here, with
        // no task and no thread hop; inside channelRead its response goes out
        // with the others in one flush.
        if dataOut.readableBytes == 0, let result = scsi.executeImmediately(lun: lun, command: scsiCommand) {
            completed(itt: itt, result: result)
            return
        }
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        // Callback path: a READ the device can serve with a completion handler
        // (an SSD-tier cache hit through libaio) is answered from the I/O
        // thread straight onto this loop, with no task and no executor hop.
        // An abort meanwhile is handled by `completed`, which ignores aborted
        // and finished tasks.
        if dataOut.readableBytes == 0,
            scsi.executeWithCompletion(
                lun: lun, command: scsiCommand,
                completion: { result in
                    eventLoop.execute { bound.value.completed(itt: itt, result: result) }
                })
        {
            return
        }
        Task {
            let result = await scsi.execute(lun: lun, command: scsiCommand)
            eventLoop.execute {
                bound.value.completed(itt: itt, result: result)
            }
        }
    }

    private func completed(itt: UInt32, result: SCSIResult) {
        guard let task = tasks[itt] else { return }
        finish(task)
        defer { for end in task.onEnd { end() } }
        guard !task.aborted, case .fullFeature = phase, let command = task.command, let params = parameters else {
            return
        }
        sendResult(result, for: command, params: params)
        if !inChannelRead { scheduleFlush() }
        if let metrics = metrics(lun: task.lun) {
            metrics.commands.increment()
            metrics.duration.recordNanoseconds(NIODeadline.now().uptimeNanoseconds &- task.received.uptimeNanoseconds)
        }
    }

    /// The metrics of `lun` (as the PDU carries it) on this connection's target; nil for a LUN the target does
    /// not have, so an initiator cannot make up label values.
    private func metrics(lun raw: UInt64) -> LUNMetrics? {
        if let known = lunMetrics[raw] { return known }
        let lun = decodeLUN(raw)
        guard let target, target.scsi.device(lun: lun) != nil else { return nil }
        let made = LUNMetrics(target: target.name, lun: lun)
        lunMetrics[raw] = made
        return made
    }

    /// Flushes once the loop has run the tasks queued so far: the completions
    /// that the AIO thread hands over in a burst (one `eventLoop.execute`
    /// each) go out in one write instead of one system call per response.
    private func scheduleFlush() {
        guard !flushScheduled, let eventLoop = context?.eventLoop else { return }
        flushScheduled = true
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        eventLoop.execute {
            let handler = bound.value
            handler.flushScheduled = false
            handler.context?.flush()
        }
    }

    /// Data-In and status for a finished command (RFC 7143 §11.4, §11.7),
    /// with the residual against the Expected Data Transfer Length (§11.4.5).
    private func sendResult(_ result: SCSIResult, for command: SCSICommandPDU, params: ConnectionParameters) {
        let edtl = Int(command.expectedDataTransferLength)
        var overflow = false
        var underflow = false
        var residual = 0
        var dataSN: UInt32 = 0
        if let needed = result.dataOutLength {
            if needed > edtl {
                overflow = true
                residual = needed - edtl
            } else if needed < edtl {
                underflow = true
                residual = edtl - needed
            }
        }
        var data = result.dataIn ?? ByteBuffer()
        if command.read || data.readableBytes > 0 {
            let produced = result.dataInLength ?? data.readableBytes
            if produced > edtl || !command.read {
                overflow = true
                residual = produced - (command.read ? edtl : 0)
                data.moveWriterIndex(to: data.readerIndex + min(data.readableBytes, command.read ? edtl : 0))
            } else if produced < edtl && result.dataOutLength == nil {
                underflow = true
                residual = edtl - produced
            }
            server.metrics.bytesRead.increment(by: Int64(data.readableBytes))
            metrics(lun: command.lun)?.bytesRead.increment(by: Int64(data.readableBytes))
        }
        let collapse = result.status == .good && result.sense == nil
        if data.readableBytes > 0 {
            let segment = max(512, params.maxXmitDataSegmentLength)
            let burst = max(segment, params.maxBurstLength)
            var offset = 0
            var inBurst = 0
            let total = data.readableBytes
            while offset < total {
                let length = min(segment, total - offset, burst - inBurst)
                let slice = data.getSlice(at: data.readerIndex + offset, length: length) ?? ByteBuffer()
                let last = offset + length == total
                inBurst += length
                var pdu = DataInPDU(
                    initiatorTaskTag: command.initiatorTaskTag, sequence: currentSequence(peek: true), dataSN: dataSN,
                    bufferOffset: UInt32(offset), data: slice)
                // RFC 7143 §11.7.1: F ends each sequence (at most MaxBurstLength).
                pdu.final = last || inBurst >= burst
                if inBurst >= burst { inBurst = 0 }
                if last && collapse {
                    pdu.status = result.status.rawValue
                    pdu.residualOverflow = overflow
                    pdu.residualUnderflow = underflow
                    pdu.residualCount = UInt32(residual)
                    pdu.sequence = currentSequence()
                }
                send(pdu.pdu, flush: false)
                dataSN &+= 1
                offset += length
            }
            if collapse { return }
        } else if command.write, result.status == .good {
            let written = Int64(result.dataOutLength ?? command.data.readableBytes)
            server.metrics.bytesWritten.increment(by: written)
            metrics(lun: command.lun)?.bytesWritten.increment(by: written)
        }
        var response = SCSIResponsePDU(
            status: result.status.rawValue, initiatorTaskTag: command.initiatorTaskTag, sequence: currentSequence())
        response.expDataSN = dataSN
        response.residualOverflow = overflow
        response.residualUnderflow = underflow
        response.residualCount = UInt32(residual)
        if let sense = result.sense { response.sense = sense.fixedFormatBytes }
        send(response.pdu, flush: false)
    }

    // MARK: NOP (RFC 7143 §11.18, §11.19)

    private func nopOut(_ nop: NOPOutPDU, inWindow: Bool) {
        if inWindow { window.completed() }
        if nop.targetTransferTag != 0xFFFF_FFFF {
            // The answer to our ping.
            if outstandingPing?.tag == nop.targetTransferTag { outstandingPing = nil }
            if nop.initiatorTaskTag == 0xFFFF_FFFF { return }
        }
        guard nop.initiatorTaskTag != 0xFFFF_FFFF else { return }
        var echo = nop.data
        if let max = parameters?.maxXmitDataSegmentLength, echo.readableBytes > max {
            echo.moveWriterIndex(to: echo.readerIndex + max)
        }
        let nopIn = NOPInPDU(
            initiatorTaskTag: nop.initiatorTaskTag, targetTransferTag: 0xFFFF_FFFF, sequence: currentSequence(), data: echo)
        var pdu = nopIn.pdu
        pdu.header.lun = nop.lun
        send(pdu)
    }

    private func startPings() {
        let interval = server.configuration.nopInInterval
        guard interval > 0, let context else { return }
        let timeout = TimeAmount.seconds(Int64(server.configuration.nopInTimeout))
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        pingTask = context.eventLoop.scheduleRepeatedTask(
            initialDelay: .seconds(Int64(interval)), delay: .seconds(Int64(interval))
        ) { _ in
            bound.value.pingTick(interval: .seconds(Int64(interval)), timeout: timeout)
        }
    }

    private func pingTick(interval: TimeAmount, timeout: TimeAmount) {
        guard case .fullFeature = phase else { return }
        let now = NIODeadline.now()
        if let ping = outstandingPing {
            if now - ping.sent > timeout {
                logger.notice("no answer to NOP-In ping: closing the connection")
                context?.close(promise: nil)
            }
            return
        }
        guard now - lastActivity >= interval else { return }
        let tag = makeTargetTransferTag()
        outstandingPing = (tag, now)
        // RFC 7143 §11.19: a ping has ITT 0xFFFFFFFF and does not advance StatSN.
        let ping = NOPInPDU(initiatorTaskTag: 0xFFFF_FFFF, targetTransferTag: tag, sequence: currentSequence(peek: true))
        // Outside channelRead nothing else flushes: the ping must go out now.
        send(ping.pdu, flush: true)
    }

    // MARK: Task management (RFC 7143 §11.5, SAM-5 §7)

    private func taskManagement(_ request: TaskManagementRequestPDU, inWindow: Bool) {
        if inWindow { window.completed() }
        guard let target, let nexus else {
            respondTMF(request, response: 6)  // no target in a discovery session: authorization failed
            return
        }
        let lun = decodeLUN(request.lun)
        let lunExists = target.scsi.luns.contains(lun)
        let affected: [TaskState]
        let scsiFunction: TaskManagementFunction?
        switch request.function {
        case 1:  // ABORT TASK
            guard lunExists else { return respondTMF(request, response: 2) }
            guard let task = tasks[request.referencedTaskTag], !task.aborted else {
                return respondTMF(request, response: 1)
            }
            affected = [task]
            scsiFunction = nil
        case 2, 4:  // ABORT TASK SET, CLEAR TASK SET
            guard lunExists else { return respondTMF(request, response: 2) }
            affected = tasks.values.filter { $0.lun == request.lun }
            scsiFunction = request.function == 2 ? .abortTaskSet : .clearTaskSet
        case 5:  // LOGICAL UNIT RESET
            guard lunExists else { return respondTMF(request, response: 2) }
            affected = tasks.values.filter { $0.lun == request.lun }
            scsiFunction = .logicalUnitReset
        case 6, 7:  // TARGET WARM RESET, TARGET COLD RESET
            affected = Array(tasks.values)
            scsiFunction = request.function == 6 ? .targetWarmReset : .targetColdReset
        case 8:  // TASK REASSIGN: needs ErrorRecoveryLevel 2
            return respondTMF(request, response: 4)
        default:  // CLEAR ACA (no ACA support) and reserved functions
            return respondTMF(request, response: 5)
        }
        // Abort: tasks still collecting Data-Out end now; executing ones end
        // when their I/O returns, without a response (RFC 7143 §4.2.3.3).
        var waiting = 0
        for task in affected where task.itt != request.initiatorTaskTag {
            task.aborted = true
            if task.executing {
                waiting += 1
            } else {
                finish(task)
            }
        }
        let finish: () -> Void = { [self] in
            guard let function = scsiFunction else {
                respondTMF(request, response: 0)
                return
            }
            let eventLoop = context?.eventLoop
            let bound = eventLoop.map { NIOLoopBound(self, eventLoop: $0) }
            let scsi = target.scsi
            Task {
                _ = await scsi.taskManagement(function, lun: lun, nexus: nexus)
                eventLoop?.execute {
                    guard let handler = bound?.value else { return }
                    handler.respondTMF(request, response: 0)
                    if function == .targetColdReset { handler.closeSoon() }
                }
            }
        }
        if waiting == 0 {
            finish()
            return
        }
        var remaining = waiting
        for task in affected where task.executing && task.itt != request.initiatorTaskTag {
            task.onEnd.append {
                remaining -= 1
                if remaining == 0 { finish() }
            }
        }
    }

    private func respondTMF(_ request: TaskManagementRequestPDU, response: UInt8) {
        let pdu = TaskManagementResponsePDU(
            response: response, initiatorTaskTag: request.initiatorTaskTag, sequence: currentSequence())
        send(pdu.pdu)
        context?.flush()
    }

    // MARK: Text (RFC 7143 §11.10)

    private func text(_ request: TextRequestPDU, header: BasicHeaderSegment, inWindow: Bool) {
        if inWindow { window.completed() }
        guard var negotiator = textNegotiator else { return }
        // SendTargets answers the targets and ACLs of now (RFC 7143 Appendix C), not of the login.
        negotiator.targets = server.discoveryTargets
        let action = negotiator.receivedTextRequest(request, sequence: currentSequence(peek: true))
        textNegotiator = negotiator
        switch action {
        case .sendResponse(let response):
            var response = response
            response.sequence = currentSequence()
            send(response.pdu)
        case .reject(let reason):
            reject(ISCSIPDU(header: header), reason: reason)
        }
    }

    // MARK: Logout (RFC 7143 §11.14)

    private func logout(_ request: LogoutRequestPDU, inWindow: Bool) {
        if inWindow { window.completed() }
        let respond: () -> Void = { [self] in
            // Reason 2 (remove the connection for recovery) needs ErrorRecoveryLevel 2.
            let code: UInt8 = request.reasonCode == 2 ? 2 : 0
            let response = LogoutResponsePDU(
                response: code, initiatorTaskTag: request.initiatorTaskTag, sequence: currentSequence())
            send(response.pdu)
            if code == 0 {
                logger.info("logout")
                closeSoon()
            }
        }
        let running = tasks.values.filter { $0.executing }
        if running.isEmpty || request.reasonCode == 2 {
            respond()
        } else {
            // Let executing commands finish and answer first.
            var remaining = running.count
            for task in running {
                task.onEnd.append {
                    remaining -= 1
                    if remaining == 0 {
                        respond()
                        self.context?.flush()
                    }
                }
            }
        }
    }

    // MARK: - Output

    /// StatSN/ExpCmdSN/MaxCmdSN for the next PDU; unless `peek`, the PDU
    /// carries status and StatSN advances (RFC 7143 §4.2.2.2).
    private func currentSequence(peek: Bool = false) -> SequenceNumbers {
        let sn = SequenceNumbers(statSN: statSN, expCmdSN: window.expCmdSN, maxCmdSN: window.maxCmdSN)
        if !peek { statSN &+= 1 }
        return sn
    }

    private func send(_ pdu: ISCSIPDU, flush: Bool = false) {
        guard let context else { return }
        let dataLength = pdu.data.readableBytes
        if dataLength >= 16384 {
            // Large data goes out as its own buffer: no copy, one writev.
            var header = context.channel.allocator.buffer(capacity: 52 + pdu.additionalHeaders.count)
            serializer.writeHeader(pdu, dataLength: dataLength, into: &header)
            context.write(wrapOutboundOut(header), promise: nil)
            context.write(wrapOutboundOut(pdu.data), promise: nil)
            var trailer = context.channel.allocator.buffer(capacity: 8)
            serializer.writeTrailer(for: pdu.data, into: &trailer)
            if trailer.readableBytes > 0 { context.write(wrapOutboundOut(trailer), promise: nil) }
        } else {
            var out = context.channel.allocator.buffer(capacity: serializer.encodedLength(pdu))
            serializer.write(pdu, into: &out)
            context.write(wrapOutboundOut(out), promise: nil)
        }
        if flush { context.flush() }
    }

    private func send(_ pdu: LoginResponsePDU) {
        send(pdu.pdu)
    }

    /// Reject a PDU that the connection survives (RFC 7143 §11.17).
    private func reject(_ pdu: ISCSIPDU, reason: RejectPDU.Reason) {
        server.metrics.rejects.increment()
        logger.info("reject \(reason) for opcode 0x\(String(pdu.header.rawOpcode, radix: 16))")
        let reject = RejectPDU(reason: reason, sequence: currentSequence(), rejectedHeader: pdu.header.bytes)
        send(reject.pdu)
    }

    /// A connection-level failure: Reject where the header is known, then close.
    private func connectionError(_ why: String, rejecting header: [UInt8]?, reason: RejectPDU.Reason) {
        logger.notice("closing connection: \(why)")
        server.metrics.rejects.increment()
        if let header, case .fullFeature = phase {
            let reject = RejectPDU(reason: reason, sequence: currentSequence(), rejectedHeader: header)
            send(reject.pdu)
        }
        closeSoon()
    }

    private func closeSoon() {
        phase = .closing
        closeAfterFlush = true
        guard let context else { return }
        context.flush()
        context.close(promise: nil)
    }
}

/// The 8-byte LUN field (SAM-5 §4.7): single-level peripheral (00b) and flat (01b) addressing.
func decodeLUN(_ raw: UInt64) -> UInt64 {
    let first = UInt16(raw >> 48)
    switch first >> 14 {
    case 0, 1: return UInt64(first & 0x3FFF)
    default: return UInt64(first)
    }
}

