"""The README's screenshot of `proui-train demo` (docs/images/demo_page.png).

The page is served on 127.0.0.1 and opened in headless Chromium (Debian's `chromium`), driven over the DevTools
protocol: the page opens with the first example restored; then the second example is picked, a stroke is painted
across its eyes with the editor's brush, "Restore" is clicked, and the page is captured once the outputs have
changed. Needs the demo extra and a `chromium` on PATH:

    .venv/bin/python scripts/demo_screenshot.py --out docs/images/demo_page.png
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    """One Chromium tab over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws, self.n = ws, 0

    async def send(self, method: str, **params):
        self.n += 1
        await self.ws.send_json({"id": self.n, "method": method, "params": params})
        async for msg in self.ws:
            data = json.loads(msg.data)
            if data.get("id") == self.n:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data["result"]
        raise RuntimeError("the browser closed the connection")

    async def js(self, expression: str):
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def until(self, expression: str, timeout: float = 90.0):
        t = time.monotonic()
        while not await self.js(expression):
            if time.monotonic() - t > timeout:
                raise TimeoutError(f"waited {timeout:.0f} s for {expression}")
            await asyncio.sleep(0.5)

    async def mouse(self, kind: str, x: float, y: float, buttons: int = 1):
        await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=buttons,
                        clickCount=1)

    async def click(self, x: float, y: float):
        await self.mouse("mousePressed", x, y)
        await self.mouse("mouseReleased", x, y, 0)

    async def center(self, expression: str) -> tuple[float, float]:
        """The centre of the element `expression` finds, scrolled into view."""
        r = await self.js(f"(() => {{ const e = {expression}; e.scrollIntoView({{block: 'center'}}); "
                          "const b = e.getBoundingClientRect(); return [b.x + b.width / 2, b.y + b.height / 2]; })()")
        return r[0], r[1]


async def drive(url: str, out: Path, width: int, example: int, size: tuple[int, int],
                eyes: tuple[tuple[float, float], tuple[float, float]], debug_port: int) -> None:
    """Open the page in the Chromium listening on `debug_port`, pick example `example` (a photo of `size` (w, h)
    whose eye centres are `eyes`), paint a bar across the eyes, restore, and capture the page into `out`."""
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                tabs = await (await session.get(f"http://127.0.0.1:{debug_port}/json/list")).json()
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)
        tab = next(t for t in tabs if t["type"] == "page")
        async with session.ws_connect(tab["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = Page(ws)
            await page.send("Page.enable")
            await page.send("Page.navigate", url=url)
            outputs = "Array.from(document.querySelectorAll('img')).filter(e => e.src.includes('/gradio_api/file='))"
            restored = f"{outputs}.map(e => e.src).join(' ')"
            await page.until(f"{outputs}.length >= 4")  # the first example restored on load (+ the examples)
            before = await page.js(restored)
            # pick the example, then paint across its eyes with the brush
            await page.click(*await page.center(f"document.querySelectorAll('button.gallery-item')[{example}]"))
            await asyncio.sleep(3.0)  # the editor loads the picked photo
            await page.click(*await page.center("document.querySelector('button[aria-label=\"Brush\"]')"))
            zoom = await page.js("parseFloat(Array.from(document.querySelectorAll('*')).find("
                                 "e => e.children.length === 0 && /^\\d+%$/.test(e.innerText?.trim())).innerText) / 100")
            cx, cy = await page.center("document.querySelector('canvas')")
            (w, h), (left, right) = size, eyes

            def to_screen(p):  # the editor shows the photo centred in its canvas at the zoom it displays
                return cx + (p[0] - w / 2) * zoom, cy + (p[1] - h / 2) * zoom

            span = right[0] - left[0]
            pad = 0.45 * span
            for dy in (-0.12 * span, 0.0, 0.12 * span):  # three brush passes: a bar over both eyes
                a = to_screen((left[0] - pad, left[1] + dy))
                b = to_screen((right[0] + pad, right[1] + dy))
                await page.mouse("mouseMoved", *a, 0)
                await page.mouse("mousePressed", *a)
                for t in [i / 20 for i in range(1, 21)]:
                    await page.mouse("mouseMoved", a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))
                await page.mouse("mouseReleased", *b, 0)
            await page.click(*await page.center(
                "Array.from(document.querySelectorAll('button')).find(e => e.innerText.trim() === 'Restore')"))
            await page.until(f"(() => {{ const s = {restored}; return s.length && s !== {json.dumps(before)}; }})()")
            await asyncio.sleep(2.0)  # the new images load
            await page.js("window.scrollTo(0, 0)")
            height = await page.js("document.documentElement.scrollHeight")
            await page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                            mobile=False)
            await asyncio.sleep(1.0)
            shot = await page.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    print(f"wrote {out}: {image.size[0]}x{image.size[1]}, {out.stat().st_size / 1024:.0f} KB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/demo_page.png"))
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()

    import numpy as np

    from proui_data import align
    from proui_train import FaceRestorer
    from proui_train.demo import EXAMPLES, RELEASED, launch

    index = 1  # grace_hopper.jpg
    photo = np.asarray(Image.open(EXAMPLES[index]).convert("RGB"))
    p5 = align.landmarks68_to_5(FaceRestorer(RELEASED[0], device="cpu").search(photo)[0].landmarks)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GRADIO_TEMP_DIR"] = str(Path(tmp) / "gradio")
        app = launch([str(p) for p in RELEASED], port=free_port(), device="cpu", block=False)
        debug_port = free_port()
        chrome = subprocess.Popen([args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                   f"--remote-debugging-port={debug_port}", f"--user-data-dir={Path(tmp) / 'chrome'}",
                                   f"--window-size={args.width},1000", "about:blank"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            asyncio.run(drive(app.local_url, args.out, args.width, index, photo.shape[1::-1],
                              (tuple(p5[0]), tuple(p5[1])), debug_port))
        finally:
            chrome.terminate()
            chrome.wait(10)
            app.close()


if __name__ == "__main__":
    main()
