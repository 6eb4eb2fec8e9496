#!/usr/bin/env python3
"""CI-job bench. Cold: `kvm-mcp run --master BASE -- uname -a` end to end (make an
overlay, boot until the guest agent answers, run the command, delete the VM) against
its floor, measured in the same run: a bare qemu-system-x86_64 with the same argv
(taken from a kvm-mcp start of the same guest, minus its inherited monitors and VNC)
on an overlay made beforehand, timed from exec until the agent answers and one
guest-exec of `uname -a` has returned its output. The rounds alternate so machine
load hits both alike. Warm: `kvm-mcp run --template T -- uname -a` with a pool of 2
(claim, resume, command, delete), how long the pool takes to be full again, and the
resident memory of a paused pool VM. Fork: `kvm-mcp vm fork SRC --count 4` of a running
256 MiB guest, until all four copies run and answer their agent (and the original
again), end to end with the CLI's start. Prints medians, the ratio, and kvm-mcp's
phases.

Usage: python3 bench/ci.py [--binary target/release/kvm-mcp] [--rounds 10]
"""
import argparse
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Agent:
    """A qemu-ga connection: guest-sync-delimited until it answers, then commands."""

    def __init__(self, path, deadline):
        end = time.monotonic() + deadline
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > end:
                    raise TimeoutError(path)
                time.sleep(0.001)
        self.buf = b""
        sync = 1
        while True:
            sync += 1
            self.send("guest-sync-delimited", {"id": sync})
            try:
                if self.reply(1.0, sync=sync) == sync:
                    return
            except socket.timeout:
                if time.monotonic() > end:
                    raise TimeoutError("agent")

    def send(self, cmd, args=None):
        msg = {"execute": cmd}
        if args is not None:
            msg["arguments"] = args
        self.s.sendall(json.dumps(msg).encode() + b"\n")

    def reply(self, timeout, sync=None):
        self.s.settimeout(timeout)
        while True:
            if sync is not None and b"\xff" in self.buf:
                self.buf = self.buf[self.buf.rindex(b"\xff") + 1:]
            if b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                msg = json.loads(line)
                if sync is None or msg.get("return") == sync:
                    return msg.get("return", msg)
                continue
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("agent closed")
            self.buf += chunk

    def call(self, cmd, args=None):
        self.send(cmd, args)
        return self.reply(30.0)


def bare_run(argv, qga, deadline=600.0):
    """Exec QEMU, wait for the agent, run `uname -a`; returns (seconds, output, process)."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a = Agent(qga, deadline)
    pid = a.call("guest-exec", {"path": "uname", "arg": ["-a"], "capture-output": True})["pid"]
    while True:
        st = a.call("guest-exec-status", {"pid": pid})
        if st.get("exited"):
            break
        time.sleep(0.02)
    took = time.perf_counter() - t
    a.s.close()
    return took, base64.b64decode(st.get("out-data", "")).decode(), p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(REPO, "target/release/kvm-mcp"))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warm-only", action="store_true", help="skip the cold runs and their floor")
    ap.add_argument("--fork-only", action="store_true", help="only the forks")
    args = ap.parse_args()
    subprocess.run([os.path.join(REPO, "fixtures/build-guests.sh")], check=True, stdout=subprocess.DEVNULL)
    tmp = tempfile.mkdtemp(prefix="kvmci", dir="/tmp")
    cfg = os.path.join(tmp, "config.json")
    with open(cfg, "w") as fh:
        json.dump({"paths": {"state_dir": f"{tmp}/state", "run_dir": f"{tmp}/run"},
                   "vm": {"default_network": "user", "default_memory": 256, "default_vcpus": 1,
                          "disk_path": tmp},
                   "qemu": {"accel": "tcg"}}, fh)
    base = os.path.join(tmp, "base.qcow2")
    shutil.copy(os.path.join(REPO, "fixtures/cache/disk.qcow2"), base)
    kvm = lambda *a, **kw: subprocess.run([args.binary, "--config", cfg, *a], check=True, **kw)

    # The argv kvm-mcp gives QEMU for this guest, from one start of it.
    kvm("vm", "create", "probe", "--master", "base.qcow2", stdout=subprocess.DEVNULL)
    kvm("vm", "start", "probe", stdout=subprocess.DEVNULL)
    log = open(f"{tmp}/state/vms/probe/qemu.log").read()
    argv = [l for l in log.splitlines() if l.startswith("kvm-mcp: starting ")][-1].split(" ")[2:]
    kvm("vm", "delete", "probe", "--force", stdout=subprocess.DEVNULL)
    bare_dir = os.path.join(tmp, "bare")
    os.makedirs(bare_dir)
    floor_argv, skip = [], 0
    for i, a in enumerate(argv):
        if skip:
            skip -= 1
            continue
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if a == "-chardev" and "fd=" in nxt:
            skip = 3  # the chardev and its -mon
            continue
        if a == "-vnc":
            skip = 1
            continue
        floor_argv.append(a.replace(f"{tmp}/run/probe", bare_dir)
                          .replace(f"{tmp}/state/vms/probe", bare_dir)
                          .replace(f"{tmp}/probe.qcow2", f"{bare_dir}/disk.qcow2"))
    floor_argv += ["-qmp", f"unix:{bare_dir}/qmp.sock,server=on,wait=off"]
    qga = os.path.join(bare_dir, "qga.sock")

    runs, floors, phases = [], [], []
    for _ in range(0 if args.warm_only or args.fork_only else args.rounds):
        t = time.perf_counter()
        out = kvm("--json", "run", "--master", "base.qcow2", "--", "uname", "-a", capture_output=True)
        runs.append(time.perf_counter() - t)
        phases.append(json.loads(out.stdout)["phases"])
        assert "Linux" in out.stderr.decode(), out.stderr

        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base,
                        f"{bare_dir}/disk.qcow2"], check=True)
        took, text, p = bare_run(floor_argv, qga)
        assert "Linux" in text, text
        floors.append(took)
        q = socket.socket(socket.AF_UNIX)
        q.connect(f"{bare_dir}/qmp.sock")
        q.sendall(b'{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n')
        p.wait()
        q.close()
        for f in ("disk.qcow2", "qga.sock", "qmp.sock", "serial.sock"):
            try:
                os.unlink(os.path.join(bare_dir, f))
            except FileNotFoundError:
                pass

    # Warm: a template with a pool of 2; each round waits until the pool is full, then
    # times `run --template` (claim, resume, command, delete) and the refill.
    # Fork: a running guest into 4 copies, each round; the copies are deleted after.
    forks, fork_reports = [], []
    if not args.warm_only:
        kvm("vm", "create", "src", "--master", "base.qcow2", "--start", stdout=subprocess.DEVNULL)
        end = time.monotonic() + 600
        while subprocess.run([args.binary, "--config", cfg, "vm", "ping", "src"], capture_output=True).returncode:
            assert time.monotonic() < end, "the fork source never answered"
            time.sleep(0.2)
        for _ in range(args.rounds):
            t = time.perf_counter()
            out = kvm("--json", "vm", "fork", "src", "--count", "4", capture_output=True)
            forks.append(time.perf_counter() - t)
            rep = json.loads(out.stdout)
            assert len(rep["copies"]) == 4 and all(c["identity_refreshed"] for c in rep["copies"]), rep
            fork_reports.append(rep)
            for c in rep["copies"]:
                kvm("vm", "delete", c["name"], "--force", stdout=subprocess.DEVNULL)
        kvm("vm", "delete", "src", "--force", stdout=subprocess.DEVNULL)
    if args.fork_only:
        args.rounds = 0

    kvm("vm", "create", "tpl", "--master", "base.qcow2", stdout=subprocess.DEVNULL)
    kvm("vm", "pool", "tpl", "2" if args.rounds else "0", stdout=subprocess.DEVNULL)

    def ready_members():
        vms = json.loads(kvm("--json", "vm", "list", capture_output=True).stdout)
        return [v for v in vms if v.get("pool_of") == "tpl" and v["state"] == "paused"
                and os.path.exists(f"{tmp}/state/vms/{v['name']}/pool-ready")]

    def wait_full(deadline=900.0):
        end = time.monotonic() + deadline
        while len(ready_members()) < 2:
            if time.monotonic() > end:
                raise TimeoutError("pool refill")
            time.sleep(0.05)

    if args.rounds:
        wait_full()
    rss = []
    for v in ready_members():
        with open(f"/proc/{v['pid']}/status") as fh:
            rss.append(int([l for l in fh if l.startswith("VmRSS:")][0].split()[1]) / 1024)
    warm, warm_phases, refills = [], [], []
    for _ in range(args.rounds):
        wait_full()
        t = time.perf_counter()
        out = kvm("--json", "run", "--template", "tpl", "--", "uname", "-a", capture_output=True)
        warm.append(time.perf_counter() - t)
        rep = json.loads(out.stdout)
        assert rep["from_pool"] and "Linux" in out.stderr.decode(), rep
        warm_phases.append(rep["phases"])
        wait_full()
        refills.append(time.perf_counter() - t)
    kvm("vm", "pool", "tpl", "0", stdout=subprocess.DEVNULL)

    med = lambda xs: statistics.median(xs) * 1000
    print(f"qemu: {subprocess.run(['qemu-system-x86_64', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}")
    print(f"rounds: {args.rounds}")
    keys = ["create_ms", "boot_ms", "copy_in_ms", "command_ms", "copy_out_ms", "delete_ms", "total_ms"]
    if runs:
        print(f"kvm-mcp run -- uname -a (cold)  median {med(runs):7.1f} ms")
        print(f"floor: bare exec→agent→guest-exec median {med(floors):7.1f} ms   ratio {med(runs)/med(floors):.3f}x (goal ≤1.15x)")
        print("kvm-mcp phases (median ms): " + ", ".join(f"{k[:-3]} {statistics.median(p[k] for p in phases):.0f}" for k in keys))
    if forks:
        med_of = lambda k: statistics.median(r[k] for r in fork_reports)
        rss_copies = statistics.median(sum(c["rss_bytes"] for c in r["copies"]) / 4 / 2**20 for r in fork_reports)
        print(f"fork of a running 256 MiB guest into 4 copies, all answering: median {med(forks):7.1f} ms end to end "
              f"(goal ≤3000 ms; kvm-mcp's own figure {med_of('total_ms'):.0f} ms, original paused {med_of('paused_ms'):.0f} ms)")
        print(f"fork: saved state {med_of('state_bytes') / 2**20:.1f} MiB, new disk {med_of('disk_bytes') / 2**20:.1f} MiB, "
              f"copy RSS {rss_copies:.1f} MiB each")
    if not warm:
        subprocess.run(["pkill", "-9", "-f", tmp])
        shutil.rmtree(tmp, ignore_errors=True)
        return
    print(f"warm: kvm-mcp run --template (pool of 2) median {med(warm):7.1f} ms (goal ≤300 ms; includes the CLI's start and the delete)")
    print("warm rounds (ms, end to end / command): " + ", ".join(f"{w * 1000:.0f}/{p['command_ms']}" for w, p in zip(warm, warm_phases)))
    print("warm phases (median ms): " + ", ".join(f"{k[:-3]} {statistics.median(p[k] for p in warm_phases):.0f}" for k in keys))
    print(f"pool back to full after a claim: median {med(refills):7.1f} ms from the claim")
    print(f"paused pool VM, 256 MiB guest: RSS {statistics.mean(rss):.1f} MiB each ({', '.join(f'{r:.1f}' for r in rss)})")
    subprocess.run(["pkill", "-9", "-f", tmp])
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
