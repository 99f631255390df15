# The confining stage of a handler package checkpoint starts with Spec.Root (confine.go). It
# runs as root of a user namespace the caller (real root) owns, in new mount, PID, network,
# IPC and UTS namespaces, with the host's python3, before anything of the image runs:
#   python3 -I -c CONFINE ROOT UID ARGV0 ARG...
# It attaches ROOT as the mount namespace's root (a recursive bind onto itself, pivot_root,
# the host's tree detached), mounts a /proc of the PID namespace (CRIU's parasite needs one),
# closes every fd but stdio, becomes UID with no capabilities and no_new_privs, and execs
# ARGV0 inside ROOT.
import ctypes
import os
import sys

libc = ctypes.CDLL(None, use_errno=True)
MS_BIND, MS_REC, MS_PRIVATE, MNT_DETACH = 4096, 16384, 1 << 18, 2
PR_SET_NO_NEW_PRIVS = 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}[os.uname().machine]


def check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))


root, uid, argv = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3:]
check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
check(libc.mount(root, root, None, MS_BIND | MS_REC, None), "bind the root")
# A new proc may be mounted only where one is visible already: before the host's goes.
check(libc.mount(b"proc", root + b"/proc", b"proc", 0, None), "mount /proc")
os.chdir(root)
check(libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
check(libc.umount2(b".", MNT_DETACH), "detach the host's root")
os.chdir("/")
os.closerange(3, os.sysconf("SC_OPEN_MAX"))
check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
os.execv(argv[0], argv)
