#!/usr/bin/env python3
"""The JIT line table of the loaded programs named NAME, once one is loaded.

    jit_lines.py NAME [WAIT_SECONDS [IMAGE_FILE]]

Prints, per program, `PROG <id> <name> jlen <bytes> ksyms <start of each function> lens (<their
lengths>)`, then one `LI <address> <instruction offset> <file>:<line> <source text>` per line-info
record: where the JIT put the code of each source line (the kernel's jited_line_info, with the
program's BTF line info). Waits up to WAIT_SECONDS for such a program to be loaded; writes the JIT
image to IMAGE_FILE if given. Needs root. Only ctypes: this machine's bpftool has no libbfd, and
the guests have no bpftool.
"""
import ctypes, struct, sys, os, time
libc = ctypes.CDLL(None, use_errno=True)
SYS_bpf = 321
GET_NEXT_ID, PROG_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD, BTF_GET_FD_BY_ID = 11, 13, 15, 19
def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(SYS_bpf, cmd, buf, 128)
    if r < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r, buf
def info(fd, size, pre=None):
    b = ctypes.create_string_buffer(bytes(pre) if pre else b'\0' * size, size)
    bpf(OBJ_GET_INFO_BY_FD, struct.pack('IIQ', fd, size, ctypes.addressof(b)))
    return b
def progs():
    i = 0
    while True:
        try:
            _, b = bpf(GET_NEXT_ID, struct.pack('I', i))
        except OSError:
            return
        i = struct.unpack_from('I', b, 4)[0]
        yield i
name = sys.argv[1].encode()
deadline = time.time() + float(sys.argv[2] if len(sys.argv) > 2 else 0)
while True:
    found = []
    for pid in progs():
        try:
            fd, _ = bpf(PROG_GET_FD_BY_ID, struct.pack('I', pid))
        except OSError:
            continue
        b = info(fd, 232)
        if b.raw[64:80].split(b'\0')[0] == name:
            found.append((pid, fd, b))
    if found or time.time() > deadline:
        break
    time.sleep(1)
for pid, fd, b in found:
    nks, nfl = struct.unpack_from('II', b, 104)
    btf_id = struct.unpack_from('I', b, 128)[0]
    nli = struct.unpack_from('I', b, 148)[0]
    njli = struct.unpack_from('I', b, 168)[0]
    lirs, jlirs = struct.unpack_from('II', b, 172)
    jlen = struct.unpack_from('I', b, 16)[0]
    ks = ctypes.create_string_buffer(8 * nks); fl = ctypes.create_string_buffer(4 * nfl)
    li = ctypes.create_string_buffer(lirs * nli); jli = ctypes.create_string_buffer(jlirs * njli)
    img = ctypes.create_string_buffer(jlen)
    pre = bytearray(232)
    struct.pack_into('I', pre, 16, jlen); struct.pack_into('Q', pre, 24, ctypes.addressof(img))
    struct.pack_into('II', pre, 104, nks, nfl)
    struct.pack_into('QQ', pre, 112, ctypes.addressof(ks), ctypes.addressof(fl))
    struct.pack_into('I', pre, 148, nli); struct.pack_into('Q', pre, 152, ctypes.addressof(li))
    struct.pack_into('Q', pre, 160, ctypes.addressof(jli)); struct.pack_into('I', pre, 168, njli)
    struct.pack_into('II', pre, 172, lirs, jlirs)
    info(fd, 232, pre)
    bfd, _ = bpf(BTF_GET_FD_BY_ID, struct.pack('I', btf_id))
    bi = info(bfd, 32)
    bsize = struct.unpack_from('I', bi, 8)[0]
    btf = ctypes.create_string_buffer(bsize)
    pre = bytearray(32); struct.pack_into('Q', pre, 0, ctypes.addressof(btf)); struct.pack_into('I', pre, 8, bsize)
    info(bfd, 32, pre)
    hl, to, tl, so, sl = struct.unpack_from('IIIII', btf.raw, 4)
    strs = btf.raw[hl + so: hl + so + sl]
    def s(off):
        return strs[off:strs.index(b'\0', off)].decode(errors='replace')
    kss = struct.unpack_from('%dQ' % nks, ks.raw)
    fls = struct.unpack_from('%dI' % nfl, fl.raw)
    print('PROG %d %s jlen %d ksyms %s lens %s' % (pid, name.decode(), jlen, ' '.join(hex(k) for k in kss), fls))
    for k in range(min(nli, njli)):
        off, fn, lo, lc = struct.unpack_from('IIII', li.raw, k * lirs)
        ja = struct.unpack_from('Q', jli.raw, k * jlirs)[0]
        print('LI %x %d %s:%d %s' % (ja, off, os.path.basename(s(fn)), lc >> 10, s(lo).strip()[:140]))
    if len(sys.argv) > 3:
        open(sys.argv[3], 'wb').write(img.raw)
