#!/usr/bin/env python3
"""Shrinks each PT_LOAD segment's file size to its last non-zero byte.

Debian's vmlinux ends its last loadable segment with .bss and the init
scratch area stored as ~23 MB of zeros. QEMU keeps a private copy of every
segment's file bytes for resets (per VM); zero-filling `memsz - filesz` is
what ELF loaders (QEMU's PVH loader included) do anyway, so the guest sees
the same memory while each QEMU holds ~23 MB less.

Usage: trim-elf.py VMLINUX   (edits the program headers in place)
"""
import struct
import sys

PT_LOAD = 1


def trim(path: str) -> int:
    with open(path, "r+b") as f:
        data = f.read()
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            sys.exit(f"{path}: not a little-endian ELF64 file")
        phoff = struct.unpack_from("<Q", data, 0x20)[0]
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        saved = 0
        for i in range(phnum):
            at = phoff + i * phentsize
            p_type = struct.unpack_from("<I", data, at)[0]
            if p_type != PT_LOAD:
                continue
            offset, _, _, filesz, memsz = struct.unpack_from("<QQQQQ", data, at + 8)
            used = len(data[offset:offset + filesz].rstrip(b"\0"))
            if used < filesz and memsz >= filesz:
                f.seek(at + 32)
                f.write(struct.pack("<Q", used))
                saved += filesz - used
        return saved


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(f"trim-elf: {trim(sys.argv[1])} zero bytes no longer loaded from the file")
