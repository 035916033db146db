// Module TargetServer.
