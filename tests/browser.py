"""Open a page in headless Chromium and inspect it over the DevTools protocol."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1280,900",
]

#: Run in the page after load, per chart: its size, its drawn elements, its texts cut off
#: by its edges, text over text, and legends over a plot area (matplotlib's SVG groups:
#: ``<g id="…-axes_N">`` whose first ``<g>`` is the plot's background, ``…-legend_N``).
MEASURE = """
(() => {
const hit = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 1 &&
                      Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 1;
const groups = (svg, kind) => [...svg.querySelectorAll('g')]
  .filter(g => new RegExp('-' + kind + '_[0-9]+$').test(g.id));
return JSON.stringify([...document.querySelectorAll('figure.chart')].map(f => {
  const svg = f.querySelector('svg');
  if (!svg) return {id: f.id, width: 0, height: 0, drawn: 0};
  const box = svg.getBoundingClientRect();
  const drawn = [...svg.querySelectorAll('path, rect, text, use, line, polyline')]
    .filter(e => { const b = e.getBBox(); return b.width > 0 || b.height > 0; }).length;
  const texts = [...svg.querySelectorAll('text')].filter(t => t.textContent.trim())
    .map(t => [t.textContent, t.getBoundingClientRect()]);
  const cut = texts.filter(([, b]) => b.left < box.left - 1 || b.right > box.right + 1 ||
                                      b.top < box.top - 1 || b.bottom > box.bottom + 1)
    .map(([s]) => s);
  const crossed = [];
  texts.forEach(([s, a], i) => texts.slice(i + 1).forEach(([t, b]) => {
    if (hit(a, b)) crossed.push(s + ' / ' + t);
  }));
  const plots = groups(svg, 'axes').map(g => g.querySelector(':scope > g'))
    .filter(Boolean).map(g => g.getBoundingClientRect());
  const covering = groups(svg, 'legend')
    .filter(l => plots.some(p => hit(l.getBoundingClientRect(), p))).map(l => l.id);
  return {id: f.id, width: box.width, height: box.height, drawn: drawn,
          cut: cut, crossed: crossed, covering: covering};
}));
})()
"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """Console errors, requests and measurements of one page load."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.charts: list[dict] = []


def open_page(path: Path, screenshot: Path, timeout: float = 60.0) -> Page:
    """Load ``path`` in headless Chromium; collect errors and requests, measure the charts,
    save a PNG of the first screen to ``screenshot``."""
    import websocket

    profile = tempfile.mkdtemp(prefix="chromium-")
    proc = subprocess.Popen(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("chromium did not start its DevTools server")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        ws = websocket.create_connection(page_ws, timeout=timeout, suppress_origin=True)
        return _drive(ws, path, screenshot, deadline)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _drive(ws, path: Path, screenshot: Path, deadline: float) -> Page:
    import base64

    page = Page()
    ids = iter(range(1, 10**6))

    def send(method: str, **params) -> dict:
        msg_id = next(ids)
        ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            message = receive()
            if message.get("id") == msg_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def receive() -> dict:
        if time.monotonic() > deadline:
            raise TimeoutError("the page did not load in time")
        message = json.loads(ws.recv())
        method = message.get("method")
        params = message.get("params", {})
        if method == "Runtime.exceptionThrown":
            page.errors.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            page.errors.append(json.dumps(params["args"])[:500])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            page.errors.append(params["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            page.requests.append(params["request"]["url"])
        elif method == "Page.loadEventFired":
            page.loaded = True
        return message

    for domain in ("Page", "Runtime", "Log", "Network"):
        send(f"{domain}.enable")
    page.loaded = False
    send("Page.navigate", url=path.resolve().as_uri())
    while not page.loaded:
        receive()
    result = send("Runtime.evaluate", expression=MEASURE, returnByValue=True)
    page.charts = json.loads(result["result"]["value"])
    shot = send("Page.captureScreenshot", format="png")
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    ws.close()
    return page
