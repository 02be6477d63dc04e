"""Real-browser test: headless Chromium loads the app (shipped checkpoints), submits a prompt and sees images.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands on fd 3,
replies on fd 4, NUL-separated JSON), so no extra Python package is needed. CI installs Debian's
``chromium`` in ``.ci/run``; the test skips only when no chromium binary exists. The screenshot is
written to ``docs/app_screenshot.png``.
"""

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import IN_CI

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "app_screenshot.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMPT = "a large green square in the center, white background"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1100", "--remote-debugging-pipe"]

pytestmark = pytest.mark.skipif(CHROMIUM is None and not IN_CI,  # under CI a missing chromium fails
                                reason="no chromium binary (CI installs it: see .ci/run)")


def _high_fd(fd: int) -> int:
    """Move a descriptor to >= 10 so ``3<&N 4>&M`` cannot clobber each other (bash: dash rejects fds > 9)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    """Minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, binary: str, profile: str):
        cmd_r, cmd_w = map(_high_fd, os.pipe())  # we write commands, chromium reads them on fd 3
        ev_r, ev_w = map(_high_fd, os.pipe())  # chromium writes replies/events on fd 4
        launcher = f'exec "$0" "$@" 3<&{cmd_r} 4>&{ev_w}'
        self.proc = subprocess.Popen(["bash", "-c", launcher, binary, *FLAGS, f"--user-data-dir={profile}",
                                      "about:blank"], pass_fds=(cmd_r, ev_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r), os.close(ev_w)
        self.w, self.r, self.buf, self.next_id = cmd_w, ev_r, b"", 0

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.time()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError(f"no reply to {method} within {timeout}s")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited (rc={self.proc.poll()})")
            self.buf += chunk

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.w), os.close(self.r)


class Page:
    def __init__(self, browser: Browser):
        self.b = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.s = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": 1280, "height": 1100, "deviceScaleFactor": 1, "mobile": False})

    def send(self, method, params=None, timeout=60):
        return self.b.send(method, params, self.s, timeout)

    def js(self, expression: str):
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error in {expression!r}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; page text: "
                             f"{self.js('document.body.innerText.slice(0, 2000)')!r}")

    def click(self, selector: str):
        """A real mouse click (press + release) at the element's centre."""
        box = self.js(f"(() => {{ const e = document.querySelector({selector!r}); e.scrollIntoView(); "
                      f"const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent",
                      {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1})


@pytest.fixture(scope="module")
def app_url():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import app

    demo = app.build_demo()  # the shipped checkpoints (assets/scenes-t2i, assets/digits-c2i)
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, ssr_mode=False)
    yield url
    demo.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_browser_submits_prompt_and_sees_images(app_url, tmp_path):
    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(CHROMIUM, profile)
        try:
            page = Page(browser)
            page.send("Page.navigate", {"url": app_url})
            page.wait_for("!!document.querySelector('#prompt textarea') && !!document.querySelector('#generate-image')",
                          90, "the app to render")
            assert "mmgen" in page.js("document.title")
            page.js("(() => { const t = document.querySelector('#prompt textarea'); t.focus(); t.select(); })()")
            page.send("Input.insertText", {"text": PROMPT})  # typed like a user: fires input events
            assert page.js("document.querySelector('#prompt textarea').value") == PROMPT
            images_shown = ("(() => { const imgs = [...document.querySelectorAll('#scenes-gallery img')]; return"
                            " imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : 0; })()")
            # A click that lands while the freshly rendered page is still attaching its event handlers can be lost
            # (seen once in a fresh-clone CI run: page rendered, prompt typed, then 480 s with neither images nor an
            # error; the same code passed the runs before and after). Click again if nothing shows within a minute;
            # a real failure still fails after the last, long wait.
            for attempt, wait in enumerate((60, 60, 360)):
                page.click("#generate-image")
                try:
                    n = page.wait_for(images_shown, wait, "generated images in the gallery")
                    break
                except AssertionError:
                    if attempt == 2:
                        raise
            assert n >= 1
            sizes = page.js("[...document.querySelectorAll('#scenes-gallery img')].map(i => [i.naturalWidth, i.src])")
            assert all(w >= 16 for w, _ in sizes) and all(src.split("?")[0].endswith(".png") for _, src in sizes)
            stats = page.wait_for("(() => { const e = document.querySelector('#scenes-stats');"
                                  " return e && e.innerText.includes('forward passes') ? e.innerText : ''; })()",
                                  30, "the stats panel")
            assert "speedup over AR" in stats
            page.js("window.scrollTo(0, 0)")
            time.sleep(0.5)
            shot = base64.b64decode(page.send("Page.captureScreenshot", {"format": "png"})["data"])
        finally:
            browser.close()
    # the screenshot goes to the test's temp folder; MMGEN_UPDATE_SCREENSHOT=1 refreshes docs/app_screenshot.png
    # (a plain test run leaves the working tree untouched)
    target = SCREENSHOT if os.environ.get("MMGEN_UPDATE_SCREENSHOT") == "1" else tmp_path / SCREENSHOT.name
    target.parent.mkdir(exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(shot)
    os.replace(tmp, target)
    with Image.open(target) as im:
        assert im.format == "PNG" and im.size == (1280, 1100)
