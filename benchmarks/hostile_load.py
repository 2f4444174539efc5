"""Hostile load on loopback: every attack the service must survive, at once, for a bounded time,
while a brand team's flow (upload an image set, train, follow the events, generate with the new
adapter) runs beside it against the real `flashlora serve` (private redis-server, in-process
worker).

  hostile_load.py FLASHLORA SOURCE_DIR [--duration 300] [--rss-bound-mb 512] [--model PATH]

Attacks (each a thread looping until the end, all against 127.0.0.x only):
  flood        multipart bodies of 300,000 one-byte parts without a key (401 from the head)
  parts        a keyed form of 50,000 parts (413)
  slowloris    25 sockets from other loopback addresses trickling their headers
  heads        malformed heads, two Content-Lengths, HEAD, a far too long URL
  memory       a training of resolution 1024 x batch 16 and a 1024^2 x 100 steps x 8 images
               generation (422 before they run)
  bomb         five 7000x7000 PNGs in a small zip (checked from their headers at once; the worker
               decodes one at a time and shrinks it as it decodes)
  url          adapter imports from an endless URL and from one that trickles (jobs that fail
               at the size cap or the time limit; no request thread held)
  quota        one tenant filling the queue (429 naming its quota) and canceling what it queued
  events       event streams of finished jobs with a far-future Last-Event-ID (they end)
  redis        the private redis-server killed with SIGKILL once, a third of the way in
The brand flow must succeed every time (a 503 while Redis restarts is retried), every job answered
202 must end (nothing accepted is lost), and the serve process's peak RSS (VmHWM) must stay under
--rss-bound-mb. Prints the figures; the last line is "N passed, N failed".
"""

import argparse
import base64
import collections
import concurrent.futures
import http.server
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "serve"))
import service_client as sc  # noqa: E402

stats = collections.Counter()
stats_lock = threading.Lock()
problems = []


def count(name, n=1):
    with stats_lock:
        stats[name] += n


def problem(text):
    with stats_lock:
        problems.append(text)
    print("PROBLEM " + text, flush=True)


def vm(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


# ---- inputs -----------------------------------------------------------------------------------------


def png(width, height, pixel=b"\xff\xff\xff"):
    raw = zlib.compress((b"\x00" + pixel * width) * height, 9)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def bomb_zip():
    one = png(7000, 7000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i in range(5):
            z.writestr("bomb%d.png" % i, one)
    return buf.getvalue()


def brand_zip(source, work, count_images=6):
    images = os.path.join(work, "brand-images")
    subprocess.check_call([sys.executable, os.path.join(source, "tests/trainer/make_images.py"), images,
                           str(count_images)])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in sorted(os.listdir(images)):
            z.write(os.path.join(images, name), name)
    return buf.getvalue()


class HostileFiles(http.server.BaseHTTPRequestHandler):
    """/endless streams zeros forever; /slow sends a byte a second."""

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        try:
            if self.path.startswith("/endless"):
                block = b"\0" * 65536
                while True:
                    self.wfile.write(block)
            else:
                for _ in range(600):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(1)
        except OSError:
            pass


# ---- the attacks ------------------------------------------------------------------------------------


def raw_request(port, data, source="127.0.0.1", timeout=30, body=b""):
    """Sends a head (and then a body, unless the answer came first); returns the status of the
    answer (0 when the server closed without one)."""
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(data)
        if body:
            s.settimeout(2)
            try:
                early = s.recv(4096, socket.MSG_PEEK)
            except socket.timeout:
                early = b""
            s.settimeout(timeout)
            if not early:
                s.sendall(body)
        s.shutdown(socket.SHUT_WR)
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        parts = head.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except OSError:
        return 0
    finally:
        s.close()


def attack_flood(ctx):
    boundary = b"x"
    body = b"".join(b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n" for _ in range(300000)) + b"--x--\r\n"
    head = (b"POST /v1/trainings HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=" + boundary
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    while not ctx.done():
        status = raw_request(ctx.port, head, body=body)
        count("flood %d" % status)
        if status != 401:
            problem("flood without a key answered %d" % status)


def attack_parts(ctx):
    fields = {"f%d" % i: "1" for i in range(50000)}
    body, ctype = sc.multipart(fields, {})
    while not ctx.done():
        r = ctx.call("POST", "/v1/trainings", ctx.tenant("parts"), body, {"Content-Type": ctype})
        count("parts %d" % r.status)
        if r.status not in (413, 503, 429):
            problem("a form of 50,000 parts answered %d" % r.status)


def attack_slowloris(ctx):
    while not ctx.done():
        socks = []
        for i in range(25):
            s = socket.socket()
            try:
                s.bind(("127.0.0.%d" % (2 + i % 5), 0))
                s.connect(("127.0.0.1", ctx.port))
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                socks.append(s)
            except OSError:
                s.close()
        for _ in range(30):
            if ctx.done():
                break
            for s in socks:
                try:
                    s.sendall(b"X-a: b\r\n")
                except OSError:
                    pass
            time.sleep(1)
        for s in socks:
            s.close()
        count("slowloris rounds")


def attack_heads(ctx):
    heads = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/3.0\r\nHost: x\r\n\r\n",
        b"HEAD /v1/adapters HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    while not ctx.done():
        for h in heads:
            status = raw_request(ctx.port, h, timeout=10)
            count("heads %d" % status)
            if status >= 500 and status != 505 and status != 503:
                problem("a malformed head answered %d" % status)
        time.sleep(0.2)


def attack_memory(ctx):
    big_train, ctype = sc.multipart({"trigger_word": "sks", "resolution": "1024", "batch_size": "16", "steps": "10"},
                                    {"images": ("set.zip", ctx.brand_zip)})
    big_gen = {"prompt": "x", "width": 1024, "height": 1024, "steps": 100, "num_images": 8}
    while not ctx.done():
        r = ctx.call("POST", "/v1/trainings", ctx.tenant("memory"), big_train, {"Content-Type": ctype})
        count("memory train %d" % r.status)
        if r.status not in (422, 503):
            problem("a 1024 x batch 16 training answered %d" % r.status)
        r = ctx.call("POST", "/v1/generations", ctx.tenant("memory"), big_gen)
        count("memory generate %d" % r.status)
        if r.status not in (422, 503):
            problem("a 1024^2 x 100 x 8 generation answered %d" % r.status)
        time.sleep(0.5)


def attack_bomb(ctx):
    body, ctype = sc.multipart({"trigger_word": "sks", "steps": "5"}, {"images": ("bomb.zip", ctx.bomb)})
    while not ctx.done():
        t0 = time.time()
        r = ctx.call("POST", "/v1/trainings", ctx.tenant("bomb"), body, {"Content-Type": ctype})
        count("bomb %d" % r.status)
        if time.time() - t0 > 5:
            problem("an image bomb held its request %.1f s" % (time.time() - t0))
        if r.status == 202:  # valid images, only large: the worker decodes them one at a time, shrunk
            ctx.accepted(ctx.tenant("bomb"), r.json()["job_id"])
        elif r.status not in (400, 413, 422, 429, 503):
            problem("an image bomb answered %d" % r.status)
        time.sleep(1)


def attack_url(ctx):
    while not ctx.done():
        for path in ("/endless", "/slow"):
            t0 = time.time()
            r = ctx.call("POST", "/v1/adapters", ctx.tenant("url"), {"url": ctx.files + path, "name": "u%d" % time.time_ns()})
            count("url %d" % r.status)
            if time.time() - t0 > 5:
                problem("an adapter URL held the request %.1f s" % (time.time() - t0))
            if r.status == 202:
                ctx.accepted(ctx.tenant("url"), r.json()["job_id"])
            elif r.status not in (400, 429, 503):
                problem("an adapter URL import answered %d" % r.status)
        time.sleep(3)


def attack_quota(ctx):
    while not ctx.done():
        ids = []
        for i in range(40):
            r = ctx.call("POST", "/v1/generations", ctx.tenant("quota"),
                         {"prompt": "flood %d" % i, "width": ctx.size, "height": ctx.size, "steps": 2})
            count("quota %d" % r.status)
            if r.status == 202:
                ids.append(r.json()["job_id"])
                ctx.accepted(ctx.tenant("quota"), ids[-1])
            elif r.status == 429:
                break
            elif r.status != 503:
                problem("queue flood answered %d" % r.status)
        for job in ids[::2]:
            r = ctx.call("POST", "/v1/jobs/" + job + "/cancel", ctx.tenant("quota"))
            count("cancel %d" % r.status)
            if r.status not in (200, 202, 409, 503):
                problem("cancel answered %d" % r.status)
        time.sleep(1)


def attack_events(ctx):
    while not ctx.done():
        done = ctx.finished_job()
        if done:
            t0 = time.time()
            try:
                req = sc.urllib.request.Request(ctx.base + "/v1/jobs/%s/events" % done[1],
                                                headers={"Authorization": "Bearer " + done[0],
                                                         "Last-Event-ID": "99999999999999-0"})
                with sc.urllib.request.urlopen(req, timeout=20) as r:
                    r.read()
                count("events ended")
            except Exception as e:  # noqa: BLE001 - a timeout is the failure being looked for
                if time.time() - t0 >= 19:
                    problem("an event stream of a finished job did not end: %s" % e)
        time.sleep(1)


def attack_redis(ctx):
    deadline = ctx.start + ctx.duration / 3
    while time.time() < deadline and not ctx.done():
        time.sleep(0.5)
    if ctx.done():
        return
    for pid in sc.child_pids(ctx.svc.proc.pid, "redis-server"):
        os.kill(pid, signal.SIGKILL)
        count("redis killed")


# ---- the brand team ---------------------------------------------------------------------------------


def brand_flow(ctx):
    n = 0
    while not ctx.done():
        n += 1
        form = {"trigger_word": "sks", "steps": 20, "rank": 4, "resolution": ctx.size, "learning_rate": "0.001",
                "name": "brand-%d" % n}
        body, ctype = sc.multipart(form, {"images": ("set.zip", ctx.brand_zip)})
        r = ctx.call("POST", "/v1/trainings", ctx.brand, body, {"Content-Type": ctype}, retry=True)
        if r.status != 202:
            problem("brand training answered %d: %s" % (r.status, r.body[:200]))
            continue
        job = r.json()["job_id"]
        ctx.accepted(ctx.brand, job)
        t0 = time.time()
        final = ctx.wait(ctx.brand, job, timeout=600)
        if not final or final.get("state") != "succeeded":
            problem("brand training ended %s" % (final and final.get("state")))
            continue
        adapter = final["result"]["adapter_id"]
        gen = {"prompt": "a mug with the sks logo", "adapters": [{"id": adapter, "scale": 1.0}],
               "width": ctx.size, "height": ctx.size, "steps": 4, "seed": n, "sync": True}
        r = ctx.call("POST", "/v1/generations", ctx.brand, gen, retry=True)
        if r.status != 200:
            problem("brand generation answered %d: %s" % (r.status, r.body[:200]))
            continue
        image = r.json()["images"][0]
        try:
            w, h, _ = sc.png_decode(base64.b64decode(image["png_base64"]))
            ok = (w, h) == (ctx.size, ctx.size)
        except Exception:  # noqa: BLE001
            ok = False
        if not ok:
            problem("brand generation did not return a %dx%d PNG" % (ctx.size, ctx.size))
            continue
        count("brand flows")
        with stats_lock:
            ctx.flow_seconds.append(time.time() - t0)


# ---- the run ----------------------------------------------------------------------------------------


class Context:
    def __init__(self, args, svc, work):
        self.args, self.svc = args, svc
        self.base = svc.base
        self.port = int(svc.base.rsplit(":", 1)[1])
        self.start, self.duration = time.time(), args.duration
        self.size = args.size
        self.accepted_jobs = []
        self.flow_seconds = []
        self.lock = threading.Lock()
        self.tenants = {}

    def tenant(self, name):
        """A key of the attacker tenant of one attack (quotas are per tenant: one attack's full
        queue must not hide another's answer)."""
        with self.lock:
            if name not in self.tenants:
                self.tenants[name] = self.svc.key("attacker-" + name)
            return self.tenants[name]

    def done(self):
        return time.time() - self.start >= self.duration

    def call(self, method, path, key, body=None, headers=None, retry=False):
        for attempt in range(60 if retry else 1):
            try:
                r = sc.request(self.base, method, path, key, body, headers, timeout=60)
            except Exception as e:  # noqa: BLE001 - a reset connection under load
                r = sc.Response(0, {}, str(e).encode())
            if not retry or r.status not in (0, 503):
                return r
            time.sleep(0.5)
        return r

    def accepted(self, key, job):
        with self.lock:
            self.accepted_jobs.append((key, job))

    def finished_job(self):
        with self.lock:
            jobs = list(self.accepted_jobs[-20:])
        for key, job in reversed(jobs):
            r = self.call("GET", "/v1/jobs/" + job, key)
            if r.status == 200 and r.json().get("state") in ("succeeded", "failed", "canceled"):
                return key, job
        return None

    def wait(self, key, job, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.call("GET", "/v1/jobs/" + job, key)
            if r.status == 200 and r.json().get("state") in ("succeeded", "failed", "canceled"):
                return r.json()
            time.sleep(0.25)
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("source")
    ap.add_argument("--duration", type=float, default=300)
    ap.add_argument("--rss-bound-mb", type=int, default=512)
    ap.add_argument("--model", default=None)
    ap.add_argument("--size", type=int, default=16, help="image size of the brand flow")
    args = ap.parse_args()
    model = args.model or os.path.join(args.source, "tests/fixtures/flux_b.model.safetensors")
    work = tempfile.mkdtemp(prefix="flashlora-hostile-")
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HostileFiles)
    files.daemon_threads = True
    threading.Thread(target=files.serve_forever, daemon=True).start()
    svc = sc.Service(args.binary, model, os.path.join(work, "state"),
                     ["--workers", "1", "--max-connections", "20", "--allow-private-urls", "--claim-timeout", "5",
                      "--max-queue-per-tenant", "16", "--max-adapter-bytes", str(64 << 20), "--max-resolution",
                      "1024"])
    ctx = Context(args, svc, work)
    ctx.files = "http://127.0.0.1:%d" % files.server_address[1]
    ctx.brand = svc.key("brand")
    for name in ("parts", "memory", "bomb", "url", "quota"):
        ctx.tenant(name)
    ctx.brand_zip = brand_zip(args.source, work)
    ctx.bomb = bomb_zip()
    base_rss = vm(svc.proc.pid, "VmRSS")
    attacks = [attack_flood, attack_parts, attack_slowloris, attack_heads, attack_memory, attack_bomb, attack_url,
               attack_quota, attack_events, attack_redis]
    health = []

    def poll_health(_ctx):
        while not ctx.done():
            t0 = time.time()
            r = ctx.call("GET", "/healthz", None)
            health.append((r.status, time.time() - t0))
            time.sleep(1)

    print("hostile load: %d s, serve pid %d, base RSS %d MiB" % (args.duration, svc.proc.pid, base_rss), flush=True)
    passed = failed = 0
    try:
        with concurrent.futures.ThreadPoolExecutor(len(attacks) + 2) as pool:
            futures = [pool.submit(f, ctx) for f in attacks + [brand_flow, poll_health]]
            for f in futures:
                try:
                    f.result()
                except Exception as e:  # noqa: BLE001
                    problem("%s raised %r" % (f, e))
        # Nothing accepted is lost: every job answered 202 ends.
        lost = []
        for key, job in ctx.accepted_jobs:
            final = ctx.wait(key, job, timeout=120)
            if not final:
                lost.append(job)
        alive = svc.proc.poll() is None
        peak = vm(svc.proc.pid, "VmHWM")
        slow_health = max((t for s, t in health if s == 200), default=float("nan"))
        ok_health = sum(1 for s, _ in health if s == 200)
        flows = stats["brand flows"]
        print("figures:")
        print("  serve peak RSS (VmHWM) %d MiB (bound %d MiB), base %d MiB" % (peak, args.rss_bound_mb, base_rss))
        print("  brand flows completed %d, mean %.1f s" % (flows, sum(ctx.flow_seconds) / max(1, len(ctx.flow_seconds))))
        print("  jobs accepted %d, not ended %d" % (len(ctx.accepted_jobs), len(lost)))
        print("  /healthz answered 200 %d of %d polls, slowest %.3f s" % (ok_health, len(health), slow_health))
        for name in sorted(stats):
            print("  %-28s %d" % (name, stats[name]))
        checks = [
            ("the serve process is alive", alive),
            ("peak RSS under %d MiB" % args.rss_bound_mb, 0 < peak < args.rss_bound_mb),
            ("the brand flow succeeded at least once", flows >= 1),
            ("nothing accepted is lost", not lost),
            ("no attack got an answer it should not", not problems),
        ]
        for name, ok in checks:
            print(("ok   " if ok else "FAIL ") + name)
            passed += ok
            failed += not ok
        if problems:
            for p in problems[:20]:
                print("  " + p)
    finally:
        if svc.proc.poll() is None:
            svc.stop()
        files.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
