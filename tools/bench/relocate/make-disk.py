#!/usr/bin/env python3
"""Writes a disk image of realistic content for tools/bench/relocate.sh.

    make-disk.py PATH MIB

Per 1 MiB chunk, from a fixed seed: 40% random data (incompressible), 25% zeros (left as holes), 15% a
repeat of an earlier data chunk (deduplicated by the repository), 10% compressible text-like data, 10% half
random, half zeros. The same arguments always give the same image.
"""
import random
import sys

MIB = 1 << 20


def main() -> None:
    path, mib = sys.argv[1], int(sys.argv[2])
    rng = random.Random(0x5EED_0005)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(512)]
    earlier = []  # offsets of data chunks written so far, for repeats
    with open(path, "wb") as out:
        out.truncate(mib * MIB)
        for index in range(mib):
            kind = rng.random()
            if kind < 0.25:
                continue  # zeros: a hole
            out.seek(index * MIB)
            if kind < 0.65 or not earlier:
                chunk = rng.randbytes(MIB)
            elif kind < 0.80:
                chunk = earlier[rng.randrange(len(earlier))]
            elif kind < 0.90:
                chunk = b" ".join(rng.choices(words, k=MIB // 4))[:MIB]
            else:
                chunk = rng.randbytes(MIB // 2) + bytes(MIB // 2)
            out.write(chunk)
            if len(earlier) < 64:
                earlier.append(chunk)
            else:
                earlier[rng.randrange(64)] = chunk


if __name__ == "__main__":
    main()
