#!/usr/bin/env python3
"""Rewrites a real checkpoint tar into a small fuzz seed, header block by header block.

Every member is kept with its original header bytes (so the seed has the real writer's
header layout), except: checkpoint/pages-*.img are emptied (size 0, checksum recomputed),
config.dump and spec.dump are re-serialised without whitespace (key order kept), and
members named with --empty are emptied too. Only plain ustar/GNU/PAX tars are handled.

usage: shrink_checkpoint.py IN.tar OUT.tar [--empty checkpoint/seccomp.img ...]
"""
import json
import sys

BLOCK = 512


def checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    s = sum(block)
    block[148:156] = b"%06o\0 " % s


def set_size(block: bytearray, size: int) -> None:
    block[124:136] = b"%011o\0" % size
    checksum(block)


def main() -> None:
    src, dst, *rest = sys.argv[1:]
    empty = set(rest[i + 1] for i, a in enumerate(rest) if a == "--empty")
    out = bytearray()
    with open(src, "rb") as f:
        while True:
            block = bytearray(f.read(BLOCK))
            if len(block) < BLOCK or block == bytes(BLOCK):
                break
            name = bytes(block[:100]).split(b"\0", 1)[0].decode()
            size = int(bytes(block[124:136]).strip(b"\0 ") or b"0", 8)
            padded = (size + BLOCK - 1) // BLOCK * BLOCK
            base = name.rsplit("/", 1)[-1]
            if (name.startswith("checkpoint/pages-") and name.endswith(".img")) or name in empty:
                f.seek(padded, 1)
                set_size(block, 0)
                out += block
                continue
            data = f.read(padded)[:size]
            if base in ("config.dump", "spec.dump") and "/" not in name:
                data = json.dumps(json.loads(data), separators=(",", ":")).encode()
                set_size(block, len(data))
            out += block + data + b"\0" * (-len(data) % BLOCK)
    out += bytes(2 * BLOCK)
    with open(dst, "wb") as f:
        f.write(out)
    print(f"{dst}: {len(out)} bytes")


if __name__ == "__main__":
    main()
