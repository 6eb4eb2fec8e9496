"""kvm-mcp serve --http: authentication, Host/Origin checks, rate limiting, TLS,
metrics and graceful shutdown, with the official MCP Python SDK and plain HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import stat
import subprocess

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import DEADLINE_S, Env, structured

pytestmark = pytest.mark.anyio

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def make_env(tmp_path, **server) -> Env:
    return Env(tmp_path, {"token": TOKEN, "rate_limit": {"per_second": 1000, "burst": 1000}} | server)


@pytest.fixture
def henv(tmp_path):
    e = make_env(tmp_path)
    yield e
    e.cleanup()


@contextlib.asynccontextmanager
async def http_session(url: str, headers: dict, verify=True):
    client = httpx2.AsyncClient(headers=headers, verify=verify, timeout=httpx2.Timeout(DEADLINE_S))
    async with client, streamable_http_client(f"{url}/mcp", http_client=client) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            yield s


def post_init(url: str, headers: dict, verify=True) -> httpx2.Response:
    return httpx2.post(f"{url}/mcp", json=INIT, headers=MCP_HEADERS | headers, verify=verify, timeout=DEADLINE_S)


def test_request_without_token_is_401(henv, http_server):
    url = http_server(henv).url
    assert post_init(url, {}).status_code == 401


def test_request_with_wrong_token_is_401(henv, http_server):
    url = http_server(henv).url
    assert post_init(url, {"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401


def test_x_api_key_is_accepted(henv, http_server):
    url = http_server(henv).url
    assert post_init(url, {"X-API-Key": TOKEN}).status_code == 200


def test_foreign_origin_is_403(henv, http_server):
    url = http_server(henv).url
    assert post_init(url, AUTH | {"Origin": "http://evil.example"}).status_code == 403


def test_foreign_host_is_403(henv, http_server):
    url = http_server(henv).url
    assert post_init(url, AUTH | {"Host": "evil.example"}).status_code == 403


def test_healthz_needs_no_token(henv, http_server):
    url = http_server(henv).url
    assert httpx2.get(f"{url}/healthz", timeout=DEADLINE_S).text == "ok\n"


def test_over_the_rate_is_429_with_retry_after(tmp_path, http_server):
    env = make_env(tmp_path, rate_limit={"client_per_second": 1, "client_burst": 3})
    url = http_server(env).url
    with httpx2.Client(headers=AUTH, timeout=DEADLINE_S) as c:
        statuses = [c.get(f"{url}/metrics") for _ in range(6)]
    refused = [r for r in statuses if r.status_code == 429]
    assert refused and int(refused[0].headers["retry-after"]) >= 1, [r.status_code for r in statuses]


def test_generated_token_file_is_private_and_logged(tmp_path, http_server):
    env = Env(tmp_path, {})
    server = http_server(env)
    path = env.state / "http-token"
    token = path.read_text().strip()
    mode = stat.S_IMODE(os.stat(path).st_mode)
    ok = httpx2.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=DEADLINE_S)
    assert (mode, str(path) in server.log(), ok.status_code) == (0o600, True, 200)


def test_no_auth_off_loopback_is_refused(henv):
    result = henv.cli("serve", "--http", "0.0.0.0:0", "--no-auth")
    assert result.returncode != 0 and "loopback" in result.stderr, result


async def test_sdk_session_lists_and_calls_tools_over_http(henv, http_server):
    url = http_server(henv).url
    async with http_session(url, AUTH) as s:
        names = sorted(t.name for t in (await s.list_tools()).tools)
        vms = structured(await s.call_tool("list_vms", {}))
    assert ("list_vms" in names, vms) == (True, {"vms": []})


async def test_concurrent_sessions_each_get_their_answer(henv, http_server):
    url = http_server(henv).url
    answers: list = []

    async def one_session():
        async with http_session(url, AUTH) as s:
            answers.append(structured(await s.call_tool("list_vms", {})))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one_session)
    assert answers == [{"vms": []}] * 5


async def test_metrics_count_tool_calls_by_outcome(henv, http_server):
    url = http_server(henv).url
    async with http_session(url, AUTH) as s:
        await s.call_tool("list_vms", {})
        await s.call_tool("get_vm", {"name": "nosuch"})
    text = httpx2.get(f"{url}/metrics", headers=AUTH, timeout=DEADLINE_S).text
    assert (
        'kvm_mcp_tool_calls_total{tool="list_vms",outcome="ok"} 1' in text,
        'kvm_mcp_tool_calls_total{tool="get_vm",outcome="tool_error"} 1' in text,
        "kvm_mcp_vms_running 0" in text,
    ) == (True, True, True), text


def make_cert(env: Env) -> tuple[str, str]:
    cert, key = env.root / "cert.pem", env.root / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=DEADLINE_S,
    )
    return str(cert), str(key)


async def test_tls_handshake_with_a_test_certificate(tmp_path, http_server):
    env = Env(tmp_path)
    cert, key = make_cert(env)
    env = make_env(tmp_path, tls={"cert": cert, "key": key})
    server = http_server(env)
    trust = ssl.create_default_context(cafile=cert)
    async with http_session(server.url, AUTH, verify=trust) as s:
        vms = structured(await s.call_tool("list_vms", {}))
    assert (server.url.startswith("https://"), vms) == (True, {"vms": []})


async def test_sigterm_lets_an_in_flight_stop_finish_then_exits_cleanly(henv, http_server):
    henv.cli("vm", "create", "deaf", "--disk", henv.blank_disk(), "--network", "none", "--memory", "64")
    henv.cli("vm", "start", "deaf")
    server = http_server(henv)
    pressed = anyio.Event()

    async def on_progress(value, total, message):
        pressed.set()

    async with http_session(server.url, AUTH) as s:
        await s.list_tools()
        async with anyio.create_task_group() as tg:
            result = {}

            async def stop():
                result["r"] = await s.call_tool("stop_vm", {"name": "deaf", "timeout_s": 3},
                                                progress_callback=on_progress)

            tg.start_soon(stop)
            with anyio.fail_after(DEADLINE_S):
                await pressed.wait()
            os.killpg(server.proc.pid, signal.SIGTERM)
    code = await anyio.to_thread.run_sync(lambda: server.proc.wait(timeout=DEADLINE_S))
    assert (structured(result["r"])["state"], code) == ("shutoff", 0)
