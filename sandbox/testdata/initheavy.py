# A handler whose initialization is the work a checkpoint saves (the Catalyzer case): about
# 20 standard modules imported and a 20 000-row sqlite table built when the module loads, as
# package checkpoint's test handler does; each call then reads the table.
import argparse, asyncio, concurrent.futures, csv, decimal, difflib, email.mime.multipart  # noqa: E401,F401
import hashlib, http.server, logging, pydoc, sqlite3, ssl, tarfile, unittest, urllib.request  # noqa: E401,F401
import xml.etree.ElementTree, zipfile  # noqa: E401,F401

db = sqlite3.connect(":memory:", check_same_thread=False)
db.execute("create table t (k integer primary key, v text)")
db.executemany("insert into t values (?, ?)",
               ((i, hashlib.sha256(str(i).encode()).hexdigest()) for i in range(20000)))


def handler(event):
    k = int((event or {}).get("k", 7))
    return {"k": k, "v": db.execute("select v from t where k = ?", (k,)).fetchone()[0]}
