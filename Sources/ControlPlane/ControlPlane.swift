import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

// The daemon's control API: HTTP/1.1 with JSON bodies on a Unix socket (the socket file's mode, 0600, is the
// access control). The `livemount` CLI is its client. This module only moves requests and responses; what the
// routes mean lives in the daemon (`livemountd`), so the transport can be tested on its own.

// MARK: - Messages

/// One request to the control API.
public struct ControlRequest: Sendable {
    /// GET, POST, DELETE...
    public var method: String
    /// The path without the query, percent-decoded per segment: `/v1/mounts/iqn.x/1` → ["v1", "mounts", "iqn.x", "1"].
    public var pathSegments: [String]
    /// Query parameters (`?overlay=keep`), last value wins.
    public var query: [String: String]
    /// The request body (JSON for mutating calls), possibly empty.
    public var body: [UInt8]

    public init(method: String, pathSegments: [String], query: [String: String] = [:], body: [UInt8] = []) {
        self.method = method
        self.pathSegments = pathSegments
        self.query = query
        self.body = body
    }

    /// Parses `/a/b?c=d` into segments and a query.
    public init(method: String, uri: String, body: [UInt8]) {
        let parts = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = parts.first.map(String.init) ?? "/"
        self.method = method
        self.pathSegments = path.split(separator: "/").map { String($0).removingPercentEncoding ?? String($0) }
        var query: [String: String] = [:]
        if parts.count == 2 {
            for item in parts[1].split(separator: "&") {
                let pair = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let key = String(pair[0]).removingPercentEncoding ?? String(pair[0])
                let value = pair.count == 2 ? (String(pair[1]).removingPercentEncoding ?? String(pair[1])) : ""
                query[key] = value
            }
        }
        self.query = query
        self.body = body
    }

    /// Decodes the JSON body; the error says which field was wrong.
    public func decode<T: Decodable>(_ type: T.Type) throws(ControlError) -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(body.isEmpty ? Array("{}".utf8) : body))
        } catch let DecodingError.keyNotFound(key, _) {
            throw ControlError(status: 400, "missing field \"\(key.stringValue)\"")
        } catch let DecodingError.typeMismatch(_, context) {
            throw ControlError(status: 400, "field \"\(Self.path(context))\": wrong type")
        } catch let DecodingError.valueNotFound(_, context) {
            throw ControlError(status: 400, "field \"\(Self.path(context))\": null not allowed")
        } catch {
            throw ControlError(status: 400, "request body is not valid JSON")
        }
    }

    private static func path(_ context: DecodingError.Context) -> String {
        context.codingPath.map(\.stringValue).joined(separator: ".")
    }
}

/// One response: a status and a JSON body.
public struct ControlResponse: Sendable {
    public var status: Int
    public var body: [UInt8]
    /// The body's media type (JSON unless a route says otherwise, as `GET /metrics` does).
    public var contentType: String

    public init(status: Int, body: [UInt8], contentType: String = "application/json") {
        self.status = status
        self.body = body
        self.contentType = contentType
    }

    /// A body in the Prometheus text exposition format (version 0.0.4).
    public static func prometheus(_ body: [UInt8]) -> ControlResponse {
        ControlResponse(status: 200, body: body, contentType: "text/plain; version=0.0.4; charset=utf-8")
    }

    /// A JSON body encoded from `value` (sorted keys, so output is stable).
    public static func json<T: Encodable>(_ value: T, status: Int = 200) -> ControlResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        do {
            return ControlResponse(status: status, body: Array(try encoder.encode(value)))
        } catch {
            return .error(ControlError(status: 500, "cannot encode the response: \(error)"))
        }
    }

    /// `{"error": "..."}` with the error's status.
    public static func error(_ error: ControlError) -> ControlResponse {
        json(ErrorBody(error: error.message), status: error.status)
    }
}

/// The body of every failed call.
public struct ErrorBody: Codable, Sendable {
    public var error: String
}

/// A control call that failed, with the HTTP status it maps to (400 bad request, 404 unknown thing, 409
/// conflict, 500 internal) and a message naming what was wrong.
public struct ControlError: Error, Sendable, CustomStringConvertible {
    public var status: Int
    public var message: String

    public init(status: Int, _ message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { message }
}

// MARK: - Server

/// Serves the control API on a Unix socket (mode 0600: the owner only), or on a loopback TCP port where every
/// request must carry `Authorization: Bearer TOKEN`. Each request is handed to `handler` off the event loop (in a
/// Task); one request per connection (`Connection: close`).
public final class ControlServer: Sendable {
    public typealias Handler = @Sendable (ControlRequest) async -> ControlResponse

    /// The Unix socket; nil for a TCP server.
    public let socketPath: String?
    private let tcp: (host: String, port: Int, token: String)?
    private let handler: Handler
    private let logger: Logger
    private let channel = Mutex<(any Channel)?>(nil)
    /// The largest request body accepted (a mount request is a few hundred bytes).
    static let maximumBodySize = 1 << 20

    public init(socketPath: String, logger: Logger, handler: @escaping Handler) {
        self.socketPath = socketPath
        self.tcp = nil
        self.handler = handler
        self.logger = logger
    }

    /// A TCP listener on `host:port` (the caller keeps it to loopback addresses) that answers only requests
    /// carrying `token`.
    public init(host: String, port: Int, token: String, logger: Logger, handler: @escaping Handler) {
        self.socketPath = nil
        self.tcp = (host, port, token)
        self.handler = handler
        self.logger = logger
    }

    /// Binds the socket (replacing a stale socket file) and makes it private to the owner (0600), or binds the
    /// TCP address.
    public func start() async throws {
        let handler = self.handler
        let logger = self.logger
        let token = tcp?.token
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        ControlHTTPHandler(handler: handler, token: token, logger: logger))
                }
            }
        let bound: any Channel
        if let tcp {
            bound = try await bootstrap.bind(host: tcp.host, port: tcp.port).get()
        } else if let socketPath {
            bound = try await bootstrap.bind(unixDomainSocketPath: socketPath, cleanupExistingSocketFile: true).get()
            chmod(socketPath, 0o600)
        } else {
            return
        }
        channel.withLock { $0 = bound }
    }

    /// Stops listening and removes the socket file.
    public func shutdown() async {
        let bound = channel.withLock { c in
            let value = c
            c = nil
            return value
        }
        if let bound {
            try? await bound.close()
            if let socketPath { unlink(socketPath) }
        }
    }
}

/// Collects one HTTP request and answers it through the handler.
private final class ControlHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let handler: ControlServer.Handler
    /// The bearer token requests must carry (TCP); nil on the Unix socket, where the file mode guards.
    private let token: String?
    private let logger: Logger
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false

    init(handler: @escaping ControlServer.Handler, token: String?, logger: Logger) {
        self.handler = handler
        self.token = token
        self.logger = logger
    }

    /// Whether `head` carries `Authorization: Bearer TOKEN` (RFC 6750 §2.1), compared in constant time.
    static func authorized(_ head: HTTPRequestHead, token: String) -> Bool {
        guard let value = head.headers.first(name: "Authorization") else { return false }
        let expected = Array(("Bearer " + token).utf8)
        let given = Array(value.utf8)
        guard given.count == expected.count else { return false }
        return zip(given, expected).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let requestHead):
            head = requestHead
            body = []
            tooLarge = false
        case .body(var buffer):
            if body.count + buffer.readableBytes > ControlServer.maximumBodySize {
                tooLarge = true
            } else if let bytes = buffer.readBytes(length: buffer.readableBytes) {
                body += bytes
            }
        case .end:
            guard let requestHead = head else { return }
            head = nil
            let request = ControlRequest(method: requestHead.method.rawValue, uri: requestHead.uri, body: body)
            let handler = self.handler
            let tooLarge = self.tooLarge
            let unauthorized = token.map { !Self.authorized(requestHead, token: $0) } ?? false
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.makeFutureWithTask { () async -> ControlResponse in
                if unauthorized {
                    return .error(ControlError(status: 401, "this listener needs Authorization: Bearer TOKEN"))
                }
                if tooLarge { return .error(ControlError(status: 413, "request body larger than 1 MiB")) }
                return await handler(request)
            }.whenSuccess { response in
                let (this, context) = loopBound.value
                this.respond(response, context: context)
            }
        }
    }

    private func respond(_ response: ControlResponse, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        if response.status == 401 { headers.add(name: "WWW-Authenticate", value: "Bearer") }
        headers.add(name: "Content-Length", value: "\(response.body.count)")
        headers.add(name: "Connection", value: "close")
        let head = HTTPResponseHead(
            version: .http1_1, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: response.body.count)
        buffer.writeBytes(response.body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            loopBound.value.close(promise: nil)
        }
    }
}

// MARK: - Client

/// The CLI's side: one request per connection, to the daemon's Unix socket or to its loopback TCP listener (with
/// the bearer token).
public struct ControlClient: Sendable {
    /// The Unix socket, or `host:port` for TCP (for messages).
    public let socketPath: String
    private let tcp: (host: String, port: Int, token: String)?

    public init(socketPath: String) {
        self.socketPath = socketPath
        self.tcp = nil
    }

    /// A client of the TCP listener at `host:port`, sending `Authorization: Bearer token`.
    public init(host: String, port: Int, token: String) {
        self.socketPath = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        self.tcp = (host, port, token)
    }

    /// Sends one request and returns the status and body. Throws `ControlError` with status 0 when the daemon
    /// cannot be reached (the message says how to start it).
    public func send(_ method: String, _ path: String, body: [UInt8] = []) async throws(ControlError) -> ControlResponse {
        let group = MultiThreadedEventLoopGroup.singleton
        let promise = group.next().makePromise(of: ControlResponse.self)
        let channel: any Channel
        do {
            let bootstrap = ClientBootstrap(group: group)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(ControlClientHandler(promise: promise))
                    }
                }
            if let tcp {
                channel = try await bootstrap.connect(host: tcp.host, port: tcp.port).get()
            } else {
                channel = try await bootstrap.connect(unixDomainSocketPath: socketPath).get()
            }
        } catch {
            promise.fail(error)
            throw ControlError(
                status: 0, "cannot reach livemountd at \(socketPath): \(Self.describe(error)) (is the daemon running?)")
        }
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "livemountd")
        if let tcp { headers.add(name: "Authorization", value: "Bearer \(tcp.token)") }
        headers.add(name: "Content-Length", value: "\(body.count)")
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Connection", value: "close")
        let head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: path, headers: headers)
        var buffer = channel.allocator.buffer(capacity: body.count)
        buffer.writeBytes(body)
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(buffer)), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        do {
            let response = try await promise.futureResult.get()
            try? await channel.close()
            return response
        } catch {
            try? await channel.close()
            throw ControlError(status: 0, "livemountd at \(socketPath) closed the connection: \(Self.describe(error))")
        }
    }

    private static func describe(_ error: any Error) -> String {
        if let io = error as? IOError {
            return String(cString: strerror(io.errnoCode))
        }
        return "\(error)"
    }
}

/// Collects the response and fulfils the promise; fails it if the connection closes first.
private final class ControlClientHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let promise: EventLoopPromise<ControlResponse>
    private var status = 0
    private var body: [UInt8] = []
    private var done = false

    init(promise: EventLoopPromise<ControlResponse>) {
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
        case .body(var buffer):
            body += buffer.readBytes(length: buffer.readableBytes) ?? []
        case .end:
            done = true
            promise.succeed(ControlResponse(status: status, body: body))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done {
            done = true
            promise.fail(ChannelError.eof)
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !done {
            done = true
            promise.fail(error)
        }
        context.close(promise: nil)
    }
}
