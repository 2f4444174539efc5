"""The web console, tested from outside: the real `flashlora serve` on the test model with its private
redis-server, on loopback.

  test_console.py FLASHLORA SOURCE_DIR BUILD_DIR --api   the routes the console needs (any python3)
  test_console.py FLASHLORA SOURCE_DIR BUILD_DIR --browser   the page in headless chromium

--api: the page and its files (content types, Content-Security-Policy, nosniff, no key needed),
GET /v1/jobs (newest first, pages, bounds, tenant isolation), GET /v1/adapters/{id}/file in the three
layouts (each read back by the service as an import), POST /v1/datasets/validate (each refused file
with its reason, a set-wide refusal, bad forms), all 404 or empty for another tenant.

--browser: Debian's chromium through chromedriver and python3-selenium (run with /usr/bin/python3),
at 1280x800 and at 390x844: a wrong key shows its message; the right key is entered once; a rejected
upload shows each file's reason and cannot be submitted; a zip is uploaded (thumbnails and two
rejected files), the training is followed to `succeeded` with its loss curve drawn; the playground
generates with the adapter beside the base model (both images decode); at 1280x800 an evaluation
shows its scores, an adapter file is imported and a running training is canceled; the adapter is
deleted; keyboard moves between the tabs and every control has a
label; the page never scrolls sideways; another tenant's adapter and job never appear. A screenshot of each
panel at each size goes to BUILD_DIR/console-screenshots/. Exit 77 (skipped) only when chromium,
chromedriver or selenium is not installed. Ends with "N passed, N failed".
"""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import service_client as sc  # noqa: E402

BIN, SRC, BUILD = sys.argv[1], sys.argv[2], sys.argv[3]
MODE = sys.argv[4] if len(sys.argv) > 4 else "--browser"
MODEL = os.path.join(SRC, "tests/fixtures/flux_b.model.safetensors")
check = sc.Checks()


def image_files(work, count):
    d = os.path.join(work, "images%d" % count)
    subprocess.check_call([sys.executable, os.path.join(SRC, "tests/trainer/make_images.py"), d, str(count)])
    return [(n, open(os.path.join(d, n), "rb").read()) for n in sorted(os.listdir(d))]


def make_zip(path, files):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files:
            z.writestr(name, data)
    with open(path, "rb") as f:
        return f.read()


BAD_FILES = [("notes.pdf", b"%PDF-1.4 not an image"), ("broken.png", b"\x89PNG\r\n\x1a\n garbage")]


def validate(base, key, archive, name="set.zip", fields=None):
    body, ctype = sc.multipart(fields or {}, {"images": (name, archive)})
    return sc.request(base, "POST", "/v1/datasets/validate", key, body, {"Content-Type": ctype})


def train(base, key, archive, name):
    body, ctype = sc.multipart({"trigger_word": "sks", "steps": "8", "rank": "2", "resolution": "16", "name": name},
                               {"images": ("set.zip", archive)})
    r = sc.request(base, "POST", "/v1/trainings", key, body, {"Content-Type": ctype})
    assert r.status == 202, r.body
    return sc.wait_job(base, key, r.json()["job_id"], timeout=120)


def api_checks(svc, work):
    base = svc.base
    acme, globex = svc.key("acme"), svc.key("globex")

    # ---- the page ---------------------------------------------------------------------------------
    r = sc.request(base, "GET", "/")
    csp = r.headers.get("Content-Security-Policy", "")
    check("GET / without a key: the console page, HTML", r.status == 200 and
          r.headers.get("Content-Type", "").startswith("text/html") and b"flashlora console" in r.body, r.headers)
    check("the page: nosniff, no framing, a self-only CSP without inline script",
          r.headers.get("X-Content-Type-Options") == "nosniff" and "script-src 'self'" in csp and
          "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp, r.headers)
    check("the page has no inline script, style or event handler",
          b"<script>" not in r.body and b"<style" not in r.body and b" onclick=" not in r.body.lower() and
          b" style=" not in r.body, "")
    types = {p: sc.request(base, "GET", p).headers.get("Content-Type", "") for p in
             ("/console/app.js", "/console/app.css", "/console/icon.svg")}
    check("script, style and icon with their types", types["/console/app.js"].startswith("text/javascript") and
          types["/console/app.css"].startswith("text/css") and types["/console/icon.svg"] == "image/svg+xml", types)
    r = sc.request(base, "HEAD", "/")
    check("HEAD / -> 200 without a body", r.status == 200 and r.body == b"", r.status)
    r = sc.request(base, "GET", "/console/missing.js")
    check("an unknown console file -> 404 JSON", r.status == 404 and r.json()["error"]["code"] == "not_found", r.body)
    r = sc.request(base, "POST", "/", body=b"x")
    check("POST / -> 405", r.status == 405, r.status)

    # ---- POST /v1/datasets/validate ---------------------------------------------------------------
    good = make_zip(os.path.join(work, "good.zip"), image_files(work, 5) + BAD_FILES)
    r = validate(base, acme, good)
    j = r.json() if r.status == 200 else {}
    reasons = {x["name"]: x["reason"] for x in j.get("rejected", [])}
    check("validate: a usable set, its images with sizes, each refused file with its reason",
          r.status == 200 and j["usable"] is True and j["error"] is None and len(j["images"]) == 5 and
          all(i["width"] == 32 for i in j["images"]) and set(reasons) == {"notes.pdf", "broken.png"} and
          "PDF" in reasons["notes.pdf"] and reasons["broken.png"], r.body)
    few = make_zip(os.path.join(work, "few.zip"), image_files(work, 2) + BAD_FILES)
    r = validate(base, acme, few)
    j = r.json() if r.status == 200 else {}
    check("validate: too few usable images is usable false, the reason, and every refused file",
          r.status == 200 and j["usable"] is False and j["error"]["code"] == "invalid_input" and
          "usable image" in j["error"]["message"] and len(j["rejected"]) == 2, r.body)
    r = validate(base, acme, b"not an archive at all")
    check("validate: not an archive -> 400", r.status == 400 and r.json()["error"]["code"] == "invalid_input", r.body)
    r = validate(base, acme, good, fields={"trigger_word": "sks"})
    check("validate: another field -> 400 naming it", r.status == 400 and "trigger_word" in r.body.decode(), r.body)
    r = sc.request(base, "POST", "/v1/datasets/validate", acme, {"images": "x"})
    check("validate: no file -> 400", r.status == 400, r.body)
    r = validate(base, None, good)
    check("validate: no key -> 401", r.status == 401, r.status)
    r = sc.request(base, "GET", "/v1/datasets/validate", acme)
    check("validate: GET -> 405", r.status == 405, r.status)

    # ---- GET /v1/jobs -----------------------------------------------------------------------------
    job = train(base, acme, good, "logo")
    check("a training through the API succeeds", job["state"] == "succeeded", job)
    ids = [job["id"]]
    for seed in (1, 2):
        r = sc.request(base, "POST", "/v1/generations", acme, {"prompt": "a photo of sks", "width": 16, "height": 16,
                                                              "steps": 2, "seed": seed, "sync": True})
        ids.append(r.json().get("job_id"))
    r = sc.request(base, "GET", "/v1/jobs", acme)
    page = r.json() if r.status == 200 else {}
    check("GET /v1/jobs: the tenant's jobs, newest first", r.status == 200 and
          [x["id"] for x in page["jobs"]] == ids[::-1] and page["total"] == 3 and page["next_offset"] is None, r.body)
    check("GET /v1/jobs: no server path in a listed request",
          b"/uploads/" not in r.body and page["jobs"][-1]["request"].get("images") == "upload", r.body[-300:])
    r = sc.request(base, "GET", "/v1/jobs?limit=2", acme)
    p1 = r.json()
    r = sc.request(base, "GET", "/v1/jobs?limit=2&offset=%d" % p1["next_offset"], acme)
    p2 = r.json()
    check("GET /v1/jobs: pages follow next_offset", [x["id"] for x in p1["jobs"] + p2["jobs"]] == ids[::-1] and
          p1["next_offset"] == 2 and p2["next_offset"] is None, (p1, p2))
    bad = [sc.request(base, "GET", "/v1/jobs?" + q, acme).status for q in
           ("limit=0", "limit=101", "limit=x", "offset=-1", "offset=", "offset=1e3")]
    check("GET /v1/jobs: a bad limit or offset -> 400", bad == [400] * 6, bad)
    r = sc.request(base, "GET", "/v1/jobs?kind=train", acme)
    check("GET /v1/jobs?kind=train: the trainings only", r.status == 200 and
          [x["id"] for x in r.json()["jobs"]] == ids[:1] and r.json()["next_offset"] is None, r.body)
    r = sc.request(base, "GET", "/v1/jobs?kind=generate&limit=1", acme)
    q = sc.request(base, "GET", "/v1/jobs?kind=generate&limit=1&offset=%s" % r.json()["next_offset"], acme)
    check("GET /v1/jobs?kind=generate: pages follow next_offset, an index position",
          [x["id"] for x in r.json()["jobs"] + q.json()["jobs"]] == ids[:0:-1] and r.json()["next_offset"] == 1 and
          q.json()["next_offset"] == 2, (r.body, q.body))
    r = sc.request(base, "GET", "/v1/jobs?kind=evaluate", acme)
    check("GET /v1/jobs?kind=evaluate: none, the whole index looked at", r.status == 200 and
          r.json()["jobs"] == [] and r.json()["next_offset"] is None, r.body)
    r = sc.request(base, "GET", "/v1/jobs?kind=nothing", acme)
    check("GET /v1/jobs: an unknown kind -> 400 naming the query", r.status == 400 and "kind" in r.body.decode(), r.body)
    r = sc.request(base, "GET", "/v1/jobs", globex)
    check("GET /v1/jobs: another tenant's jobs are not listed", r.status == 200 and r.json()["jobs"] == [] and
          r.json()["total"] == 0, r.body)
    check("GET /v1/jobs: no key -> 401", sc.request(base, "GET", "/v1/jobs").status == 401)
    r = sc.request(base, "DELETE", "/v1/jobs/" + ids[1], acme)
    r = sc.request(base, "GET", "/v1/jobs", acme)
    check("GET /v1/jobs: a deleted job is no longer listed", ids[1] not in [x["id"] for x in r.json()["jobs"]], r.body)

    # ---- GET /v1/adapters/{id}/file ---------------------------------------------------------------
    got = {}
    for layout in ("canonical", "kohya", "peft"):
        r = sc.request(base, "GET", "/v1/adapters/logo/file?layout=" + layout, acme)
        got[layout] = r
    ok = all(r.status == 200 and r.headers.get("Content-Type") == "application/vnd.safetensors" and
             ('filename="logo.%s.safetensors"' % l) in r.headers.get("Content-Disposition", "")
             for l, r in got.items())
    check("adapter file in the canonical, kohya and PEFT layouts, named for download", ok,
          {l: (r.status, r.headers) for l, r in got.items()})
    keys = {}
    for layout, r in got.items():
        (n,) = struct.unpack("<Q", r.body[:8])
        keys[layout] = [k for k in json.loads(r.body[8:8 + n]) if k != "__metadata__"]
    check("each layout has its own tensor names",
          all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys["canonical"]) and
          any("lora_unet_" in k for k in keys["kohya"]) and all(k.startswith("transformer.") for k in keys["peft"]),
          keys)
    adapter = sc.request(base, "GET", "/v1/adapters/logo", acme).json()
    import hashlib
    check("the canonical download is the stored file", hashlib.sha256(got["canonical"].body).hexdigest() ==
          adapter["sha256"], adapter["sha256"])
    for layout in ("kohya", "peft"):
        body, ctype = sc.multipart({"name": "back-" + layout}, {"file": ("a.safetensors", got[layout].body)})
        r = sc.request(base, "POST", "/v1/adapters", acme, body, {"Content-Type": ctype})
        check("the %s download imports back as %s" % (layout, layout),
              r.status == 201 and r.json()["format"] == layout and r.json()["rank"] == adapter["rank"], r.body)
    r = sc.request(base, "GET", "/v1/adapters/logo/file", acme)
    check("no layout: canonical", r.status == 200 and r.body == got["canonical"].body, r.status)
    r = sc.request(base, "HEAD", "/v1/adapters/logo/file?layout=kohya", acme)
    check("HEAD of the file: 200, headers, no body", r.status == 200 and r.body == b"" and
          "attachment" in r.headers.get("Content-Disposition", ""), r.status)
    r = sc.request(base, "GET", "/v1/adapters/logo/file?layout=onnx", acme)
    check("an unknown layout -> 400 naming the query", r.status == 400 and "layout" in r.json()["error"]["message"],
          r.body)
    r = sc.request(base, "GET", "/v1/adapters/logo/file", globex)
    check("another tenant's adapter file -> 404", r.status == 404, r.status)
    r = sc.request(base, "GET", "/v1/adapters/%s/file" % adapter["id"], globex)
    check("another tenant's adapter file by id -> 404", r.status == 404, r.status)
    r = sc.request(base, "GET", "/v1/adapters/logo/file")
    check("the file without a key -> 401", r.status == 401, r.status)
    sc.request(base, "DELETE", "/v1/adapters/logo", acme)
    r = sc.request(base, "GET", "/v1/adapters/logo/file", acme)
    check("a deleted adapter's file -> 404", r.status == 404, r.status)


# ---- the browser --------------------------------------------------------------------------------------

def browser_available():
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        return "chromium or chromedriver is not installed (Debian chromium, chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed for %s (Debian python3-selenium)" % sys.executable
    return None


class Page:
    """A headless chromium on the console, at one viewport size."""

    def __init__(self, base, width, height, shots, tag):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service as ChromeService
        opts = webdriver.ChromeOptions()
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=%d,%d" % (width, height), "--force-device-scale-factor=1", "--lang=en-US"):
            opts.add_argument(a)
        opts.binary_location = shutil.which("chromium")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=ChromeService(shutil.which("chromedriver")), options=opts)
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": width, "height": height, "deviceScaleFactor": 1,
                                     "mobile": width < 600})
        self.base, self.shots, self.tag = base, shots, tag
        self.driver.get(base + "/")

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def by_id(self, id_):
        return self.driver.find_element("id", id_)

    def wait(self, what, timeout=60, poll=0.1):
        """Waits until what() is truthy; returns its value, or None on timeout."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                v = what()
                if v:
                    return v
            except Exception:  # noqa: BLE001 - the page is still changing
                pass
            time.sleep(poll)
        return None

    def row_text(self, name):
        """The text of the adapters table's row of name, or None."""
        return self.js("""const r = Array.from(document.querySelectorAll('#adapters-body tr'))
                            .find(r => r.dataset.name === arguments[0]); return r ? r.innerText : null;""", name)

    def tab(self, name):
        self.by_id("tab-" + name).click()

    def shot(self, panel):
        path = os.path.join(self.shots, "%s-%s.png" % (self.tag, panel))
        self.js("window.scrollTo(0, 0)")
        # the whole page, not just the viewport
        h = int(self.js("return Math.max(document.documentElement.scrollHeight, window.innerHeight)"))
        w = int(self.js("return window.innerWidth"))
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": w, "height": min(h, 4000), "deviceScaleFactor": 1, "mobile": w < 600})
        self.driver.save_screenshot(path)
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": w, "height": self.height, "deviceScaleFactor": 1, "mobile": w < 600})
        return path

    def console_errors(self):
        return [e for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"
                and "401" not in e.get("message", "")]

    def no_sideways_scroll(self):
        return self.js("return document.documentElement.scrollWidth <= window.innerWidth + 1")

    def close(self):
        self.driver.quit()


def browser_flow(svc, work, width, height, keys, name, evaluate):
    tag = "%dx%d" % (width, height)
    shots = os.path.join(BUILD, "console-screenshots")
    os.makedirs(shots, exist_ok=True)
    acme = keys[0]
    page = Page(svc.base, width, height, shots, tag)
    page.height = height
    d = page.driver
    try:
        check(tag + ": the page loads with its script", page.wait(lambda: page.js(
            "return document.querySelector('#loss-chart').dataset.points === '0'"), 20), d.title)
        # ---- keyboard and labels --------------------------------------------------------------
        unlabeled = page.js("""
            return Array.from(document.querySelectorAll('input, select, textarea, button'))
              .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
              .map(e => e.id || e.outerHTML.slice(0, 80));""")
        check(tag + ": every control has a label", unlabeled == [], unlabeled)
        page.by_id("tab-new").click()
        from selenium.webdriver.common.keys import Keys
        page.by_id("tab-new").send_keys(Keys.ARROW_RIGHT)
        moved = page.js("return document.activeElement.id") == "tab-training" and \
            page.by_id("tab-training").get_attribute("aria-selected") == "true" and \
            page.by_id("panel-training").is_displayed()
        d.switch_to.active_element.send_keys(Keys.END)
        moved = moved and page.js("return document.activeElement.id") == "tab-evaluation"
        d.switch_to.active_element.send_keys(Keys.HOME)
        moved = moved and page.js("return document.activeElement.id") == "tab-new"
        check(tag + ": arrow keys, Home and End move between the tabs", moved, "")
        # ---- a wrong key ------------------------------------------------------------------------
        page.by_id("key-input").send_keys("fl_" + "0" * 40 + Keys.ENTER)
        msg = page.wait(lambda: page.by_id("key-message").is_displayed() and page.by_id("key-message").text, 15)
        check(tag + ": a wrong key shows a clear message", msg and "refused" in msg and "key" in msg, msg)
        page.shot("wrong-key")
        # ---- the right key ------------------------------------------------------------------------
        page.by_id("key-input").clear()
        page.by_id("key-input").send_keys(acme + Keys.ENTER)
        st = page.wait(lambda: "accepted" in page.by_id("key-status").text and page.by_id("key-status").text, 15)
        check(tag + ": the key is accepted and the message goes", st and not page.by_id("key-message").is_displayed(), st)
        check(tag + ": the key is kept in session storage only",
              page.js("return sessionStorage.getItem('flashlora.key')") == acme and
              page.js("return localStorage.length") == 0 and acme not in d.current_url, "")
        # ---- a rejected upload --------------------------------------------------------------------
        few = os.path.join(work, "few.zip")
        make_zip(few, image_files(work, 2) + BAD_FILES)
        page.by_id("pick-files").send_keys(few)
        err = page.wait(lambda: page.by_id("train-error").is_displayed() and page.by_id("train-error").text, 20)
        reasons = page.js("return Array.from(document.querySelectorAll('#set-rejected li')).map(l => l.textContent)")
        check(tag + ": a rejected set says why, and cannot be submitted",
              err and "usable image" in err and not page.by_id("train-submit").is_enabled(), err)
        check(tag + ": each rejected file is shown with its reason", len(reasons) == 2 and
              any("notes.pdf" in r and "PDF" in r for r in reasons) and any("broken.png" in r for r in reasons), reasons)
        # ---- the upload -------------------------------------------------------------------------------
        good = os.path.join(work, "good.zip")
        make_zip(good, image_files(work, 5) + BAD_FILES)
        page.by_id("pick-files").send_keys(good)
        ready = page.wait(lambda: page.by_id("train-submit").is_enabled(), 20)
        thumbs = page.js("return Array.from(document.querySelectorAll('#set-images img')).filter(i => i.naturalWidth > 0).length")
        rejected = page.js("return document.querySelectorAll('#set-rejected li').length")
        check(tag + ": a good zip: thumbnails of its images, its two rejected files, ready to train",
              ready and thumbs == 5 and rejected == 2 and not page.by_id("train-error").is_displayed(),
              (thumbs, rejected, page.by_id("set-status").text))
        page.by_id("train-trigger").send_keys("sks")
        page.by_id("train-name").send_keys(name)
        for field, value in (("train-steps", "30"), ("train-rank", "4"), ("train-resolution", "16")):
            page.by_id(field).clear()
            page.by_id(field).send_keys(value)
        page.shot("new-adapter")
        before = page.by_id("job-view").get_attribute("data-job")
        page.by_id("train-submit").click()
        # ---- training -----------------------------------------------------------------------------------
        # the job submitted now (the view may have shown an earlier one), followed to its end
        done = page.wait(lambda: page.js("""
            const v = document.getElementById('job-view'), s = document.getElementById('job-state').dataset.state;
            return v.dataset.job && v.dataset.job !== arguments[0] && !v.hidden &&
                   ['succeeded', 'failed', 'canceled'].includes(s) ? s : null;""", before), 90)
        points = int(page.by_id("loss-chart").get_attribute("data-points") or 0)
        drawn = page.js("""
            const c = document.getElementById('loss-chart'), g = c.getContext('2d');
            const px = g.getImageData(0, 0, c.width, c.height).data; let blue = 0;
            for (let i = 0; i < px.length; i += 4) if (px[i + 2] > 150 && px[i] < 80) blue++;
            return blue;""")
        check(tag + ": the training is followed to succeeded", done == "succeeded" and
              page.by_id("panel-training").is_displayed(), (done, page.by_id("job-message").text))
        check(tag + ": the loss curve is drawn from the progress events", points >= 2 and drawn > 50, (points, drawn))
        check(tag + ": step and loss shown", page.by_id("job-step").text.startswith("30 / 30") and
              page.by_id("job-loss").text not in ("", "–"), page.by_id("job-step").text)
        previews = page.wait(lambda: page.js("""
            const imgs = Array.from(document.querySelectorAll('#job-previews img'));
            return imgs.length === 8 && imgs.every(i => i.naturalWidth === 16) ?
                   Array.from(document.querySelectorAll('#job-previews figcaption')).map(c => c.textContent) : null;"""), 20)
        check(tag + ": the preview images of four rounds are shown with their steps (8 of 16x16)",
              previews == ["step 8"] * 2 + ["step 16"] * 2 + ["step 24"] * 2 + ["step 30"] * 2, previews)
        page.shot("training")
        # ---- adapters ---------------------------------------------------------------------------------------
        page.tab("adapters")
        text = page.wait(lambda: page.row_text(name), 20) or ""
        check(tag + ": the new adapter is listed with its trigger, rank and training loss",
              text and "sks" in text and "4" in text and any(ch.isdigit() for ch in text.split("Training loss")[-1]), text)
        check(tag + ": another tenant's adapter never appears", "globex-secret" not in d.page_source, "")
        page.shot("adapters")
        # ---- playground -------------------------------------------------------------------------------------
        page.tab("playground")
        for field, value in (("gen-width", "16"), ("gen-height", "16"), ("gen-steps", "4"), ("gen-seed", "7")):
            page.by_id(field).clear()
            page.by_id(field).send_keys(value)
        box = page.wait(lambda: [b for b in d.find_elements("css selector", "#gen-adapters input[type=checkbox]")
                                 if b.get_attribute("value") and
                                 name in b.find_element("xpath", "../label").text], 10)
        if not check(tag + ": the adapter can be chosen in the playground", box, ""):
            return
        box[0].click()
        page.by_id("gen-submit").click()
        images = page.wait(lambda: page.js("""
            const row = document.querySelector('#gen-results .results-row');
            if (!row || row.querySelector('.pending')) return 0;
            const imgs = Array.from(row.querySelectorAll('img'));
            return imgs.length && imgs.every(i => i.complete && i.naturalWidth === 16) ? imgs.length : 0;"""), 60)
        titles = page.js("return Array.from(document.querySelectorAll('#gen-results .results-row h3')).map(h => h.textContent)")
        check(tag + ": the adapter's image and the base model's, same seed, side by side",
              images == 2 and name in titles[0] and "base model" in titles[1],
              (images, titles, page.by_id("gen-error").text))
        page.shot("playground")
        # ---- evaluation -----------------------------------------------------------------------------------------
        if evaluate:
            page.tab("evaluation")
            boxes = [b for b in d.find_elements("css selector", "#eval-adapters input[type=checkbox]")
                     if name in b.find_element("xpath", "../label").text]
            if not check(tag + ": the adapter can be chosen for an evaluation", boxes, ""):
                return
            boxes[0].click()
            for field, value in (("eval-size", "8"), ("eval-steps", "1"), ("eval-seeds", "1")):
                page.by_id(field).clear()
                page.by_id(field).send_keys(value)
            page.by_id("eval-submit").click()
            shown = page.wait(lambda: page.by_id("eval-report").is_displayed() or page.by_id("eval-error").is_displayed(), 90)
            rows = page.js("return Array.from(document.querySelectorAll('#eval-body tr')).map(r => r.textContent)")
            check(tag + ": an evaluation runs and its scores are shown", shown and len(rows) == 1 and name in rows[0],
                  (rows, page.by_id("eval-error").text))
            pictures = page.wait(lambda: page.js("""
                const imgs = Array.from(document.querySelectorAll('#eval-images img'));
                return imgs.length >= 3 && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : 0;"""), 20)
            check(tag + ": the evaluation's references, adapter and base images are shown", pictures, "")
            page.shot("evaluation")
        else:
            page.tab("evaluation")
            page.shot("evaluation")
        # ---- import ---------------------------------------------------------------------------------------------------
        if evaluate:
            page.tab("adapters")
            lora = os.path.join(work, "import.safetensors")
            sc.write_lora(lora, MODEL, seed=11)
            page.by_id("import-file").send_keys(lora)
            page.by_id("import-name").send_keys("imported-" + name)
            page.by_id("import-trigger").send_keys("imp")
            page.by_id("import-submit").click()
            text = page.wait(lambda: page.row_text("imported-" + name), 20)
            check(tag + ": an adapter file imported by upload is listed", text and "imp" in text,
                  (page.by_id("import-status").text, page.by_id("adapters-error").text))
        # ---- delete -------------------------------------------------------------------------------------------------
        page.tab("adapters")
        if not check(tag + ": the adapter is still listed before its deletion", page.wait(lambda: page.row_text(name), 10), ""):
            return
        time.sleep(0.3)  # the list the tab asked for is in
        delete = "#adapters-body tr[data-name='%s'] button.danger" % name
        d.find_element("css selector", delete).click()
        armed = d.find_element("css selector", delete).text
        d.find_element("css selector", delete).click()
        gone = page.wait(lambda: page.row_text(name) is None, 20)
        r = sc.request(svc.base, "GET", "/v1/adapters/" + name, acme)
        check(tag + ": delete asks once more, then the adapter is gone (404 in the API)",
              armed == "Confirm delete" and gone and r.status == 404, (armed, r.status))
        # ---- cancel ---------------------------------------------------------------------------------------------------
        if evaluate:
            page.tab("new")
            page.by_id("pick-files").send_keys(good)
            page.wait(lambda: page.by_id("train-submit").is_enabled(), 20)
            page.by_id("train-trigger").send_keys("sks")
            for field, value in (("train-steps", "5000"), ("train-rank", "2"), ("train-resolution", "16")):
                page.by_id(field).clear()
                page.by_id(field).send_keys(value)
            before = page.by_id("job-view").get_attribute("data-job")
            page.by_id("train-submit").click()
            running = page.wait(lambda: page.js("""
                const v = document.getElementById('job-view');
                return v.dataset.job !== arguments[0] && Number(document.getElementById('loss-chart').dataset.points) > 0;""",
                before), 60)
            page.by_id("job-cancel").click()
            state = page.wait(lambda: page.by_id("job-state").get_attribute("data-state") == "canceled" and "canceled", 60)
            check(tag + ": a running training is canceled from its panel", running and state == "canceled",
                  (running, page.by_id("job-state").text, page.by_id("job-message").text))
        check(tag + ": another tenant's job never appears", keys[2] not in d.page_source, "")
        # ---- layout ---------------------------------------------------------------------------------------------------
        sideways = []
        for panel in ("new", "training", "adapters", "playground", "evaluation"):
            page.tab(panel)
            if not page.no_sideways_scroll():
                sideways.append(panel)
        check(tag + ": no panel scrolls sideways", sideways == [], sideways)
        # ---- forgetting the key clears what the tenant's key showed ------------------------------------------------
        page.by_id("key-forget").click()
        cleared = page.wait(lambda: page.js("""
            return !sessionStorage.getItem('flashlora.key') &&
                   document.querySelectorAll('#adapters-body tr, #gen-results *, #set-images li').length === 0 &&
                   document.getElementById('job-view').hidden &&
                   !document.getElementById('job-select').textContent.includes('logo');"""), 10)
        check(tag + ": forgetting the key clears the page of the tenant's things", cleared, "")
        errors = page.console_errors()
        check(tag + ": no script errors in the browser's console", errors == [], errors)
    finally:
        page.close()


def browser_checks(svc, work):
    acme, globex = svc.key("acme"), svc.key("globex")
    # another tenant's adapter and job, which must never show
    lora = os.path.join(work, "globex.safetensors")
    sc.write_lora(lora, MODEL, seed=3)
    with open(lora, "rb") as f:
        body, ctype = sc.multipart({"name": "globex-secret"}, {"file": ("g.safetensors", f.read())})
    r = sc.request(svc.base, "POST", "/v1/adapters", globex, body, {"Content-Type": ctype})
    assert r.status == 201, r.body
    r = sc.request(svc.base, "POST", "/v1/generations", globex, {"prompt": "secret", "width": 16, "height": 16,
                                                                "steps": 2, "sync": True})
    globex_job = r.json()["job_id"]
    browser_flow(svc, work, 1280, 800, (acme, globex, globex_job), "logo-wide", evaluate=True)
    browser_flow(svc, work, 390, 844, (acme, globex, globex_job), "logo-phone", evaluate=False)


def main():
    if MODE == "--browser":
        missing = browser_available()
        if missing:
            print("skipped: " + missing)
            return 77
    work = tempfile.mkdtemp(prefix="flashlora-console-")
    svc = sc.Service(BIN, MODEL, os.path.join(work, "state"), ["--workers", "1", "--batch-wait-ms", "5"])
    t0 = time.time()
    try:
        if MODE == "--api":
            api_checks(svc, work)
        else:
            browser_checks(svc, work)
    finally:
        if svc.proc.poll() is None:
            code = svc.stop()
            check("the service stops cleanly (exit 0: no leak or error a sanitizer found)", code == 0, code)
        if check.failed:
            path = os.path.join(work, "state.serve.log")
            if os.path.exists(path):
                print("---- serve log (last lines)")
                with open(path, errors="replace") as f:
                    print("".join(f.readlines()[-30:]))
        shutil.rmtree(work, ignore_errors=True)
    print("%.0f s" % (time.time() - t0))
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
