# obd sandbox runner: runs inside a function sandbox's chroot with the image's python3.
#
#   python3 -I -c RUNNER zygote MODULES FILTER   serve fork requests on fd 3 (SOCK_SEQPACKET)
#   python3 -I -c RUNNER cold SPEC               be one sandbox, channel on fd 3
#   python3 -I -c RUNNER checkpoint SPEC         be one sandbox to checkpoint, channel on
#                                                stdin and stdout (pipes: CRIU restores them)
#
# The server started it confined (confine.go): in a user namespace, chrooted, with a seccomp
# filter; a cold sandbox is nobody already and in its cgroup. A zygote holds the few
# capabilities it needs to make sandboxes; each forked sandbox becomes nobody, losing them, and
# stacks FILTER (hex of a struct sock_filter array) to give up what the zygote's filter allowed
# it alone: chroot, sethostname, clone of namespaces.
#
# Zygote requests are JSON messages with file descriptors attached (SCM_RIGHTS):
#   {"op": "fork", "spec": SPEC}      fds: sandbox root dir, channel, cgroup.procs files...
#   {"op": "zygote", "imports": [..], "netns": true}
#                                     fds: control socket of the new child zygote, which
#                                     moves into a network namespace of its own first
#   {"op": "ping"}                    is the zygote alive?
# and each gets one reply, {"pid": N} or {"error": "..."}. A forked sandbox is born in its own
# PID, UTS and IPC namespaces (PID 1 there); the zygote itself is PID 1 of the namespace the
# server started it in, so killing it ends every sandbox forked from it.
#
# A sandbox talks to the server over its channel (a stream socket) in frames: 4-byte big-endian
# length, then JSON. Once in its namespaces, cgroup and chroot, as nobody, the sandbox sends
# {"waiting": true} and waits for the first request {"event": ...}: a spare sandbox, forked
# ahead of demand, waits there. Then it imports the handler and sends {"ready": true} or
# {"error": traceback}, and per request (the first one included) one reply {"result": ...} or
# {"error": ...}. A request {"rebind": SPEC, "event": ...} lends the sandbox to another
# function: the runner scrubs what the previous function left (rebind), imports SPEC's handler
# and replies {"ready": true} (or the error) before the result.
import ctypes
import importlib
import importlib.util
import json
import os
import resource
import signal
import socket
import struct
import sys
import traceback

CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
MAX_FRAME = 16 << 20

SYS_CLONE = {"x86_64": 56, "aarch64": 220}[os.uname().machine]
SIGCHLD = 17

libc = ctypes.CDLL(None, use_errno=True)
# Called with the GIL held: the clone must not run while the GIL is released.
pylibc = ctypes.PyDLL(None, use_errno=True)
pythonapi = ctypes.pythonapi


def check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))


def send_frame(conn, obj):
    try:
        data = json.dumps(obj).encode()
    except (TypeError, ValueError) as e:
        data = json.dumps({"error": "result is not JSON: %s" % e}).encode()
    if len(data) > MAX_FRAME:
        data = json.dumps({"error": "result of %d bytes is over the %d byte limit" % (len(data), MAX_FRAME)}).encode()
    conn.sendall(struct.pack(">I", len(data)) + data)


def recv_exact(conn, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(conn):
    head = recv_exact(conn, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > MAX_FRAME:
        raise ValueError("frame of %d bytes" % n)
    body = recv_exact(conn, n)
    if body is None:
        return None
    return json.loads(body)


def join_cgroup(fds):
    # Writing 0 moves the writer itself; it is right in any PID namespace.
    for fd in fds:
        os.write(fd, b"0")
        os.close(fd)


def drop_privileges(uid):
    # setuid to an unprivileged user clears every capability; no_new_privs (set by confine
    # already) stops setuid binaries from getting them back.
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")
    if os.getuid() != uid:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if FORKED_FILTER is not None:
        check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(FORKED_FILTER[0]), 0, 0), "seccomp")


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# The filter a forked sandbox stacks: (struct sock_fprog, its buffer), kept alive.
FORKED_FILTER = None


def load_forked_filter(hexprog):
    global FORKED_FILTER
    prog = bytes.fromhex(hexprog)
    buf = ctypes.create_string_buffer(prog, len(prog))
    FORKED_FILTER = (SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p)), buf)


def find_code(module):
    """Everything of importing the handler's module but running it: finding it on sys.path
    and reading its code (the .pyc made at registration), about 0.6 ms of a 0.7 ms import.
    A spare does it before its first event; no handler code runs. None when the module is
    not found (the import then raises) or is inside a package (finding it would run the
    package's __init__)."""
    if "." in module:
        return None
    try:
        spec = importlib.util.find_spec(module)
        code = spec.loader.get_code(module)
    except Exception:
        return None
    return (spec, code) if code is not None else None


def import_handler(module, code):
    """Import the handler's module, running the code find_code read if it did."""
    if code is None:
        return importlib.import_module(module)
    spec, code = code
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    exec(code, mod.__dict__)
    return mod


def fail(conn):
    """Report the exception being handled as the sandbox's last frame, and exit."""
    send_frame(conn, {"error": traceback.format_exc()})
    os._exit(1)


class PipeConn:
    """A channel over two pipes, with the socket methods the runner uses."""

    def __init__(self, r, w):
        self.r, self.w = r, w

    def recv(self, n):
        return os.read(self.r, n)

    def sendall(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.w, view):]


def run_sandbox(spec, chan):
    """Final stage of every sandbox: already in its chroot, namespaces and cgroup."""
    # The handler's output goes nowhere: its errors come back in replies, and the server's
    # log (inherited as stderr) is not the handler's to fill.
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    serve(spec, socket.socket(fileno=chan), chan)


def run_checkpointed(spec):
    """A sandbox made to be checkpointed (package checkpoint confined it; no /dev here): its
    channel is stdin and stdout, which CRIU gives back at restore, and print() goes to stderr.
    It imports its modules and its handler before it reports waiting, where it is dumped."""
    sys.stdout = sys.stderr
    serve(spec, PipeConn(0, 1), None, preload=True)


def serve(spec, conn, chan, preload=False):
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # What a lent sandbox is reset to before another function's handler runs (rebind).
    pristine = (dict(os.environ), list(sys.path))
    try:
        os.chdir(spec["dir"])
        sys.path[:0] = [spec["dir"]] + spec.get("paths", [])
        drop_privileges(spec.get("uid", 65534))
    except BaseException:
        fail(conn)
    module, _, func = spec["entry"].rpartition(".")
    code = find_code(module)
    handler = None
    if preload:
        try:
            for name in spec.get("imports") or []:
                importlib.import_module(name)
            handler = getattr(import_handler(module, code), func)
        except BaseException:
            fail(conn)
    send_frame(conn, {"waiting": True})
    req = recv_frame(conn)
    announced = False
    while req is not None:
        if req.get("rebind"):
            # Lent to another function: the server swapped /srv and /tmp already.
            try:
                rebind(spec, req["rebind"], pristine, chan)
            except BaseException:
                fail(conn)
            spec, handler, code = req["rebind"], None, None
            module, _, func = spec["entry"].rpartition(".")
        if handler is None:
            try:
                handler = getattr(import_handler(module, code), func)
            except BaseException:
                fail(conn)
            announced = False
        if not announced:
            send_frame(conn, {"ready": True})
            announced = True
        try:
            reply = {"result": handler(req.get("event"))}
        except BaseException:
            reply = {"error": traceback.format_exc()}
        send_frame(conn, reply)
        req = recv_frame(conn)
    os._exit(0)


def rebind(old, new, pristine, chan):
    """Scrub what the function this sandbox served left in the process before new's handler
    is imported: other processes, open files (pointed at /dev/null), environment, sys.path,
    its modules and working directory. The interpreter's other state is not undone (lend.go says why that is
    accepted)."""
    # PID 1 of its namespace: kill(-1) reaches every other process in it, and only those.
    if os.getpid() != 1:
        raise RuntimeError("rebind: not PID 1 of a namespace of its own")
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    env, path = pristine
    os.environ.clear()
    os.environ.update(env)
    prefix = old["dir"].rstrip("/") + "/"
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if isinstance(f, str) and f.startswith(prefix):
            del sys.modules[name]
    # The lender's open files become /dev/null rather than closed: an object of the lender's
    # that still wraps one closes /dev/null when it is collected, never a file of the
    # borrower's that got the same number. (Collecting now instead would touch every page
    # the sandbox shares with its zygote: milliseconds.)
    # The server caps RLIMIT_NOFILE (confine.go), so the scan is short.
    null = os.open("/dev/null", os.O_RDWR)
    for fd in range(3, resource.getrlimit(resource.RLIMIT_NOFILE)[1]):
        if fd in (chan, null):
            continue
        try:
            os.fstat(fd)
        except OSError:
            continue  # not open
        os.dup2(null, fd)
    os.close(null)
    sys.path[:] = [new["dir"]] + new.get("paths", []) + path
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    # Re-entered: the server mounted the new code over the old, and the old working
    # directory is the old code.
    os.chdir("/")
    os.chdir(new["dir"])


def clone_into_namespaces():
    """os.fork, but the child starts in new PID, UTS and IPC namespaces (as PID 1).

    unshare(CLONE_NEWPID) would only apply to the caller's next child, costing a second fork
    of this (large) process per sandbox; clone makes the namespaces and the child at once. The
    interpreter's fork bookkeeping is done through its C API, as os.fork does it.
    """
    pythonapi.PyOS_BeforeFork()
    pid = pylibc.syscall(SYS_CLONE, CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        pythonapi.PyOS_AfterFork_Child()
    else:
        err = ctypes.get_errno()
        pythonapi.PyOS_AfterFork_Parent()
        if pid < 0:
            raise OSError(err, "clone: " + os.strerror(err))
    return pid


def become_sandbox(spec, fds):
    """In the child of clone_into_namespaces: join the cgroup, chroot, serve."""
    root, chan, procs = fds[0], fds[1], fds[2:]
    join_cgroup(procs)
    socket.sethostname(spec.get("hostname", "sandbox"))
    os.fchdir(root)
    os.chroot(".")
    os.chdir("/")
    os.close(root)
    run_sandbox(spec, chan)


def own_network():
    """Move into a new network namespace: a function zygote's, shared by the function's
    sandboxes and no one else's (abstract unix sockets included). The server brings its
    loopback up."""
    check(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")


def serve_zygote(ctl):
    # Sandboxes are orphaned to the zygote (PID 1 of its namespace); let the kernel reap them.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, 1 << 16, 32)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)
        try:
            req = json.loads(msg)
            if req.get("op") == "ping":
                for fd in fds:
                    os.close(fd)
                ctl.send(json.dumps({"pid": os.getpid()}).encode())
                continue
            if req.get("op") not in ("fork", "zygote"):
                raise ValueError("unknown op %r" % req.get("op"))
            pid = clone_into_namespaces() if req["op"] == "fork" else os.fork()
            if pid == 0:
                ctl.close()
                try:
                    if req["op"] == "fork":
                        become_sandbox(req["spec"], fds)
                    else:
                        if req.get("netns"):
                            own_network()
                        for name in req.get("imports") or []:
                            importlib.import_module(name)
                        serve_zygote(socket.socket(fileno=fds[0]))
                except BaseException:
                    traceback.print_exc()
                os._exit(1)
            reply = {"pid": pid}
        except BaseException:
            reply = {"error": traceback.format_exc()}
        for fd in fds:
            os.close(fd)
        ctl.send(json.dumps(reply).encode())


def main():
    mode = sys.argv[1]
    if mode == "zygote":
        load_forked_filter(sys.argv[3])
        for name in json.loads(sys.argv[2]):
            importlib.import_module(name)
        serve_zygote(socket.socket(fileno=3))
    elif mode == "cold":
        run_sandbox(json.loads(sys.argv[2]), 3)
    elif mode == "checkpoint":
        run_checkpointed(json.loads(sys.argv[2]))
    else:
        sys.exit("runner: unknown mode " + mode)


main()
