// Tests for GuestFS: partition tables and ext4 file-to-extent maps against mkfs.ext4/debugfs images.
