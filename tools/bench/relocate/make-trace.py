#!/usr/bin/env python3
"""Writes a synthetic guest trace for tools/bench/relocate.sh: 4 KiB random reads at a fixed rate.

    make-trace.py PATH DISK_BYTES IOPS SECONDS

Reads of 8 blocks (512-byte blocks) at 4 KiB-aligned offsets, uniformly over the first quarter of the disk
(the guest's working set), one every 1/IOPS seconds, each recorded as taking 50 us: `livemount trace replay`
then issues them one at a time (queue depth 1) with the remaining interval as think time, so the guest asks
for about IOPS reads per second whatever the target's latency. Fixed seed: the same reads every run.
"""
import random
import sys


def main() -> None:
    path, disk_bytes, iops, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(0x4B10)
    slots = max(1, disk_bytes // 4 // 4096)
    interval = 1_000_000 / iops
    with open(path, "w") as out:
        out.write("# livemount-trace v1\n# profile=relocate-bench\n# vm=relocate-bench\n")
        out.write("# block_size=512\n# chunk_size=1048576\n# recorded_at=0\n# note=synthetic 4 KiB random reads\n")
        out.write("issued_us,completed_us,lba,blocks,source,prefetched\n")
        for index in range(iops * seconds):
            issued = int(index * interval)
            out.write(f"{issued},{issued + 50},{rng.randrange(slots) * 8},8,cache,0\n")


if __name__ == "__main__":
    main()
