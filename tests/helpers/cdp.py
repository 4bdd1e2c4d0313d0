"""A headless chromium driven over the Chrome DevTools Protocol (no Selenium or Playwright needed).

:class:`HeadlessChromium` starts Debian's ``chromium`` with the flags that work on a closed
network (ENVIRONMENT.md), a fresh profile and ``--remote-debugging-port=0``, connects to its page
target over a WebSocket (aiohttp) and evaluates JavaScript in the page.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-allow-origins=*")


class BrowserError(RuntimeError):
    """The browser did not start, or a command to it failed."""


def chromium_binary() -> str | None:
    """Path of the chromium executable, or None when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class HeadlessChromium:
    """One headless chromium process with one page; use as a context manager."""

    def __init__(self, binary: str, timeout_s: float = 30.0) -> None:
        self.binary = binary
        self.timeout_s = timeout_s
        self._profile = Path(tempfile.mkdtemp(prefix="aa-chromium-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._next_id = 0

    def __enter__(self) -> HeadlessChromium:
        self._proc = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise BrowserError(f"chromium did not open its DevTools port (exit code {self._proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self._loop.run_until_complete(self._connect(port))
        return self

    async def _connect(self, port: int) -> None:
        self._session = aiohttp.ClientSession()
        deadline = time.monotonic() + self.timeout_s
        while True:
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = [t for t in await resp.json() if t.get("type") == "page"]
            if targets or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        if not targets:
            raise BrowserError("chromium has no page target")
        self._ws = await self._session.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0)

    def __exit__(self, *exc: object) -> None:
        try:
            if self._ws is not None:
                self._loop.run_until_complete(self._ws.close())
            if self._session is not None:
                self._loop.run_until_complete(self._session.close())
        finally:
            self._loop.close()
            if self._proc is not None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            shutil.rmtree(self._profile, ignore_errors=True)

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self._ws is not None
        self._next_id += 1
        call_id = self._next_id
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            msg = await asyncio.wait_for(self._ws.receive(), self.timeout_s)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise BrowserError(f"DevTools connection closed ({msg.type})")
            doc = json.loads(msg.data)
            if doc.get("id") == call_id:
                if "error" in doc:
                    raise BrowserError(f"{method}: {doc['error']}")
                return doc.get("result", {})

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result."""
        return self._loop.run_until_complete(self._call(method, params))

    def navigate(self, url: str) -> None:
        """Open ``url`` in the page."""
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (promises awaited) and return its JSON value."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"script failed: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def set_viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        """Emulate a window of ``width`` x ``height`` CSS pixels (a phone with ``mobile``)."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=mobile)

    def screenshot(self, path: str | Path) -> Path:
        """Save a PNG of the page as it is shown now."""
        import base64

        data = self.call("Page.captureScreenshot", format="png")["data"]
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out

    def wait_for(self, expression: str, timeout_s: float | None = None) -> Any:
        """Evaluate ``expression`` until it is truthy; returns its value."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            try:
                value = self.evaluate(expression)
            except BrowserError:
                value = None  # the page is still loading
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression}")
            time.sleep(0.1)
