#!/usr/bin/env python3
"""Where a lazy start's fetches fall in time, from a trial's kept logs.

  fetch-timeline.py TRIAL_DIR...

TRIAL_DIR is one trial's directory kept by the cold-start harness (-coldstart.keep-logs DIR with
-coldstart.bdd-config 'log_level = "debug"'): its bdd.log has one line per range fetch (end
time, bytes, time taken) and its phases.json when the pull started, when `nerdctl start` ran
and when the ready line came. Per trial and phase (pull+create, run), it prints: fetches, MiB,
how long at least one fetch was in flight (busy), how often the link went from idle to busy
(each such start waits a full round trip with nothing else in flight: the dependent reads),
the largest number in flight at once, and the median fetch size and time.
"""
import datetime
import json
import os
import re
import statistics
import sys

FETCH = re.compile(r'time=(\S+).*"remotefetch: fetched".* bytes=(\d+) took=(\S+)')
UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(go_duration):
    """Parses a Go duration string such as 1m2.5s or 20.1ms."""
    total = 0.0
    for number, unit in re.findall(r'([0-9.]+)(ns|µs|us|ms|s|m|h)', go_duration):
        total += float(number) * UNITS[unit]
    return total


def parse_time(stamp):
    # Go writes nanoseconds; Python's fromisoformat takes at most microseconds.
    m = re.match(r'(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)', stamp)
    frac = (m.group(2) or ".0")[:7]
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.datetime.fromisoformat(m.group(1) + frac + tz)


def summarize(name, fetches):
    if not fetches:
        print("  %-12s no fetches" % name)
        return
    events = sorted([(s, 1) for s, _, _ in fetches] + [(e, -1) for _, e, _ in fetches])
    busy, starts, inflight, peak, since = 0.0, 0, 0, 0, None
    for t, d in events:
        if d == 1 and inflight == 0:
            starts, since = starts + 1, t
        inflight += d
        peak = max(peak, inflight)
        if inflight == 0:
            busy += t - since
    sizes = [n for _, _, n in fetches]
    took = [e - s for s, e, _ in fetches]
    print("  %-12s %4d fetches %6.2f MiB  busy %.2fs  idle->busy %3d  peak %2d  median %6.1f KiB in %.0f ms" % (
        name, len(fetches), sum(sizes) / 2**20, busy, starts, peak,
        statistics.median(sizes) / 1024, 1000 * statistics.median(took)))


def main(dirs):
    for d in dirs:
        with open(os.path.join(d, "phases.json")) as f:
            phases = {k: parse_time(v).timestamp() for k, v in json.load(f).items()}
        fetches = []
        with open(os.path.join(d, "bdd.log")) as f:
            for line in f:
                m = FETCH.search(line)
                if m:
                    end = parse_time(m.group(1)).timestamp()
                    fetches.append((end - seconds(m.group(3)), end, int(m.group(2))))
        start, run, ready = phases["start"], phases["runStart"], phases["ready"]
        print("%s: pull+create %.2fs, run %.2fs" % (d, run - start, ready - run))
        summarize("pull+create", [f for f in fetches if start <= f[0] < run])
        summarize("run", [f for f in fetches if run <= f[0] <= ready])
        summarize("after ready", [f for f in fetches if f[0] > ready])


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
