"""Shared pieces of the real-client tests: the kvm-mcp binary, a private config per
test, stdio and HTTP sessions through the official MCP Python SDK, and cleanup that
kills every process a test started (servers, supervisors, QEMU)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("KVM_MCP_BIN") or str(ROOT / "target" / "debug" / "kvm-mcp")
DEADLINE_S = 120.0


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Env:
    """A private kvm-mcp world: config, state and run dirs under one tempdir."""

    def __init__(self, root: Path, server: dict | None = None):
        self.root = root
        self.state = root / "state"
        self.run = root / "run"
        self.config = root / "config.json"
        cfg = {
            "paths": {"state_dir": str(self.state), "run_dir": str(self.run)},
            "qemu": {"accel": "tcg", "stop_timeout_s": 60},
            "vm": {"default_network": "user", "disk_path": str(root)},
            "logging": {"level": "info"},
        }
        if server is not None:
            cfg["server"] = server
        self.config.write_text(json.dumps(cfg))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [BIN, "--config", str(self.config), *args], capture_output=True, text=True, timeout=DEADLINE_S
        )

    def blank_disk(self, name: str = "blank.img") -> str:
        """A 1 MiB raw disk nothing can boot from: SeaBIOS idles and ignores ACPI."""
        p = self.root / name
        p.write_bytes(b"\0" * (1 << 20))
        return str(p)

    def cleanup(self) -> None:
        """Deletes every VM (forcing it off), then kills anything left by pid file."""
        vms = self.state / "vms"
        if vms.is_dir():
            for d in vms.iterdir():
                self.cli("vm", "delete", "--force", d.name)
        if self.run.is_dir():
            for pidfile in list(self.run.glob("*/supervisor.pid")) + list(self.run.glob("*/qemu.pid")):
                with contextlib.suppress(Exception):
                    pid = int(pidfile.read_text().split()[0])
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if str(self.root).encode() in cmdline or b"kvm-mcp" in cmdline:
                        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.cleanup()


@pytest.fixture(scope="session")
def fixture_disk() -> Path:
    """The test guest's boot disk (built once, cached by the script)."""
    subprocess.run([str(ROOT / "fixtures" / "build-guests.sh")], check=True, stdout=subprocess.DEVNULL, timeout=900)
    disk = Path(os.environ.get("FIXTURE_DIR", ROOT / "fixtures" / "cache")) / "disk.qcow2"
    assert disk.is_file(), disk
    return disk


class Recorder:
    """Collects what the server sends besides responses."""

    def __init__(self):
        self.logs: list = []
        self.notifications: list = []

    async def on_log(self, params) -> None:
        self.logs.append(params)

    async def on_message(self, message) -> None:
        self.notifications.append(message)

    def log_texts(self) -> list[str]:
        return [p.data["message"] if isinstance(p.data, dict) else json.dumps(p.data) for p in self.logs]


@contextlib.asynccontextmanager
async def stdio_session(env: Env, recorder: Recorder | None = None):
    """An initialized SDK session with `kvm-mcp serve` on stdio."""
    params = StdioServerParameters(command=BIN, args=["--config", str(env.config), "serve"])
    rec = recorder or Recorder()
    errlog = open(env.root / "serve-stderr.log", "a")
    try:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write, logging_callback=rec.on_log, message_handler=rec.on_message) as s:
                await s.initialize()
                yield s
    finally:
        errlog.close()


async def wait_until(predicate, what: str, deadline_s: float = DEADLINE_S, interval_s: float = 0.1):
    """Polls `predicate` until it returns something truthy."""
    with anyio.fail_after(deadline_s):
        while True:
            value = predicate()
            if value:
                return value
            await anyio.sleep(interval_s)


class HttpServer:
    """`kvm-mcp serve --http` in its own process group, stderr in a file."""

    def __init__(self, env: Env, *extra: str, addr: str = "127.0.0.1:0"):
        self.stderr_path = env.root / f"http-{time.monotonic_ns()}.log"
        self.stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [BIN, "--config", str(env.config), "serve", "--http", addr, *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            start_new_session=True,
        )
        self.url = None

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_listening(self) -> str:
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            m = re.search(r"listening on (https?://\S+)/mcp", self.log())
            if m:
                self.url = m.group(1)
                return self.url
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"server never listened: {self.log()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.stderr.close()
        return self.proc.returncode


@pytest.fixture
def http_server():
    """Starts servers on demand; stops them all at the end of the test."""
    started: list[HttpServer] = []

    def start(env: Env, *extra: str, addr: str = "127.0.0.1:0", wait: bool = True) -> HttpServer:
        s = HttpServer(env, *extra, addr=addr)
        started.append(s)
        if wait:
            s.wait_listening()
        return s

    yield start
    for s in started:
        s.stop()


def structured(result) -> dict:
    assert not result.is_error, [c.text for c in result.content]
    return result.structured_content


def error_text(result) -> str:
    assert result.is_error, result
    return " ".join(c.text for c in result.content)
