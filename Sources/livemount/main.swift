// The livemount command-line tool: backups today (`livemount backup ...`); the lead adds mount commands.
import ArgumentParser

/// The root command: `livemount <group> <command>`.
struct LiveMountTool: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "livemount",
        abstract: "Back up virtual machines and boot them straight out of their backups over iSCSI.",
        subcommands: [BackupCommand.self]
    )
}

/// Runs the tool. A function rather than a bare top-level call: in top-level code overload resolution picks
/// ParsableCommand's synchronous `main()`, which refuses an asynchronous root command.
func runLiveMountTool() async {
    await LiveMountTool.main()
}

await runLiveMountTool()
