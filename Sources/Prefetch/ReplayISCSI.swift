// Trace replay through libiscsi: one `ISCSIClient` session per replay thread (issue 4, Replay).
import BlockDevice

/// A replay session over libiscsi's synchronous API.
///
/// The client is used by one thread at a time: the replay driver calls `read` only from this session's own
/// thread, and the session is connected and logged out by whoever owns it before and after the replay.
public final class ISCSIReplaySession: ReplayDevice, @unchecked Sendable {
    /// The logged-in client.
    public let client: ISCSIClient
    /// How long each read polls for its answer before sleeping, µs (`ISCSIClient.readDiscarding`).
    public let pollMicroseconds: Int

    public init(client: ISCSIClient, pollMicroseconds: Int = 0) {
        self.client = client
        self.pollMicroseconds = pollMicroseconds
    }

    /// READ (16) of the blocks (SBC-4 §5.17); the data is checked for length and dropped.
    public func read(lba: UInt64, blocks: UInt32) throws {
        try client.readDiscarding(lba: lba, blocks: Int(blocks), pollMicroseconds: pollMicroseconds)
    }
}

/// The LUN a replay reads from: its sessions and capacity.
public struct ISCSIReplayTarget: Sendable {
    /// Logged-in sessions, one per replay thread.
    public var sessions: [ISCSIReplaySession]
    /// The LUN's capacity (READ CAPACITY (16)).
    public var capacity: ISCSIClient.Capacity

    /// Logs `count` sessions in to the LUN at `url` (`iscsi://HOST[:PORT]/IQN/LUN`) as `initiator`, each with
    /// its own ISID and polling `pollMicroseconds` for each answer, and reads the capacity on each (so that no
    /// replayed read pays for it). Blocks: call it from a thread of its own. On failure the sessions already
    /// made are logged out.
    public static func connect(
        url: String, initiator: String, count: Int, timeoutSeconds: Int = 30, pollMicroseconds: Int = 0
    ) throws(ReplayError) -> ISCSIReplayTarget {
        var sessions: [ISCSIReplaySession] = []
        var capacity: ISCSIClient.Capacity?
        do throws(ISCSIClientError) {
            for _ in 0..<max(1, count) {
                let client = ISCSIClient(timeoutSeconds: timeoutSeconds)
                try client.connect(url: url, initiatorName: initiator)
                sessions.append(ISCSIReplaySession(client: client, pollMicroseconds: pollMicroseconds))
                let found = try client.readCapacity16()
                if let capacity, capacity.blockSize != found.blockSize || capacity.blockCount != found.blockCount {
                    throw ISCSIClientError(.transport, "sessions to \(url) report different capacities")
                }
                capacity = found
            }
        } catch {
            for session in sessions { try? session.client.logout() }
            throw .connectFailed("\(url): \(error)")
        }
        guard let capacity else { throw .connectFailed("\(url): no session") }
        return ISCSIReplayTarget(sessions: sessions, capacity: capacity)
    }

    /// Logs every session out.
    public func logout() {
        for session in sessions { try? session.client.logout() }
    }
}
