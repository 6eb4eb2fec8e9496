"""kvm-mcp serve over stdio, driven by the official MCP Python SDK."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess

import anyio
import mcp.types as types
import pytest

from conftest import BIN, DEADLINE_S, Recorder, error_text, stdio_session, structured, wait_until

pytestmark = pytest.mark.anyio


async def test_handshake_negotiates_a_pinned_version(env):
    async with stdio_session(env) as s:
        assert s.protocol_version in ("2025-06-18", "2025-11-25")


def test_stdout_carries_nothing_but_protocol(env):
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "create_vm", "arguments": {}}},
    ]
    stdin = "".join(json.dumps(r) + "\n" for r in requests)
    out = subprocess.run([BIN, "--config", str(env.config), "serve"], input=stdin, capture_output=True, text=True,
                         timeout=DEADLINE_S)
    messages = [json.loads(line) for line in out.stdout.splitlines()]
    assert ({m.get("jsonrpc") for m in messages}, messages[0].get("id")) == ({"2.0"}, 1), out.stdout


def test_sigterm_ends_a_stdio_server_cleanly(env):
    proc = subprocess.Popen([BIN, "--config", str(env.config), "serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
                         b'"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}\n')
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=DEADLINE_S)
    finally:
        proc.kill()
        proc.wait()
    assert (first["id"], code) == (1, 0)


async def test_every_tool_has_an_output_schema(env):
    async with stdio_session(env) as s:
        tools = (await s.list_tools()).tools
    assert all(t.output_schema for t in tools), [t.name for t in tools if not t.output_schema]


async def test_create_vm_without_a_boot_source_says_what_to_pass(env):
    async with stdio_session(env) as s:
        result = await s.call_tool("create_vm", {})
    assert "pass disk" in error_text(result)


async def test_get_vm_of_unknown_name_points_to_list_vms(env):
    async with stdio_session(env) as s:
        result = await s.call_tool("get_vm", {"name": "nosuch"})
    assert "list_vms" in error_text(result)


async def test_unknown_argument_is_a_tool_error(env):
    async with stdio_session(env) as s:
        result = await s.call_tool("list_vms", {"no_cahce": True})
    assert "no_cahce" in error_text(result)


async def test_create_vm_with_only_a_disk_uses_config_defaults(env):
    async with stdio_session(env) as s:
        created = structured(await s.call_tool("create_vm", {"disk": env.blank_disk()}))
        vm = structured(await s.call_tool("get_vm", {"name": created["name"]}))["vm"]
    assert (created["changed"], vm["name"], vm["memory_mib"], vm["vcpus"], vm["state"]) == (
        "defined", "newvm", 2048, 2, "shutoff")


async def test_vm_resource_shows_definition_and_status(env):
    env.cli("vm", "create", "r1", "--disk", env.blank_disk())
    async with stdio_session(env) as s:
        res = await s.read_resource("vm://r1")
    body = json.loads(res.contents[0].text)
    assert (body["name"], body["state"]) == ("r1", "shutoff")


async def test_vms_resource_lists_each_vm(env):
    env.cli("vm", "create", "r2", "--disk", env.blank_disk())
    async with stdio_session(env) as s:
        uris = [str(r.uri) for r in (await s.list_resources()).resources]
    assert uris == ["vms://", "vm://r2"]


async def test_list_changed_is_sent_when_another_front_end_creates_a_vm(env):
    rec = Recorder()
    async with stdio_session(env, rec) as s:
        await s.list_resources()
        env.cli("vm", "create", "other", "--disk", env.blank_disk())
        await wait_until(
            lambda: any(isinstance(n, types.ResourceListChangedNotification) for n in rec.notifications),
            "resources/list_changed",
        )


async def test_set_level_error_silences_info_messages(env):
    rec = Recorder()
    async with stdio_session(env, rec) as s:
        await s.set_logging_level("error")
        structured(await s.call_tool("create_vm", {"name": "quiet", "disk": env.blank_disk()}))
        structured(await s.call_tool("delete_vm", {"name": "quiet"}))
    assert rec.logs == []


async def test_default_level_sends_info_messages(env):
    rec = Recorder()
    async with stdio_session(env, rec) as s:
        structured(await s.call_tool("create_vm", {"name": "loud", "disk": env.blank_disk()}))
    assert any("loud" in t for t in rec.log_texts()), rec.log_texts()


async def test_cancelling_stop_vm_stops_waiting_and_reports_the_state(env):
    rec = Recorder()
    progress: list[str] = []
    pressed = anyio.Event()

    async def on_progress(value, total, message):
        progress.append(message or "")
        if "power button" in (message or ""):
            pressed.set()

    async with stdio_session(env, rec) as s:
        await s.set_logging_level("warning")
        structured(await s.call_tool("create_vm", {"name": "deaf", "disk": env.blank_disk(), "network": "none",
                                                   "memory_mib": 64}))
        structured(await s.call_tool("start_vm", {"name": "deaf"}))
        scope = anyio.CancelScope()

        async def stop():
            with scope:
                await s.call_tool("stop_vm", {"name": "deaf", "timeout_s": 600}, progress_callback=on_progress)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stop)
            with anyio.fail_after(DEADLINE_S):
                await pressed.wait()
            scope.cancel()
        await wait_until(lambda: any("stop_vm cancelled" in t for t in rec.log_texts()), "cancellation report")
        state = structured(await s.call_tool("get_vm", {"name": "deaf"}))["vm"]["state"]
        structured(await s.call_tool("stop_vm", {"name": "deaf", "force": True}))
    report = next(t for t in rec.log_texts() if "stop_vm cancelled" in t)
    # The supervisor may have recorded the power button press (shutting-down); either
    # way QEMU still runs, and the report said what state the VM was in.
    assert (state in ("running", "shutting-down"), 'VM "deaf" is ' in report) == (True, True), report


async def test_full_lifecycle_through_tools_on_a_tcg_guest(env, fixture_disk):
    disk = env.root / "guest.qcow2"
    shutil.copyfile(fixture_disk, disk)
    start_progress: list[str] = []
    stop_progress: list[str] = []

    async def on_start(value, total, message):
        start_progress.append(message or "")

    async def on_stop(value, total, message):
        stop_progress.append(message or "")

    async with stdio_session(env) as s:
        created = structured(await s.call_tool(
            "create_vm", {"name": "guest", "disk": str(disk), "network": "user", "memory_mib": 256}))
        started = structured(await s.call_tool("start_vm", {"name": "guest"}, progress_callback=on_start))
        serial_log = structured(await s.call_tool("get_vm", {"name": "guest"}))["vm"]["serial_log"]
        await wait_until(lambda: _has(serial_log, "FIXTURE-READY"), "FIXTURE-READY in the serial log")
        listed = structured(await s.call_tool("list_vms", {"no_cache": True}))["vms"]
        stopped = structured(await s.call_tool("stop_vm", {"name": "guest"}, progress_callback=on_stop))
        acpi_seen = _has(serial_log, "FIXTURE-ACPI-POWERBUTTON")
        deleted = structured(await s.call_tool("delete_vm", {"name": "guest"}))
        remaining = structured(await s.call_tool("list_vms", {}))["vms"]
    assert (created["state"], started["state"], [v["state"] for v in listed], stopped["state"], deleted, remaining) == (
        "shutoff", "running", ["running"], "shutoff", {"deleted": "guest", "removed": [], "kept": []}, []
    )
    assert start_progress and any("power button" in m for m in stop_progress), (start_progress, stop_progress)
    assert acpi_seen


def _has(path: str, marker: str) -> bool:
    try:
        with open(path, "rb") as f:
            return re.search(marker.encode(), f.read()) is not None
    except FileNotFoundError:
        return False
