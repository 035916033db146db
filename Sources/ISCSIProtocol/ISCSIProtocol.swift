// Module ISCSIProtocol.
