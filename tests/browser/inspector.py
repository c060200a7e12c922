#!/usr/bin/env python3
"""The inspector's page in a real browser.

Starts `healthgate demo` on free ports, drives headless Chromium through
selenium the way an inspector would use the page, and checks what the page
shows: sign-in refused for a wrong key and for a turnstile key; a road
checkpoint where a handheld scanner (keyboard wedge) reads a green code at
36.6 °C -> pass; 38.2 °C -> fever, and the holder is then yellow; yellow,
red, revoked and malformed codes each with their reason; a code too large
(413); a checkpoint removed by a configuration reload (400); both languages;
the camera path on a fake camera that films a QR image made by
`healthgate issue --qr`, including a busy frame decoder (503); and the
network gone. Screenshots go to --out.

Run by scripts/browser-test.sh, which installs what it needs. Prints one
line `browser: N passed, M failed` and exits non-zero on any failure.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

# Selenium must never look for drivers or browsers on the network: the
# test uses Debian's chromium and chromium-driver.
os.environ["SE_OFFLINE"] = "true"
os.environ["SE_AVOID_STATS"] = "true"

from PIL import Image  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

WAIT_S = 15


class Failure(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Failure(what)


class Demo:
    """A `healthgate demo` process on free ports, stopped by its pid."""

    def __init__(self, binary, workdir):
        self.binary = binary
        self.dir = Path(workdir) / "demo"
        self.log = open(Path(workdir) / "demo.log", "wb")
        self.proc = subprocess.Popen(
            [binary, "demo", "--dir", str(self.dir), "--size", "1000",
             "--public", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        self.env = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("healthgate demo exited with %s" % self.proc.returncode)
            try:
                env = json.loads((self.dir / "env.json").read_text())
                if env.get("public_url"):
                    with urllib.request.urlopen(env["admin_url"] + "/readyz", timeout=2) as r:
                        if r.status == 200:
                            self.env = env
                            break
            except (OSError, ValueError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        if self.env is None:
            self.stop()
            raise RuntimeError("healthgate demo did not become ready")
        self.url = self.env["public_url"]

    def key(self, role):
        return self.env["api_keys"][role]

    def holder(self, colour, i):
        return self.env["holders"][colour][i]

    def issue(self, holder, qr=None, ttl=None):
        args = [self.binary, "issue", "--key", self.env["issuer_key"], "--holder", holder]
        if ttl:
            args += ["--ttl", str(ttl)]
        if qr:
            args += ["--qr", str(qr)]
        return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()

    def revoke(self, holder):
        subprocess.run(
            [self.binary, "revoke", "--key", self.env["authority_key"], "--admin", self.env["admin_url"],
             "--api-key", self.key("authority"), "--holder", holder],
            check=True, capture_output=True, text=True)

    def remove_checkpoint_and_reload(self, checkpoint_id):
        config = Path(self.env["config"])
        text = config.read_text()
        block_start = text.index('\n[[checkpoints]]\nid = "%s"' % checkpoint_id)
        block_end = text.find("\n[[checkpoints]]", block_start + 1)
        config.write_text(text[:block_start] + (text[block_end:] if block_end >= 0 else "\n"))
        req = urllib.request.Request(self.env["admin_url"] + "/v1/admin/reload", method="POST",
                                     headers={"Authorization": "Bearer " + self.key("operator")})
        with urllib.request.urlopen(req, timeout=5) as r:
            expect(r.status == 200, "reload refused")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def masked(hex_id):
    return hex_id[:4] + "…" + hex_id[-4:]


def y4m_from_png(png, out, width=640, height=480, frames=10):
    """A fake-camera video: the QR image on a grey scene, as raw YUV 4:2:0."""
    code = Image.open(png).convert("L")
    scene = Image.new("L", (width, height), 170)
    scene.paste(code, ((width - code.width) // 2, (height - code.height) // 2))
    y = scene.tobytes()
    chroma = bytes([128]) * ((width // 2) * (height // 2))
    with open(out, "wb") as f:
        f.write(b"YUV4MPEG2 W%d H%d F10:1 Ip A1:1 C420jpeg\n" % (width, height))
        for _ in range(frames):
            f.write(b"FRAME\n" + y + chroma + chroma)


def browser(profile, lang, size, camera=None, phone=False):
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--user-data-dir=%s" % profile, "--window-size=%d,%d" % size,
                "--lang=%s" % lang, "--force-device-scale-factor=1"]:
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"intl.accept_languages": lang})
    if phone:
        # A touch screen of a phone's size: the page must then leave the
        # focus alone (no on-screen keyboard over the answer).
        opts.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": size[0], "height": size[1], "pixelRatio": 1.0, "touch": True, "mobile": True}})
    if camera:
        opts.add_argument("--use-fake-ui-for-media-stream")
        opts.add_argument("--use-fake-device-for-media-stream")
        opts.add_argument("--use-file-for-fake-video-capture=%s" % camera)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    d = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    if not phone:
        d.set_window_size(*size)
    return d


class Page:
    """The inspector's page in one browser."""

    def __init__(self, driver, demo, shots):
        self.d = driver
        self.demo = demo
        self.shots = shots

    def el(self, id_):
        return self.d.find_element(By.ID, id_)

    def text(self, id_):
        return self.el(id_).text.strip()

    def visible(self, id_):
        return self.el(id_).is_displayed()

    def wait(self, cond, what, timeout=WAIT_S):
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.05).until(lambda _: cond())
        except TimeoutException:
            raise Failure("timed out waiting for " + what)

    def shot(self, name):
        path = self.shots / (name + ".png")
        self.d.save_screenshot(str(path))
        return path

    def open(self):
        # The short address redirects to the page.
        self.d.get(self.demo.url + "/inspect")
        self.wait(lambda: self.visible("signin") or self.visible("work"), "the page to load")

    def session_key(self):
        return self.d.execute_script("return sessionStorage.getItem('healthgate.inspector.key')")

    def sign_in(self, key):
        field = self.el("key")
        field.clear()
        field.send_keys(key + Keys.ENTER)

    def notice(self):
        n = self.el("notice")
        return n.text.strip() if n.is_displayed() else ""

    def wait_notice(self, fragment):
        self.wait(lambda: fragment in self.notice(), "a notice with %r (have %r)" % (fragment, self.notice()))

    def choose(self, checkpoint):
        Select(self.el("checkpoint")).select_by_value(checkpoint)

    def active_id(self):
        return self.d.switch_to.active_element.get_attribute("id")

    def mark_result(self):
        # So that waiting for "the result" waits for a new one.
        self.d.execute_script("document.getElementById('result').dataset.decision = 'stale'")

    def wait_result(self, decision, reason):
        def ready():
            r = self.el("result")
            return r.is_displayed() and r.get_attribute("data-decision") == decision \
                and r.get_attribute("data-reason") == reason
        def have():
            r = self.el("result")
            return "%s/%s, notice %r" % (r.get_attribute("data-decision"), r.get_attribute("data-reason"),
                                         self.notice())
        try:
            WebDriverWait(self.d, WAIT_S, poll_frequency=0.05).until(lambda _: ready())
        except TimeoutException:
            raise Failure("wanted %s/%s, the page shows %s" % (decision, reason, have()))
        return {k: self.text(k) for k in
                ["verdict-text", "color-text", "reason", "r-holder", "r-temp", "r-epoch", "r-checkpoint"]} | {
            "fever": self.text("fever") if self.visible("fever") else ""}

    def wedge_scan(self, code, temperature=None):
        """A handheld scanner types the code and Enter into whatever has the
        focus; the page must have kept it on the code field."""
        self.mark_result()
        if temperature is not None:
            t = self.el("temp")
            t.clear()
            t.send_keys(temperature + Keys.ENTER)
        expect(self.active_id() == "code", "the code field has the focus (it is %r)" % self.active_id())
        self.d.switch_to.active_element.send_keys(code + Keys.ENTER)

    def paste(self, text):
        """Puts `text` on the clipboard and pastes it with Ctrl+V."""
        self.mark_result()
        self.d.execute_cdp_cmd("Browser.grantPermissions", {
            "origin": self.demo.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
        self.d.execute_async_script(
            "const done = arguments[1]; navigator.clipboard.writeText(arguments[0]).then(() => done(true), "
            "(e) => done(String(e)))", text)
        code = self.el("code")
        code.click()
        code.send_keys(Keys.CONTROL, "v")

    def csp_violations(self):
        return [e["message"] for e in self.d.get_log("browser") if "Content Security Policy" in e["message"]]


class Run:
    def __init__(self):
        self.passed = []
        self.failed = []

    def check(self, name, fn):
        started = time.time()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the run goes on
            self.failed.append(name)
            detail = str(e) if isinstance(e, Failure) else traceback.format_exc()
            print("FAIL %s (%.1fs): %s" % (name, time.time() - started, detail), flush=True)
            return False
        self.passed.append(name)
        print("ok   %s (%.1fs)" % (name, time.time() - started), flush=True)
        return True


def headers_of(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return {k.lower(): v for k, v in r.headers.items()}


class Slowloris:
    """Frame uploads that never finish: they hold the gateway's frame slots."""

    def __init__(self, url, key, n):
        host, port = url.removeprefix("http://").split(":")
        self.socks = []
        for _ in range(n):
            s = socket.create_connection((host, int(port)))
            s.sendall((
                "POST /v1/inspect/decode?width=1000&height=1000 HTTP/1.1\r\nHost: x\r\n"
                "Authorization: Bearer %s\r\nContent-Type: application/octet-stream\r\n"
                "Content-Length: 1000000\r\n\r\n" % key).encode() + b"\x80" * 1000)
            self.socks.append(s)

    def close(self):
        for s in self.socks:
            s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the healthgate binary")
    ap.add_argument("--out", required=True, help="directory for screenshots")
    args = ap.parse_args()
    shots = Path(args.out)
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()
    for tool in ["chromium", "chromedriver"]:
        if not shutil.which(tool):
            print("browser: %s is missing (scripts/browser-test.sh installs it)" % tool)
            print("browser: 0 passed, 1 failed")
            return 1

    run = Run()
    work = tempfile.mkdtemp(prefix="hg-browser-")
    demo = Demo(os.path.abspath(args.bin), work)
    desk = None
    phone = None
    try:
        desk = Page(browser(Path(work) / "desk", "en-US", (1280, 1200)), demo, shots)
        p = desk
        green = [demo.holder("green", i) for i in range(5)]

        def security_headers():
            for path in ["/inspect/", "/inspect/app.js", "/inspect/app.css", "/inspect/icon.svg"]:
                h = headers_of(demo.url + path)
                csp = h.get("content-security-policy", "")
                expect("default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path + ": CSP " + csp)
                expect("unsafe-inline" not in csp and "unsafe-eval" not in csp and "http" not in csp,
                       path + ": CSP allows too much: " + csp)
                expect(h.get("x-content-type-options") == "nosniff", path + ": nosniff")
                expect(h.get("referrer-policy") == "no-referrer", path + ": referrer policy")
        run.check("security headers on the page and its files", security_headers)

        def wrong_key():
            p.open()
            expect(p.visible("signin") and not p.visible("work"), "the sign-in form is shown first")
            expect(p.d.execute_script("return document.documentElement.lang") == "en",
                   "an English browser gets the English page")
            p.sign_in("not-a-key-at-all")
            p.wait_notice("does not accept this key")
            expect(not p.visible("work"), "a refused key shows no work area")
            expect(p.session_key() is None, "a refused key is not kept")
            p.shot("signin-refused-en")
        run.check("a wrong key is refused (401)", wrong_key)

        def turnstile_key():
            p.sign_in(demo.key("turnstile"))
            p.wait_notice("needs an inspector key")
            expect(not p.visible("work"), "a turnstile key shows no work area")
        run.check("a turnstile key is refused (403)", turnstile_key)

        def sign_in():
            p.sign_in(demo.key("inspector"))
            p.wait(lambda: p.visible("work"), "the work area")
            expect(p.session_key() == demo.key("inspector"), "the key is kept for the session")
            expect(demo.key("inspector") not in p.d.current_url, "the key is not in the URL")
            expect(p.d.execute_script("return JSON.stringify(localStorage)").find(demo.key("inspector")) < 0,
                   "the key is not in localStorage")
            ids = [o.get_attribute("value") for o in Select(p.el("checkpoint")).options]
            expect(sorted(ids) == sorted(sum(demo.env["checkpoints"].values(), [])), "all checkpoints: %s" % ids)
        run.check("an inspector key signs in; checkpoints listed", sign_in)

        def road_pass():
            p.choose("wuhan-road-g4")
            expect(p.visible("temp-row"), "a road checkpoint asks for the temperature")
            expect(p.el("temp").get_attribute("inputmode") == "decimal", "a decimal keypad on phones")
            p.wedge_scan(demo.issue(green[0]), "36.6")
            r = p.wait_result("pass", "ok")
            expect(r["verdict-text"] == "PASS", r)
            expect(r["color-text"] == "Green code", r)
            expect(r["reason"] == "Green code with a recent health record: may pass.", r)
            expect(r["r-holder"] == masked(green[0]), r)
            expect(r["r-temp"] == "36.6 °C" and r["r-epoch"].isdigit() and r["fever"] == "", r)
            expect(p.active_id() == "code", "the focus is back on the code field")
            p.shot("pass-en")
        run.check("road checkpoint, keyboard wedge, 36.6 -> pass", road_pass)

        def fever():
            # Scanned first: the page waits for the reading.
            p.wedge_scan(demo.issue(green[2]))
            p.wait_notice("measures temperature")
            expect(p.active_id() == "temp", "the temperature field has the focus")
            p.d.switch_to.active_element.send_keys("38.2" + Keys.ENTER)
            r = p.wait_result("deny", "fever")
            expect(r["verdict-text"] == "DENY" and r["color-text"] == "Yellow code", r)
            expect("38.2" in r["fever"] and "now YELLOW" in r["fever"], r)
            p.shot("fever-en")
            p.el("status-button").click()
            p.wait(lambda: p.visible("status") and p.text("s-color") == "Yellow code", "the holder shown yellow")
            expect(p.text("s-holder") == masked(green[2]), "status of the same holder")
            expect("then Green code" in p.text("s-steps"), "quarantine ends green: " + p.text("s-steps"))
            p.shot("fever-status-en")
            # And the next scan of that holder, at a normal reading, is refused.
            p.wedge_scan(demo.issue(green[2]), "36.6")
            r = p.wait_result("deny", "not_green")
            expect(r["color-text"] == "Yellow code", r)
        run.check("38.2 -> fever; the holder is then yellow", fever)

        def yellow():
            p.wedge_scan(demo.issue(demo.holder("yellow", 0)), "36.5")
            r = p.wait_result("deny", "not_green")
            expect(r["color-text"] == "Yellow code" and r["reason"] == "Not a green code: may not pass here.", r)
        run.check("a yellow code is denied with its reason", yellow)

        def red():
            p.wedge_scan(demo.issue(demo.holder("red", 0)), "36.5")
            r = p.wait_result("deny", "not_green")
            expect(r["color-text"] == "Red code", r)
            p.shot("deny-red-en")
        run.check("a red code is denied with its reason", red)

        def revoked():
            demo.revoke(green[4])
            p.wedge_scan(demo.issue(green[4]), "36.5")
            r = p.wait_result("deny", "revoked")
            expect(r["reason"] == "This code has been revoked.", r)
        run.check("a revoked code is denied with its reason", revoked)

        def malformed():
            p.el("temp").send_keys("36.5")
            p.paste("HG1:NOT-A-CODE")
            r = p.wait_result("deny", "malformed")
            expect(r["color-text"] == "Colour unknown" and r["r-holder"] == "—", r)
            expect(r["reason"] == "Not a health code: the text cannot be read.", r)
            expect(not p.visible("status-button"), "no status for a code that names no holder")
        run.check("a malformed code, pasted, is denied with its reason", malformed)

        def too_large():
            p.el("temp").send_keys("36.5")
            p.paste("HG1:" + "A" * 5000)
            p.wait_notice("Too large")
            expect(p.el("code").get_attribute("value") == "", "the refused text is cleared")
        run.check("a code over the body limit is refused (413)", too_large)

        def chinese():
            p.el("lang").click()
            p.wait(lambda: p.text("idle-text") == "等待扫码。", "the page in Chinese")
            expect(p.d.execute_script("return document.documentElement.lang") == "zh-CN", "lang attribute")
            expect(p.text("lang") == "English" and p.el("check").text == "核验", "buttons in Chinese")
            p.wedge_scan(demo.issue(green[1]), "36.4")
            r = p.wait_result("pass", "ok")
            expect(r["verdict-text"] == "通行" and r["color-text"] == "绿码", r)
            expect(r["reason"] == "绿码且近期有健康记录，可以通行。", r)
            p.shot("pass-zh")
            # The answer on screen follows the switch both ways.
            p.el("lang").click()
            p.wait(lambda: p.text("verdict-text") == "PASS" and p.text("color-text") == "Green code", "it in English")
            p.el("lang").click()
            p.wait(lambda: p.text("verdict-text") == "通行", "it in Chinese again")
            p.wedge_scan(demo.issue(green[3]), "38.6")
            r = p.wait_result("deny", "fever")
            expect(r["color-text"] == "黄码" and "现为黄码" in r["fever"], r)
            p.el("status-button").click()
            p.wait(lambda: p.visible("status") and p.text("s-color") == "黄码", "the holder shown yellow")
            p.shot("fever-zh")
            p.wedge_scan(demo.issue(demo.holder("red", 1)), "36.5")
            r = p.wait_result("deny", "not_green")
            expect(r["color-text"] == "红码" and r["reason"] == "非绿码，此处不得通行。", r)
            p.shot("deny-red-zh")
        run.check("the language switch: pass, fever and deny in Chinese", chinese)

        def removed_checkpoint():
            p.choose("wuhan-clinic-jinyintan")
            demo.remove_checkpoint_and_reload("wuhan-clinic-jinyintan")
            p.wedge_scan(demo.issue(green[0]), "36.5")
            p.wait_notice("该卡口已不在配置中")
            p.wait(lambda: "wuhan-clinic-jinyintan" not in
                   [o.get_attribute("value") for o in Select(p.el("checkpoint")).options], "the list reloaded")
        run.check("a checkpoint removed by a reload is refused (400) and the list reloaded", removed_checkpoint)

        def no_csp_violation():
            v = p.csp_violations()
            expect(not v, "CSP violations: %s" % v)
        run.check("the page needs nothing the CSP forbids", no_csp_violation)

        # The camera, on a phone-sized window whose browser speaks Chinese.
        def camera():
            nonlocal phone
            png = Path(work) / "code.png"
            code = demo.issue(green[0], qr=png, ttl=600)
            video = Path(work) / "camera.y4m"
            y4m_from_png(png, video)
            phone = Page(browser(Path(work) / "phone", "zh-CN", (412, 860), camera=video, phone=True), demo, shots)
            q = phone
            q.open()
            expect(q.d.execute_script("return document.documentElement.lang") == "zh-CN",
                   "a Chinese browser gets the Chinese page")
            q.sign_in(demo.key("inspector"))
            q.wait(lambda: q.visible("work"), "the work area")
            q.choose("wuhan-road-g4")
            q.el("temp").send_keys("36.7")
            # Every frame slot held by uploads that never finish: the camera
            # hears "busy" (503) and keeps trying.
            hog = Slowloris(demo.url, demo.key("inspector"), 4)
            try:
                q.mark_result()
                q.el("camera").click()
                q.wait(lambda: q.visible("camera-box"), "the camera preview")
                q.wait(lambda: "网关正忙" in q.text("camera-status"), "the busy decoder said so")
                expect(q.el("result").get_attribute("data-decision") == "stale", "no answer while busy")
                q.shot("camera-busy-zh")
            finally:
                hog.close()
            r = q.wait_result("pass", "ok")
            expect(r["color-text"] == "绿码" and r["r-holder"] == masked(green[0]) and r["r-temp"] == "36.7 °C", r)
            expect(not q.visible("camera-box"), "the camera stops once the code is read")
            expect(code, "issued")
            q.shot("camera-pass-zh")
            v = q.csp_violations()
            expect(not v, "CSP violations: %s" % v)
        run.check("camera: a QR image on a fake camera is read and passes; 503 while busy", camera)

        def sign_out():
            p.el("signout").click()
            p.wait(lambda: p.visible("signin"), "the sign-in form")
            expect(p.session_key() is None, "signing out forgets the key")
            p.sign_in(demo.key("inspector"))
            p.wait(lambda: p.visible("work"), "the work area")
        run.check("signing out forgets the key", sign_out)

        def network_gone():
            p.choose("wuhan-road-g4")
            code = demo.issue(green[1])
            demo.stop()
            p.wedge_scan(code, "36.5")
            p.wait_notice("网关无响应")
            expect(p.el("code").get_attribute("value") == code, "the code stays, to send again")
            p.shot("network-zh")
        run.check("the network gone is said so", network_gone)
    finally:
        for page in (desk, phone):
            if page:
                page.d.quit()
        demo.stop()
        shutil.rmtree(work, ignore_errors=True)

    print("browser: %d passed, %d failed" % (len(run.passed), len(run.failed)))
    print("screenshots in %s" % shots)
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
