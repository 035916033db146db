// The daemon's control API: HTTP/JSON on a Unix socket.
import NIOCore
