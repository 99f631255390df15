# The confining stage of a handler package checkpoint starts with Spec.Root (confine.go). It
# runs as root of a user namespace the caller (real root) owns, in new mount, PID, network,
# IPC and UTS namespaces, with the host's python3, before anything of the image runs:
#   python3 -I -c CONFINE CONFIG
# CONFIG is JSON: root, uid, argv, and optionally binds ([fd, target] pairs: a detached mount
# tree the caller cloned from a host directory, read-only, attached at target), hostname,
# rlimits ([resource, value] pairs) and filter (hex of a seccomp program, a struct
# sock_filter array).
# It attaches root as the mount namespace's root (a recursive bind onto itself, read-only,
# nosuid and nodev, the binds, a
# /proc of the PID namespace, pivot_root, the host's tree detached), closes every fd but
# stdio, becomes uid with no capabilities and no_new_privs, loads the
# filter and execs argv inside root.
import ctypes
import json
import os
import resource
import socket
import sys

libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
MS_BIND, MS_REC, MS_PRIVATE, MNT_DETACH = 4096, 16384, 1 << 18, 2
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}[os.uname().machine]
SYS_MOVE_MOUNT, MOVE_MOUNT_F_EMPTY_PATH, AT_FDCWD = 429, 4, -100


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))


cfg = json.loads(sys.argv[1])
root = cfg["root"].encode()
check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
check(libc.mount(root, root, None, MS_BIND | MS_REC, None), "bind the root")
flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
check(libc.mount(None, root, None, flags, None), "make the root read-only")
for fd, target in cfg.get("binds", []):
    dst = root + target.encode()
    check(libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH), "attach " + target)
# A new proc may be mounted only where one is visible already: before the host's goes.
check(libc.mount(b"proc", root + b"/proc", b"proc", 0, None), "mount /proc")
os.chdir(root)
check(libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
check(libc.umount2(b".", MNT_DETACH), "detach the host's root")
os.chdir("/")
if cfg.get("hostname"):
    socket.sethostname(cfg["hostname"])
for res, value in cfg.get("rlimits", []):
    resource.setrlimit(res, (value, value))
os.closerange(3, os.sysconf("SC_OPEN_MAX"))
check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
os.setgroups([])
os.setgid(cfg["uid"])
os.setuid(cfg["uid"])
if cfg.get("filter"):
    prog = bytes.fromhex(cfg["filter"])
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")
os.execv(cfg["argv"][0], cfg["argv"])
