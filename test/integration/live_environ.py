"""Print one variable of a running process's environment as the process has it now:
``python3 live_environ.py PID NAME``, as root, in the host.

/proc/<pid>/environ shows the environment a process was started with, and a forked
Gunicorn worker shares its master's: what the worker set since (SENTRY_RELEASE, the
app's environment file) is in the C ``environ`` array that Python's os.environ
writes to. This reads that array through /proc/<pid>/mem, finding ``environ`` in
the executable (a copy relocation) or else in libc. x86-64 and other 64-bit
little-endian Linux only; the test hosts are.
"""

import os
import struct
import sys

SHT_DYNSYM = 11
ET_DYN = 3  # a shared object or a position-independent executable


def _defined_symbol(path, names):
    """(ELF type, value) of the first of ``names`` that ``path`` defines."""
    with open(path, "rb") as handle:
        elf = handle.read()
    elf_type = struct.unpack_from("<H", elf, 0x10)[0]
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize)
        for i in range(shnum)
    ]
    for dynsym in (s for s in sections if s[1] == SHT_DYNSYM):
        strings = sections[dynsym[6]][4]
        for offset in range(dynsym[4], dynsym[4] + dynsym[5], 24):
            name, _info, _other, shndx, value, _size = struct.unpack_from(
                "<IBBHQQ", elf, offset
            )
            start = strings + name
            if shndx and elf[start : elf.index(b"\0", start)] in names:
                return elf_type, value
    return elf_type, None


def live_environment(pid):
    """The environment of process ``pid`` now, as a dict."""
    bases = {}
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and parts[5].startswith("/") and int(parts[2], 16) == 0:
                bases.setdefault(parts[5], int(parts[0].split("-")[0], 16))
    executable = os.readlink(f"/proc/{pid}/exe")
    candidates = [executable] + [p for p in bases if "/libc.so" in p]
    for path in candidates:
        elf_type, value = _defined_symbol(path, (b"environ", b"__environ"))
        if value is not None:
            address = value + (bases.get(path, 0) if elf_type == ET_DYN else 0)
            break
    environment = {}
    with open(f"/proc/{pid}/mem", "rb") as mem:

        def read(at, size):
            mem.seek(at)
            return mem.read(size)

        def string(at):
            data = b""
            while b"\0" not in data:
                data += read(at + len(data), 4096 - (at + len(data)) % 4096)
            return data.split(b"\0", 1)[0]

        array = struct.unpack("<Q", read(address, 8))[0]
        while True:
            pointer = struct.unpack("<Q", read(array, 8))[0]
            if not pointer:
                break
            key, _, value = string(pointer).partition(b"=")
            environment[key.decode()] = value.decode("utf-8", "replace")
            array += 8
    return environment


if __name__ == "__main__":
    print(live_environment(int(sys.argv[1])).get(sys.argv[2], ""))
