import Metrics

/// The target's counters (swift-metrics); exported by whatever backend the daemon bootstraps.
struct TargetMetrics: Sendable {
    let sessions = Gauge(label: "livemount_iscsi_sessions")
    let logins = Counter(label: "livemount_iscsi_logins_total")
    let loginFailures = Counter(label: "livemount_iscsi_login_failures_total")
    let commands = Counter(label: "livemount_scsi_commands_total")
    let rejects = Counter(label: "livemount_iscsi_rejects_total")
    let bytesRead = Counter(label: "livemount_scsi_read_bytes_total")
    let bytesWritten = Counter(label: "livemount_scsi_written_bytes_total")
}

/// One LUN's figures, labelled `target` and `lun`: commands, their latency (from the SCSI Command PDU to its
/// response, a histogram), and bytes moved. A connection keeps the ones of the LUNs it has used.
final class LUNMetrics: Sendable {
    let commands: Counter
    let duration: Metrics.Timer
    let bytesRead: Counter
    let bytesWritten: Counter

    init(target: String, lun: UInt64) {
        let dimensions = [("target", target), ("lun", String(lun))]
        commands = Counter(label: "livemount_lun_commands_total", dimensions: dimensions)
        duration = Metrics.Timer(label: "livemount_lun_command_duration", dimensions: dimensions)
        bytesRead = Counter(label: "livemount_lun_read_bytes_total", dimensions: dimensions)
        bytesWritten = Counter(label: "livemount_lun_written_bytes_total", dimensions: dimensions)
    }
}
