# Test handler: each op probes one property of the sandbox it runs in.
import ctypes
import errno
import importlib
import json
import os
import socket
import sqlite3
import sys
import time

# When this module ran: a spare sandbox, forked ahead of demand, must not run it before its
# first event.
IMPORTED_AT = time.time()


LISTENERS = []

# Syscall numbers (x86_64) of the calls the escape probe tries.
SYS = {"ptrace": 101, "chroot": 161, "mount": 165, "keyctl": 250, "add_key": 248, "unshare": 272,
       "perf_event_open": 298, "setns": 308, "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425,
       "clone": 56, "open_by_handle_at": 304, "init_module": 175, "pivot_root": 155}
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET = 0x10000000, 0x00020000, 0x40000000


def try_call(fn):
    try:
        fn()
        return 0
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def escape(event):
    """Tries what a hostile handler would; every entry must come back denied."""
    libc = ctypes.CDLL(None, use_errno=True)

    def sys_(name, *args):
        def call():
            r = libc.syscall(SYS[name], *[ctypes.c_long(a) for a in args])
            if r == -1:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
        return call

    buf = ctypes.create_string_buffer(64)
    out = {
        "mount": try_call(sys_("mount", 0, 0, 0, 0, 0)),
        "unshare_user": try_call(sys_("unshare", CLONE_NEWUSER)),
        "unshare_mnt": try_call(sys_("unshare", CLONE_NEWNS)),
        "clone_user": try_call(sys_("clone", CLONE_NEWUSER | 17, 0, 0, 0, 0)),
        "setns": try_call(sys_("setns", 0, 0)),
        "ptrace": try_call(sys_("ptrace", 0, 0, 0, 0)),  # PTRACE_TRACEME
        "keyctl": try_call(sys_("keyctl", 0, -3, 0)),  # KEYCTL_GET_KEYRING_ID of the session
        "add_key": try_call(sys_("add_key", 0, 0, 0, 0, 0)),
        "bpf": try_call(sys_("bpf", 5, ctypes.addressof(buf), 64)),  # BPF_PROG_LOAD
        "perf_event_open": try_call(sys_("perf_event_open", ctypes.addressof(buf), 0, -1, -1, 0)),
        "userfaultfd": try_call(sys_("userfaultfd", 0)),
        "io_uring_setup": try_call(sys_("io_uring_setup", 1, ctypes.addressof(buf))),
        "chroot": try_call(sys_("chroot", 0)),
        "pivot_root": try_call(sys_("pivot_root", 0, 0)),
        "init_module": try_call(sys_("init_module", 0, 0, 0)),
        "open_by_handle_at": try_call(sys_("open_by_handle_at", 0, 0, 0)),
        "raw_socket": try_call(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()),
        "packet_socket": try_call(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()),
        "sethostname": try_call(lambda: socket.sethostname("escape")),
        "mknod": try_call(lambda: os.mknod("/tmp/null", 0o20666, os.makedev(1, 3))),
    }
    # A setuid binary of the image must not make anyone root: mount(8) is setuid root.
    pid = os.fork()
    if pid == 0:
        os.close(1)
        os.close(2)
        try:
            os.execv("/usr/bin/mount", ["mount", "-t", "tmpfs", "none", "/tmp"])
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    out["setuid_mount_exit"] = os.waitstatus_to_exitcode(status)
    # Paths of the host (another function's code, a file the test made) must not be reachable,
    # directly or by walking up from the root.
    for i, path in enumerate(event.get("paths", [])):
        out["read_%d" % i] = try_call(lambda: open(path).close())
        # The classic chroot escape (for whoever may chroot): a new root below the working
        # directory, then up and out.
        os.chdir("/")
        try_call(lambda: os.chroot("/usr"))
        for _ in range(20):
            os.chdir("..")
        out["walk_%d" % i] = try_call(lambda: open("." + path).close())
        try_call(lambda: os.chroot("."))
    return out


def handler(event):
    op = event.get("op", "echo")
    if op == "echo":
        return {"echo": event.get("value")}
    if op == "sqlite":
        db = sqlite3.connect(":memory:")
        db.execute("create table t (x)")
        db.executemany("insert into t values (?)", [(i,) for i in range(10)])
        return {"sum": db.execute("select sum(x) from t").fetchone()[0]}
    if op == "whoami":
        return {"pid": os.getpid(), "uid": os.getuid(), "hostname": socket.gethostname(),
                "cwd": os.getcwd()}
    if op == "kill":
        try:
            os.kill(event["pid"], 0)
            return {"errno": 0}
        except OSError as e:
            return {"errno": errno.errorcode[e.errno]}
    if op == "write":
        try:
            with open(event["path"], "w") as f:
                f.write("x")
            return {"errno": 0}
        except OSError as e:
            return {"errno": errno.errorcode[e.errno]}
    if op == "alloc":
        blocks = [bytearray(1 << 20) for _ in range(event["mb"])]
        return {"allocated_mb": len(blocks)}
    if op == "fork":
        pids, err = [], None
        for _ in range(event["n"]):
            try:
                pid = os.fork()
            except OSError as e:
                err = errno.errorcode[e.errno]
                break
            if pid == 0:
                # A bomb: every child forks as many again (the pids limit stops them).
                for _ in range(event["n"] if event.get("bomb") else 0):
                    try:
                        os.fork()
                    except OSError:
                        break
                time.sleep(30)
                os._exit(0)
            pids.append(pid)
        return {"forked": len(pids), "errno": err}
    if op == "connect":
        try:
            socket.create_connection(("127.0.0.1", event["port"]), timeout=2).close()
            return {"errno": 0}
        except OSError as e:
            return {"errno": errno.errorcode.get(e.errno, str(e))}
    if op == "imported_at":
        return {"imported_at": IMPORTED_AT}
    if op == "modules":
        # Which of the given modules were imported before the handler ran (by a zygote).
        return {name: name in sys.modules for name in event["names"]}
    if op == "import":
        return {"value": importlib.import_module(event["module"]).VALUE}
    if op == "privileged":
        try:
            socket.sethostname("escape")
            return {"errno": 0}
        except OSError as e:
            return {"errno": errno.errorcode[e.errno]}
    if op == "burn":
        # Spin for the given wall time; report the share of one CPU the process got.
        start, cpu0 = time.monotonic(), time.process_time()
        while time.monotonic() - start < event["seconds"]:
            pass
        return {"cpu_share": (time.process_time() - cpu0) / (time.monotonic() - start)}
    if op == "devices":
        # /dev/null works; a device node the image ships beyond those bound from the host does not.
        with open("/dev/null", "w") as f:
            f.write("x")
        try:
            open("/dev/full", "w").close()
            return {"full": 0}
        except OSError as e:
            return {"full": errno.errorcode[e.errno]}
    if op == "creds":
        # The sandbox's privileges as the kernel sees them.
        import resource
        libc = ctypes.CDLL(None, use_errno=True)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()
        if libc.capget(header, data) != 0:
            raise OSError(ctypes.get_errno(), "capget")
        return {"cap_effective": data[0] | data[3] << 32, "cap_permitted": data[1] | data[4] << 32,
                "no_new_privs": libc.prctl(39, 0, 0, 0, 0), "seccomp": libc.prctl(21, 0, 0, 0, 0),
                "rlimit_core": resource.getrlimit(resource.RLIMIT_CORE)[1],
                "rlimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1]}
    if op == "escape":
        return escape(event)
    if op == "fill":
        # Write MiB after MiB into path until an error.
        written, err = 0, None
        try:
            with open(event["path"], "wb") as f:
                while written < event["limit_mb"]:
                    f.write(b"x" * (1 << 20))
                    f.flush()
                    written += 1
        except OSError as e:
            err = errno.errorcode[e.errno]
        return {"written_mb": written, "errno": err}
    if op == "abstract":
        # Listen on, or connect to, an abstract unix socket.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if event.get("listen"):
                s.bind("\0" + event["name"])
                s.listen(1)
                LISTENERS.append(s)
                return {"errno": 0}
            s.settimeout(2)
            s.connect("\0" + event["name"])
            return {"errno": 0}
        except OSError as e:
            return {"errno": errno.errorcode.get(e.errno, str(e))}
    if op == "loopback":
        # The sandbox's own loopback works: listen on it and connect to it.
        srv = socket.socket()
        try:
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            socket.create_connection(srv.getsockname(), timeout=2).close()
            return {"errno": 0}
        except OSError as e:
            return {"errno": errno.errorcode.get(e.errno, str(e))}
        finally:
            srv.close()
    if op == "taint":
        # Leave what a lent sandbox must not pass on: a file in /tmp, an environment
        # variable, a child process and an open file.
        with open("/tmp/lender-secret", "w") as f:
            f.write("secret")
        os.environ["LENDER_SECRET"] = "secret"
        secret = open("/tmp/lender-secret")
        LISTENERS.append(secret)
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        return {"child": pid, "fd": secret.fileno()}
    if op == "inspect":
        # What this sandbox holds: its code dir, its scratch, the environment, whether a pid
        # is alive, and the handler module's own file.
        alive = None
        if event.get("pid"):
            try:
                os.kill(event["pid"], 0)
                alive = True
            except OSError:
                alive = False
        leaked = None
        if event.get("fd"):
            try:
                leaked = os.pread(event["fd"], 64, 0).decode()
            except OSError as e:
                leaked = errno.errorcode[e.errno]
        return {"leaked": leaked, "srv": sorted(os.listdir("/srv")), "tmp": sorted(os.listdir("/tmp")),
                "env": os.environ.get("LENDER_SECRET"), "alive": alive, "cwd": sorted(os.listdir(".")),
                "tainted": len(LISTENERS)}
    if op == "crash":
        os._exit(3)
    if op == "loop":
        while True:
            pass
    if op == "counter":
        # State that survives between calls only in a cached (hot) sandbox.
        global calls
        calls = globals().get("calls", 0) + 1
        return {"calls": calls}
    raise ValueError("unknown op %r" % op)
