#!/usr/bin/env python3
"""Lifecycle bench: `kvm-mcp vm start` (until the VM reports running) against a bare
qemu-system-x86_64 exec until its QMP answers query-status with the same machine
options; `vm stop --force` (until the process is gone) against a bare QMP `quit`; and a
one-shot `vm list` with 50 VMs defined. Everything is measured in the same run, on the
fixture disk, under TCG. Prints medians and ratios.

Usage: python3 bench/lifecycle.py [--binary target/release/kvm-mcp] [--rounds 15]
"""
import argparse
import json
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def qmp_until_status(path, deadline=60.0):
    """Connects to a QMP socket (polling until it exists), negotiates, asks query-status."""
    end = time.monotonic() + deadline
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            break
        except OSError:
            s.close()
            if time.monotonic() > end:
                raise TimeoutError(path)
            time.sleep(0.0005)
    f = s.makefile("rwb", buffering=0)
    f.readline()  # greeting
    for cmd in ("qmp_capabilities", "query-status"):
        f.write(json.dumps({"execute": cmd}).encode() + b"\n")
        while True:
            msg = json.loads(f.readline())
            if "return" in msg or "error" in msg:
                break
    return s, f


def wait_gone(pid, deadline=30.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.0005)
    raise TimeoutError(pid)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(REPO, "target/release/kvm-mcp"))
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    subprocess.run([os.path.join(REPO, "fixtures/build-guests.sh")], check=True, stdout=subprocess.DEVNULL)
    fixture = os.path.join(REPO, "fixtures/cache/disk.qcow2")
    tmp = tempfile.mkdtemp(prefix="kvmbench", dir="/tmp")
    cfg = os.path.join(tmp, "config.json")
    with open(cfg, "w") as fh:
        json.dump({"paths": {"state_dir": f"{tmp}/state", "run_dir": f"{tmp}/run"},
                   "vm": {"default_network": "user", "default_memory": 256, "default_vcpus": 1,
                          "disk_path": tmp},
                   "qemu": {"accel": "tcg"}}, fh)
    kvm = lambda *a: subprocess.run([args.binary, "--config", cfg, *a], check=True, stdout=subprocess.DEVNULL)
    disk = os.path.join(tmp, "b.qcow2")
    shutil.copy(fixture, disk)
    kvm("vm", "create", "bench", "--disk", disk)

    starts, stops, bare_starts, bare_quits = [], [], [], []
    argv = None
    for _ in range(args.rounds):
        t = time.perf_counter()
        kvm("vm", "start", "bench")
        starts.append(time.perf_counter() - t)
        if argv is None:
            log = open(f"{tmp}/state/vms/bench/qemu.log").read()
            line = [l for l in log.splitlines() if l.startswith("kvm-mcp: starting ")][-1]
            argv = line[len("kvm-mcp: starting "):].split(" ")
        t = time.perf_counter()
        kvm("vm", "stop", "bench", "--force")
        stops.append(time.perf_counter() - t)

        # The same machine with path-based monitors instead of inherited sockets.
        sock = os.path.join(tmp, "bare.sock")
        bare = []
        skip = False
        for i, a in enumerate(argv):
            if skip:
                skip = False
                continue
            if a in ("-chardev", "-mon") and re.search(r"id=qmp|chardev=qmp", argv[i + 1]):
                skip = True
                continue
            bare.append(a.replace(f"{tmp}/run/bench", f"{tmp}/bare-run").replace("serial.log", "bare-serial.log"))
        os.makedirs(f"{tmp}/bare-run", exist_ok=True)
        bare += ["-qmp", f"unix:{sock},server=on,wait=off"]
        t = time.perf_counter()
        p = subprocess.Popen(bare, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        s, f = qmp_until_status(sock)
        bare_starts.append(time.perf_counter() - t)
        t = time.perf_counter()
        f.write(b'{"execute":"quit"}\n')
        p.wait()
        bare_quits.append(time.perf_counter() - t)
        s.close()
        if os.path.exists(sock):
            os.unlink(sock)

    for i in range(50):
        kvm("vm", "create", f"vm{i:02d}", "--disk", disk)
    lists = []
    for _ in range(30):
        t = time.perf_counter()
        kvm("vm", "list")
        lists.append(time.perf_counter() - t)

    med = lambda xs: statistics.median(xs) * 1000
    print(f"qemu: {subprocess.run(['qemu-system-x86_64', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}")
    print(f"rounds: {args.rounds}")
    print(f"vm start (until running)   median {med(starts):7.1f} ms   bare exec→query-status {med(bare_starts):7.1f} ms   ratio {med(starts)/med(bare_starts):.2f}x (goal ≤1.25x)")
    print(f"vm stop --force (until gone) median {med(stops):7.1f} ms   bare QMP quit          {med(bare_quits):7.1f} ms   ratio {med(stops)/med(bare_quits):.2f}x (goal ≤3x)")
    print(f"vm list, 50 VMs, one-shot    median {med(lists):7.1f} ms   (goal <10 ms)")
    subprocess.run(["pkill", "-9", "-f", tmp])
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
