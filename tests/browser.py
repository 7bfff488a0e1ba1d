"""A real headless Chromium, driven over the DevTools protocol on a pipe (no extra package).

Chromium's ``--remote-debugging-pipe`` reads JSON commands on fd 3 and writes replies and events
on fd 4, each message ended by a NUL byte. :class:`Browser` opens a page, waits for what a
person would wait for, evaluates JavaScript in the page and in its iframes (MLflow shows an HTML
artifact in a sandboxed iframe, which Chromium runs in a process of its own) and takes
screenshots.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def _high_fds(fds: tuple[int, int]) -> tuple[int, int]:
    """The pipe's ends moved to fds >= 10, so that putting them on 3 and 4 in the child
    cannot overwrite one with the other."""
    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
    for fd in fds:
        os.close(fd)
    return moved


class Browser:
    def __init__(self, width: int = 1400, height: int = 1000) -> None:
        if CHROMIUM is None:
            raise RuntimeError("chromium is not installed")
        self._profile = tempfile.mkdtemp(prefix="bpexp-chromium-")
        commands_r, self._commands = _high_fds(os.pipe())
        self._replies, replies_w = _high_fds(os.pipe())
        args = [
            *FLAGS,
            f"--user-data-dir={self._profile}",
            f"--window-size={width},{height}",
            "--remote-debugging-pipe",
            "about:blank",
        ]

        def on_3_and_4() -> None:  # in the child, before exec: the fds Chromium expects
            os.dup2(commands_r, 3)
            os.dup2(replies_w, 4)

        self._proc = subprocess.Popen(
            [CHROMIUM, *args],
            pass_fds=(3, 4),
            preexec_fn=on_3_and_4,
            stdout=subprocess.DEVNULL,
            stderr=(Path(self._profile) / "chromium.log").open("w"),
        )
        os.close(commands_r)
        os.close(replies_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.frames: dict[str, str] = {}  # session id -> target type, for the page and iframes
        (target,) = [
            t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"
        ]
        self.page = self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )["sessionId"]
        self.frames[self.page] = "page"
        auto = {"autoAttach": True, "waitForDebuggerOnStart": False, "flatten": True}
        self.send("Target.setAutoAttach", auto, session=self.page)
        self.send("Page.enable", session=self.page)

    def _read(self, timeout: float) -> dict | None:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._replies], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                log = (Path(self._profile) / "chromium.log").read_text()[-3000:]
                raise RuntimeError(f"chromium closed the pipe; its log ends:\n{log}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        parsed = json.loads(message)
        if parsed.get("method") == "Target.attachedToTarget":
            self.frames[parsed["params"]["sessionId"]] = parsed["params"]["targetInfo"]["type"]
        return parsed

    def send(
        self, method: str, params: dict | None = None, session: str | None = None, timeout=30.0
    ) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._read(deadline - time.monotonic())
            if reply is None:
                break
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)
        raise TimeoutError(f"{method}: no reply in {timeout} s")

    def open(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, session=self.page)

    def evaluate(self, expression: str, session: str | None = None):
        """The JSON value of ``expression`` in the page (or the frame of ``session``)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=session or self.page,
        )
        return result["result"].get("value")

    def frame_values(self, expression: str) -> list:
        """``expression`` evaluated in each of the page's iframes. Chromium runs a sandboxed
        iframe (MLflow's HTML artifact view) in a process of its own: its session comes from
        the auto-attach set up at start."""
        values = []
        for session, kind in list(self.frames.items()):
            if kind == "iframe":
                try:
                    values.append(self.evaluate(expression, session))
                except RuntimeError:
                    pass  # a frame gone since
        return values

    def wait_for(self, expression: str, timeout: float = 60.0, frames: bool = False):
        """Poll until ``expression`` is truthy in the page (or in one of its iframes); returns
        its value, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            values = self.frame_values(expression) if frames else [self.evaluate(expression)]
            hit = next((v for v in values if v), None)
            if hit or time.monotonic() > deadline:
                return hit
            time.sleep(0.5)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=self.page)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._commands)
        os.close(self._replies)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
