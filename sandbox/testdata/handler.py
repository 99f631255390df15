# Test handler: each op probes one property of the sandbox it runs in.
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
