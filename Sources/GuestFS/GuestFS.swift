// GuestFS: read-only maps of guest file systems (MBR/GPT partitions, ext4) from a disk's blocks, so a
// prefetch profile can name guest files whose blocks are staged (issue 4, User-selected files).
