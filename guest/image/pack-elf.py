#!/usr/bin/env python3
"""Rewrites an ELF kernel with its loadable segments packed page by page.

x86_64's vmlinux aligns its segments to 2 MiB in the file too, so ~5 MiB
of the file is padding between segments. QEMU maps the whole file for its
PVH loader and keeps the mapping for resets; the page cache's fault-around
maps padding pages next to the ones it reads, so each VM held ~17.5 MiB of
the file where ~12 MiB is content. Packed (each segment at the next page,
offset = vaddr mod 4096, p_align 4096), the file holds nothing else: no
padding and no section headers (nothing that boots the kernel reads them).
Notes inside a segment follow it; the guest's memory is the same.

Usage: pack-elf.py IN OUT
"""
import struct
import sys

PT_LOAD, PT_NOTE = 1, 4
PAGE = 4096
EHDR, PHDR = 64, 56


def pack(src: bytes) -> bytes:
    if src[:4] != b"\x7fELF" or src[4] != 2 or src[5] != 1:
        sys.exit("pack-elf: not a little-endian ELF64 file")
    phoff = struct.unpack_from("<Q", src, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", src, 0x36)
    if phentsize != PHDR:
        sys.exit(f"pack-elf: program header size {phentsize}")
    phdrs = [list(struct.unpack_from("<IIQQQQQQ", src, phoff + i * PHDR)) for i in range(phnum)]
    out = bytearray(src[:EHDR])
    struct.pack_into("<Q", out, 0x20, EHDR)          # e_phoff
    struct.pack_into("<Q", out, 0x28, 0)             # e_shoff
    struct.pack_into("<HHH", out, 0x3A, 0, 0, 0)     # e_shentsize, e_shnum, e_shstrndx
    out += bytes(phnum * PHDR)
    moved = []  # (old offset, old end, new offset) of each packed segment
    for ph in phdrs:
        p_type, _, offset, vaddr, _, filesz, _, _ = ph
        if p_type != PT_LOAD:
            continue
        at = (len(out) + PAGE - 1) // PAGE * PAGE + vaddr % PAGE
        out += bytes(at - len(out))
        out += src[offset:offset + filesz]
        moved.append((offset, offset + filesz, at))
        ph[2], ph[7] = at, PAGE
    for ph in phdrs:
        if ph[0] == PT_LOAD:
            continue
        offset, filesz = ph[2], ph[5]
        inside = [new + offset - old for old, end, new in moved if old <= offset and offset + filesz <= end]
        if inside:
            ph[2] = inside[0]
        elif filesz == 0:
            ph[2] = 0
        else:  # a note outside every segment: carried over as is
            ph[2] = len(out)
            out += src[offset:offset + filesz]
    for i, ph in enumerate(phdrs):
        struct.pack_into("<IIQQQQQQ", out, EHDR + i * PHDR, *ph)
    return bytes(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1], "rb") as f:
        data = f.read()
    packed = pack(data)
    with open(sys.argv[2], "wb") as f:
        f.write(packed)
    print(f"pack-elf: {len(data)} -> {len(packed)} bytes", file=sys.stderr)
