# A function handler for package checkpoint's tests: initialization (runtime loaded, imports
# done, a table built) is the work a checkpoint saves. Protocol on stdin/stdout, one JSON object
# per line: it writes {"ready": ...} once initialized, then answers each request {"k": N} with
# {"k": N, "v": ..., "served": count of requests served by this process image, "pid": PID}.
import json
import os
import sys
import time

t0 = time.perf_counter()
import argparse, asyncio, concurrent.futures, csv, decimal, difflib, email.mime.multipart  # noqa: E401,F401
import hashlib, http.server, logging, pydoc, sqlite3, ssl, tarfile, unittest, urllib.request  # noqa: E401,F401
import xml.etree.ElementTree, zipfile  # noqa: E401,F401

db = sqlite3.connect(":memory:")
db.execute("create table t (k integer primary key, v text)")
db.executemany("insert into t values (?, ?)",
               ((i, hashlib.sha256(str(i).encode()).hexdigest()) for i in range(20000)))
# OBD_TEST_BALLAST_MB: private memory the handler holds besides, as a loaded model would.
ballast = bytearray(b"\x5a") * (int(os.environ.get("OBD_TEST_BALLAST_MB", "0")) << 20)
served = 0

inp = os.fdopen(0, "rb", buffering=0)
out = os.fdopen(1, "wb", buffering=0)


def send(obj):
    out.write(json.dumps(obj).encode() + b"\n")


send({"ready": True, "pid": os.getpid(), "init_ms": round((time.perf_counter() - t0) * 1000, 1)})
buf = b""
while True:
    while b"\n" not in buf:
        chunk = inp.read(65536)
        if not chunk:
            sys.exit(0)
        buf += chunk
    line, buf = buf.split(b"\n", 1)
    req = json.loads(line)
    row = db.execute("select v from t where k = ?", (req["k"],)).fetchone()
    served += 1
    send({"k": req["k"], "v": row[0] if row else None, "served": served, "pid": os.getpid()})
