#!/usr/bin/python3
"""Helpers of the real-host checks (xtask/src/vm/host.sh), run inside the guest only.

  connect [HOST]         one TCP connect to HOST:80 (default 169.254.169.254): prints the outcome
                         (`connected` or the errno's name, e.g. EPERM) and this process's pid
  storm STOPFILE         connects to 169.254.169.254:80 over and over until STOPFILE exists;
                         prints the outcomes counted, as JSON
  links                  the bpf links whose program is imds-guard's (name imdsg_*): `id:name`, sorted
  links-diff BEFORE AFTER two outputs of `links`: which links stayed (the same id) and which
                         were replaced, e.g. `the same 5 links` or `4 of 5 links kept, imdsg_msg
                         replaced (17 -> 23)`
  fake-imds              a fake IMDS on 169.254.169.254:80 (token PUT, GET with or without a token)
  denied-event PID       the journal's connect_denied entry of PID: checks its journal fields
  container-event ID     the journal's connect_denied entry naming container ID (podman, nobody)
  early OUT              the early-boot unit's attempt: appends `<outcome> <uptime>` to OUT
"""

import errno
import http.server
import json
import os
import socket
import subprocess
import sys
import time

IMDS = "169.254.169.254"
INSTANCE_ID = "i-0123456789imdsgvm"


def connect(host=IMDS, timeout=3.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, 80))
        return "connected"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()


def storm(stop):
    counts = {}
    t0 = time.monotonic()
    while not os.path.exists(stop) and time.monotonic() - t0 < 300:
        r = connect(timeout=1.0)
        counts[r] = counts.get(r, 0) + 1
        time.sleep(0.005)
    print(json.dumps(counts, sort_keys=True))


def links():
    out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, check=True, text=True)
    progs = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, check=True, text=True)
    names = {p["id"]: p.get("name", "") for p in json.loads(progs.stdout or "[]")}
    mine = sorted(
        f"{l['id']}:{names.get(l.get('prog_id'), '')}"
        for l in json.loads(out.stdout or "[]")
        if names.get(l.get("prog_id"), "").startswith("imdsg")
    )
    print(" ".join(mine))


def links_diff(before, after):
    ids = lambda text: {name: i for i, name in (l.split(":", 1) for l in text.split())}
    b, a = ids(before), ids(after)
    kept = [n for n in b if a.get(n) == b[n]]
    if len(kept) == len(b) == len(a):
        return f"the same {len(a)} links"
    parts = [f"{len(kept)} of {len(b)} links kept"]
    parts += [f"{n} replaced ({b[n]} -> {a[n]})" for n in sorted(b) if n in a and a[n] != b[n]]
    parts += [f"{n} gone" for n in sorted(b) if n not in a]
    parts += [f"{n} new ({a[n]})" for n in sorted(a) if n not in b]
    return ", ".join(parts)


class Imds(http.server.BaseHTTPRequestHandler):
    def _send(self, code, body):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._send(200, "imdsg-vm-token")
        else:
            self._send(400, "bad request")

    def do_GET(self):
        if self.path == "/latest/meta-data/instance-id":
            self._send(200, INSTANCE_ID)
        else:
            self._send(404, "not found")

    def log_message(self, *args):
        pass


def fake_imds():
    http.server.ThreadingHTTPServer((IMDS, 80), Imds).serve_forever()


def denied_event(pid):
    """The journal entry of the daemon's connect_denied event for pid, with its fields."""
    want = {
        "SYSLOG_IDENTIFIER": "imds-guard",
        "PRIORITY": "4",
        "_SYSTEMD_UNIT": "imds-guard.service",
        "IMDS_GUARD_EVENT": "connect_denied",
        "IMDS_GUARD_PID": str(pid),
        "IMDS_GUARD_UID": "65534",
        "IMDS_GUARD_USER": "nobody",
        "IMDS_GUARD_COMM": "python3",
        "IMDS_GUARD_DST": IMDS,
        "IMDS_GUARD_PORT": "80",
        "IMDS_GUARD_ENFORCED": "true",
    }
    present = ["IMDS_GUARD_EXE", "IMDS_GUARD_CGROUP", "IMDS_GUARD_TIME", "IMDS_GUARD_JSON", "MESSAGE"]
    deadline = time.monotonic() + 20
    while True:
        out = subprocess.run(
            ["journalctl", "--no-pager", "-o", "json", "IMDS_GUARD_EVENT=connect_denied", f"IMDS_GUARD_PID={pid}"],
            capture_output=True,
            text=True,
        ).stdout
        entries = [json.loads(l) for l in out.splitlines() if l.strip()]
        if entries or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if not entries:
        print(f"no connect_denied journal entry for pid {pid} within 20 s")
        return 1
    e = entries[0]
    wrong = {k: e.get(k) for k, v in want.items() if e.get(k) != v}
    missing = [k for k in present if not e.get(k)]
    if wrong or missing:
        print(f"journal entry: wrong {wrong}, missing {missing}")
        return 1
    print(f"journal: {e['MESSAGE']} (exe {e['IMDS_GUARD_EXE']}, cgroup {e['IMDS_GUARD_CGROUP']})")
    return 0


def container_event(cid):
    """The journal's connect_denied entry naming container cid: runtime podman, nobody."""
    deadline = time.monotonic() + 20
    while True:
        out = subprocess.run(
            ["journalctl", "--no-pager", "-o", "json", "IMDS_GUARD_EVENT=connect_denied", f"IMDS_GUARD_CONTAINER_ID={cid}"],
            capture_output=True,
            text=True,
        ).stdout
        entries = [json.loads(l) for l in out.splitlines() if l.strip()]
        if entries or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if not entries:
        print(f"no connect_denied journal entry naming container {cid[:12]} within 20 s")
        return 1
    e = entries[0]
    got = (e.get("IMDS_GUARD_CONTAINER_RUNTIME"), e.get("IMDS_GUARD_UID"), e.get("IMDS_GUARD_COMM"))
    if got != ("podman", "65534", "nc"):
        print(f"container event: runtime, uid, comm = {got}, want podman, 65534, nc")
        return 1
    print(f"event: container_id {cid[:12]}..., container_runtime podman, comm nc, cgroup {e.get('IMDS_GUARD_CGROUP')}")
    return 0


def early(out):
    r = connect()
    with open("/proc/uptime") as f:
        up = f.read().split()[0]
    with open(out, "a") as f:
        f.write(f"{r} {up}\n")


def main():
    cmd = sys.argv[1]
    if cmd == "connect":
        print(connect(*sys.argv[2:3]), f"pid={os.getpid()}")
    elif cmd == "storm":
        storm(sys.argv[2])
    elif cmd == "links":
        links()
    elif cmd == "links-diff":
        print(links_diff(sys.argv[2], sys.argv[3]))
    elif cmd == "fake-imds":
        fake_imds()
    elif cmd == "denied-event":
        sys.exit(denied_event(int(sys.argv[2])))
    elif cmd == "container-event":
        sys.exit(container_event(sys.argv[2]))
    elif cmd == "early":
        early(sys.argv[2])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
