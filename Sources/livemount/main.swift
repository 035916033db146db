// The livemount command-line tool: backups (`livemount backup ...`) in the repository, live mounts through the
// daemon's control API (`livemount mount|unmount|mounts|status`), targets and raw LUNs of the running daemon
// (`livemount target`, `livemount lun add|remove`), relocations to primary LUNs (`livemount relocate`), and LUN
// checks (`livemount lun read`).
import ArgumentParser

/// The root command: `livemount <group> <command>`.
struct LiveMountTool: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "livemount",
        abstract: "Back up virtual machines and boot them straight out of their backups over iSCSI.",
        subcommands: [
            BackupCommand.self, MountCommand.self, UnmountCommand.self, MountsCommand.self, StatusCommand.self,
            TargetCommand.self, LUNCommand.self,
            TraceCommand.self, RelocateCommand.self, ArchiveCommand.self,
        ]
    )
}

/// Runs the tool. A function rather than a bare top-level call: in top-level code overload resolution picks
/// ParsableCommand's synchronous `main()`, which refuses an asynchronous root command.
func runLiveMountTool() async {
    await LiveMountTool.main()
}

await runLiveMountTool()
