#!/usr/bin/env python3
"""Sets each range request in a bdd debug log against a replayed trace.

  fetches-vs-trace.py BDD_LOG TRACE_JSON

BDD_LOG is a bdd.log kept by the cold-start harness (-coldstart.keep-logs DIR with
-coldstart.bdd-config 'log_level = "debug"'); TRACE_JSON the trace it replayed
($OBD_DEPS/bench/traces/WORKLOAD-NETWORK.json). One line per fetch: seconds since the first
fetch, blob, offset, bytes, how many of them the trace holds, time taken; then the totals.
Fetches with few traced bytes are readahead, prefetch or rounding to fill units.
"""
import datetime
import json
import re
import sys

FETCH = re.compile(r'time=(\S+).*"remotefetch: fetched" digest=(\S+) off=(\d+) bytes=(\d+) took=(\S+)')


def main(log_path, trace_path):
    with open(trace_path) as f:
        trace = json.load(f)
    ranges = {b["digest"]: [(r["off"], r["off"] + r["len"]) for r in b["ranges"]] for b in trace["blobs"]}
    start, total, traced = None, 0, 0
    with open(log_path) as f:
        for line in f:
            m = FETCH.search(line)
            if not m:
                continue
            at = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
            start = start or at
            blob, off, n = m.group(2), int(m.group(3)), int(m.group(4))
            inside = sum(max(0, min(off + n, hi) - max(off, lo)) for lo, hi in ranges.get(blob, []))
            total, traced = total + n, traced + inside
            print("%.3f %s %10d %8d traced %8d %s" % ((at - start).total_seconds(), blob[7:19], off, n, inside, m.group(5)))
    print("total %d bytes, %d in the trace, %d outside" % (total, traced, total - traced))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
