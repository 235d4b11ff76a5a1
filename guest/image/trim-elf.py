#!/usr/bin/env python3
"""Shrinks each PT_LOAD segment's file size to its last non-zero byte.

Debian's vmlinux ends its last loadable segment with .bss and the init
scratch area stored as ~23 MB of zeros. QEMU keeps a private copy of every
segment's file bytes for resets (per VM); zero-filling `memsz - filesz` is
what ELF loaders (QEMU's PVH loader included) do anyway, so the guest sees
the same memory while each QEMU holds ~23 MB less.

It also splits a segment around a long run of zeros inside it: x86_64
aligns the start of .rodata to 2 MiB, which leaves up to 2 MiB of zeros
between the end of .text and .rodata in the first segment. The run becomes
the zero-fill tail of the first half, so QEMU keeps that much less as well
(new program headers go into the zero padding after the table, when there).

Usage: trim-elf.py VMLINUX   (edits the program headers in place)
"""
import struct
import sys

PT_LOAD = 1
PAGE = 4096
# Zero runs shorter than this stay loaded from the file.
MIN_GAP = 256 * 1024


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


def zero_run(data: bytes, start: int, end: int) -> tuple[int, int] | None:
    """The longest page-aligned run of zeros in data[start:end], if >= MIN_GAP."""
    best = None
    pos = (start + PAGE - 1) // PAGE * PAGE
    run_start = None
    while pos + PAGE <= end:
        if data[pos:pos + PAGE].count(0) == PAGE:
            if run_start is None:
                run_start = pos
        else:
            if run_start is not None and (best is None or pos - run_start > best[1] - best[0]):
                best = (run_start, pos)
            run_start = None
        pos += PAGE
    if run_start is not None and (best is None or pos - run_start > best[1] - best[0]):
        best = (run_start, pos)
    if best and best[1] - best[0] >= MIN_GAP and best[0] > start:
        return best
    return None


def split(path: str) -> int:
    with open(path, "r+b") as f:
        data = f.read()
        phoff = struct.unpack_from("<Q", data, 0x20)[0]
        shoff = struct.unpack_from("<Q", data, 0x28)[0]
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        entries = [bytearray(data[phoff + i * phentsize:phoff + (i + 1) * phentsize])
                   for i in range(phnum)]
        out, saved = [], 0
        for e in entries:
            p_type, p_flags, offset, vaddr, paddr, filesz, memsz, align = struct.unpack_from(
                "<IIQQQQQQ", e)
            run = zero_run(data, offset, offset + filesz) if p_type == PT_LOAD else None
            if run is None:
                out.append(e)
                continue
            cut, resume = run[0] - offset, run[1] - offset
            first = bytearray(e)
            struct.pack_into("<QQ", first, 32, cut, resume)
            second = bytearray(e)
            struct.pack_into("<QQQQQ", second, 8, offset + resume, vaddr + resume,
                             paddr + resume, filesz - resume, memsz - resume)
            out += [first, second]
            saved += resume - cut
        if len(out) == phnum:
            return 0
        # Room for the longer table: zeros up to the first byte anything else uses.
        table_end = phoff + len(out) * phentsize
        used = [struct.unpack_from("<Q", e, 8)[0] for e in entries
                if struct.unpack_from("<Q", e, 32)[0] > 0]
        for i in range(1, shnum):
            sh = shoff + i * shentsize
            sh_type = struct.unpack_from("<I", data, sh + 4)[0]
            sh_offset, sh_size = struct.unpack_from("<QQ", data, sh + 24)
            if sh_type != 8 and sh_size > 0:  # 8 = SHT_NOBITS
                used.append(sh_offset)
        if shnum:
            used.append(shoff)
        grow_from = phoff + phnum * phentsize
        if (any(grow_from <= u < table_end for u in used) or
                data[grow_from:table_end].count(0) != table_end - grow_from):
            print("trim-elf: no room for more program headers; not splitting", file=sys.stderr)
            return 0
        f.seek(phoff)
        f.write(b"".join(out))
        f.seek(0x38)
        f.write(struct.pack("<H", len(out)))
        return saved


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    # Split first: the halves' own zero tails then go too.
    inner = 0
    for _ in range(4):  # one run per segment per pass
        n = split(sys.argv[1])
        inner += n
        if n == 0:
            break
    print(f"trim-elf: {inner + trim(sys.argv[1])} zero bytes no longer loaded from the file")
