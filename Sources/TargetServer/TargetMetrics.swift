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
