"""scripts.mlflow_screenshots drives Chromium over the DevTools pipe (fd 3 in, fd 4 out,
NUL-separated JSON), never a TCP port: the framing against a stand-in browser everywhere, and
real headless Chromium when it is installed."""
from __future__ import annotations

import os
import shutil
import signal
import stat
import sys
from pathlib import Path

import psutil
import pytest
from PIL import Image

from scripts.mlflow_screenshots import DevToolsPipe, chromium_page, screenshot, spawn_with_pipe, stop_group

# A stand-in for Chromium's side of --remote-debugging-pipe: reads commands on fd 3 and, for
# each, writes an event and then the reply in two pieces on fd 4 (a reader must split on NUL,
# not on reads); "Fail" gets a protocol error; it exits when fd 3 reaches EOF.
FAKE_BROWSER = r'''
import json, os
pending = b""
while True:
    chunk = os.read(3, 1 << 16)
    if not chunk:
        break
    pending += chunk
    while b"\0" in pending:
        raw, pending = pending.split(b"\0", 1)
        cmd = json.loads(raw)
        os.write(4, json.dumps({"method": "Page.lifecycleEvent", "params": {}}).encode() + b"\0")
        if cmd["method"] == "Fail":
            reply = {"id": cmd["id"], "error": {"code": -32601, "message": "no such method"}}
        else:
            reply = {"id": cmd["id"], "result": {"targetId": "T1", "sessionId": "S1", "got": cmd}}
        data = json.dumps(reply).encode() + b"\0"
        os.write(4, data[:7])
        os.write(4, data[7:])
'''


def _fake_browser(tmp_path: Path) -> Path:
    exe = tmp_path / "fake-chromium"
    exe.write_text(f"#!{sys.executable}\n{FAKE_BROWSER}")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_devtools_pipe_framing_and_fds_3_and_4(tmp_path):
    exe = _fake_browser(tmp_path)
    pid, commands, replies = spawn_with_pipe([str(exe)], tmp_path / "log")
    try:
        pipe = DevToolsPipe(commands, replies, timeout=30)
        got = pipe.send("Target.getTargets", filter=[{"type": "page"}])["got"]
        assert got == {"id": 1, "method": "Target.getTargets", "params": {"filter": [{"type": "page"}]}}
        assert pipe.send("Page.navigate", "S9", url="about:blank")["got"]["sessionId"] == "S9"
        with pytest.raises(RuntimeError, match="Fail: .*no such method"):
            pipe.send("Fail")
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match="closed its DevTools pipe"):
            pipe.send("Target.getTargets")
    finally:
        os.close(commands)
        os.close(replies)
        stop_group(pid)


def test_chromium_page_attaches_to_one_page_over_the_pipe(tmp_path):
    """The page's commands carry the session Target.attachToTarget gave."""
    with chromium_page(str(_fake_browser(tmp_path)), (320, 200), timeout=30) as send:
        got = send("Runtime.evaluate", expression="1")["got"]
    assert got["sessionId"] == "S1" and got["params"] == {"expression": "1"}


def _chromium_listening(pid: int) -> tuple[int, list]:
    """(how many Chromium processes are among pid's descendants, the TCP sockets they listen
    on). In the whole suite this process also parents the session's Ray, whose loopback
    ports are not Chromium's."""
    found, browsers = [], 0
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            if not proc.name().startswith("chrom"):
                continue
            browsers += 1
            found += [c.laddr for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            pass
    return browsers, found


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not installed (Debian: apt-get install chromium); make screenshots needs it")
def test_chromium_takes_a_screenshot_over_the_pipe_and_listens_on_no_port(tmp_path):
    page = "data:text/html,<body style='margin:0;background:rgb(0,128,255)'><p>over the pipe</p></body>"
    with chromium_page("chromium", (320, 200), timeout=60) as send:
        shot = screenshot(send, page, [(["over the pipe"], None)], tmp_path / "page.png", settle=0)
        browsers, listening = _chromium_listening(psutil.Process().pid)
        assert browsers > 0 and listening == []
    image = Image.open(shot).convert("RGB")
    assert image.size == (320, 200)
    assert image.getpixel((300, 190)) == (0, 128, 255)
