import NIOCore
import NIOPosix

// Swift concurrency runs on NIO's event loops: a SCSI command's task then
// starts and resumes on the loop that owns its connection, without a hop to a
// separate cooperative pool (measured in tools/bench/target-vs-tgt.sh).
_ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
await Livemountd.launch()
