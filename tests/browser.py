"""Headless Chromium over the DevTools protocol, for tests of the feature pages: load a URL, wait
until a JavaScript condition holds, and report console errors, uncaught exceptions and failed loads."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field


def chromium_path() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


@dataclass
class PageResult:
    url: str
    ready: bool
    text: str
    errors: list[str] = field(default_factory=list)
    screenshot: bytes | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_pages(urls: list[str], ready: str = "true", timeout: float = 20.0, screenshot: bool = False,
               size: tuple[int, int] = (1400, 1000)) -> list[PageResult]:
    """Each URL in one headless Chromium: wait until the expression `ready` is true (or `timeout`), then
    the page's innerText and every console error, exception and failed request seen while loading."""
    import websockets

    port = _free_port()
    profile = tempfile.mkdtemp(prefix="ff-chromium-")
    proc = subprocess.Popen([chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             f"--window-size={size[0]},{size[1]}", f"--remote-debugging-port={port}",
                             f"--user-data-dir={profile}", "--allow-file-access-from-files", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def run() -> list[PageResult]:
        deadline = time.time() + 30
        while True:
            try:
                tabs = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2).read())
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("headless Chromium did not open its DevTools port")
                await asyncio.sleep(0.2)
        ws_url = next(t for t in tabs if t["type"] == "page")["webSocketDebuggerUrl"]
        out = []
        async with websockets.connect(ws_url, max_size=100_000_000) as ws:
            counter = 0
            errors: list[str] = []

            def on_event(msg: dict) -> None:
                method, params = msg.get("method"), msg.get("params", {})
                if method == "Runtime.exceptionThrown":
                    d = params["exceptionDetails"]
                    errors.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
                elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                    errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
                elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                    errors.append("log: " + params["entry"]["text"] + " " + params["entry"].get("url", ""))

            async def call(method: str, **params):
                nonlocal counter
                counter += 1
                await ws.send(json.dumps({"id": counter, "method": method, "params": params}))
                while True:
                    msg = json.loads(await ws.recv())
                    if msg.get("id") == counter:
                        if "error" in msg:
                            raise RuntimeError(f"{method}: {msg['error']}")
                        return msg.get("result", {})
                    on_event(msg)

            for domain in ("Page", "Runtime", "Log"):
                await call(f"{domain}.enable")
            for url in urls:
                errors.clear()
                await call("Page.navigate", url=url)
                ok, end = False, time.time() + timeout
                while time.time() < end:
                    r = await call("Runtime.evaluate", expression=f"Boolean({ready})", returnByValue=True)
                    if r.get("result", {}).get("value") is True:
                        ok = True
                        break
                    await asyncio.sleep(0.2)
                await asyncio.sleep(0.3)  # late errors
                text = (await call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                                   returnByValue=True))["result"].get("value", "")
                shot = None
                if screenshot:
                    shot = base64.b64decode((await call("Page.captureScreenshot", format="png"))["data"])
                out.append(PageResult(url, ok, text, list(errors), shot))
        return out

    try:
        return asyncio.run(run())
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
