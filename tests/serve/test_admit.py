"""Admission and bounded inputs of the service, against the real `flashlora serve` binary, its private
redis-server and real HTTP on loopback.

  test_admit.py FLASHLORA SOURCE_DIR [MODEL]

Covers: a training whose activations cannot fit (resolution 1024, batch 16) refused with 422 naming
--max-job-memory and the figure, and, admitted anyway under a huge limit, failing its job with
out_of_memory while the process lives on; work limits (a 1024x1024, 100-step, 8-image generation and
an oversized training refused, naming the limit); training targets checked at the API; image bombs
(five 7000x7000 PNGs in a small zip) validated from headers with the serve process's peak RSS
barely moving, a truncated PNG claiming 7000x7000 refused, top-down BMPs accepted and trained on;
adapter URLs: malformed ones 400, imports as jobs (202) whose failure names the reason (a host that
does not resolve), an endless body streamed to disk and cut at --max-adapter-bytes without the
process growing, a slow server no longer holding the request; adapters with NaN weights and
oversized metadata refused; list pages bounded by --max-page-bytes; uploads stored under a name
from the archive's detected kind; no server path in any error a client sees. Ends with
"N passed, N failed".
"""

import http.server
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import service_client as sc  # noqa: E402

BIN, SRC = sys.argv[1], sys.argv[2]
# the base model: argument 3 (the release build passes the embedded default), else the tiny test model
MODEL = sys.argv[3] if len(sys.argv) > 3 else os.path.join(SRC, "tests/fixtures/flux_b.model.safetensors")
check = sc.Checks()


def png(width, height, rows=None, idat=None):
    """An 8-bit RGB PNG; rows of zeros (compressed once) unless idat is given."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    if idat is None:
        comp = zlib.compressobj(9)
        row = b"\x00" * (1 + 3 * width)
        idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def bmp(width, height, top_down, pixel):
    """A 24-bit BMP; pixel(x, y) -> (r, g, b) with y = 0 the top row."""
    stride = (width * 3 + 3) // 4 * 4
    rows = []
    for y in range(height):
        row = bytearray()
        for x in range(width):
            r, g, b = pixel(x, y)
            row += bytes((b, g, r))
        rows.append(bytes(row) + b"\x00" * (stride - 3 * width))
    data = b"".join(rows if top_down else reversed(rows))
    header = struct.pack("<IiiHHIIiiII", 40, width, -height if top_down else height, 1, 24, 0, len(data), 2835, 2835,
                         0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(data), 0, 0, 54) + header + data


def zip_of(files, compress=zipfile.ZIP_DEFLATED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as z:
        for name, data in files:
            z.writestr(name, data)
    return buf.getvalue()


def good_images(work, count=6):
    images = os.path.join(work, "images")
    if not os.path.isdir(images):
        subprocess.check_call([sys.executable, os.path.join(SRC, "tests/trainer/make_images.py"), images, str(count)])
    out = []
    for name in sorted(os.listdir(images)):
        with open(os.path.join(images, name), "rb") as f:
            out.append((name, f.read()))
    return out


def lora_file(model_path, metadata=None, nan=False):
    """A rank-1 canonical LoRA on one Linear of the model, with extra metadata; a NaN in B if asked."""
    header = sc.safetensors_header(model_path)
    module = sorted(k[:-len(".weight")] for k, v in header.items()
                    if k.endswith(".weight") and isinstance(v, dict) and len(v["shape"]) == 2 and "blocks" in k)[0]
    out_dim, in_dim = header[module + ".weight"]["shape"]
    a = struct.pack("<%df" % in_dim, *([0.01] * in_dim))
    bvals = [0.02] * out_dim
    if nan:
        bvals[out_dim // 2] = float("nan")
    b = struct.pack("<%df" % out_dim, *bvals)
    tensors = {module + ".lora_A.weight": {"dtype": "F32", "shape": [1, in_dim], "data_offsets": [0, len(a)]},
               module + ".lora_B.weight": {"dtype": "F32", "shape": [out_dim, 1],
                                           "data_offsets": [len(a), len(a) + len(b)]}}
    meta = {"format": "canonical", "alpha": "1", "rank": "1"}
    meta.update(metadata or {})
    tensors["__metadata__"] = meta
    text = json.dumps(tensors).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + a + b


def upload_adapter(svc, key, data, name):
    body, ctype = sc.multipart({"name": name}, {"file": (name + ".safetensors", data)})
    return sc.request(svc.base, "POST", "/v1/adapters", key, body, {"Content-Type": ctype})


def train(svc, key, archive, filename="images.zip", **fields):
    form = {"trigger_word": "sks", "steps": 3, "rank": 2, "resolution": 16}
    form.update(fields)
    body, ctype = sc.multipart(form, {"images": (filename, archive)})
    return sc.request(svc.base, "POST", "/v1/trainings", key, body, {"Content-Type": ctype})


def error_of(r):
    try:
        return r.json()["error"]
    except Exception:  # noqa: BLE001
        return {"code": None, "message": r.body[:300]}


def peak_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def reset_peak(pid):
    """Sets the process's peak RSS back to its current RSS (Linux: clear_refs 5)."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def asan_env():
    """The serve process's environment: an allocation far beyond the machine returns NULL under
    AddressSanitizer too (as it does without it), instead of a report and an abort."""
    env = dict(os.environ)
    opts = env.get("ASAN_OPTIONS", "")
    env["ASAN_OPTIONS"] = (opts + ":" if opts else "") + "allocator_may_return_null=1"
    return env


class Endless(http.server.BaseHTTPRequestHandler):
    """/endless: bytes without end (no length); /slow: one byte every half second."""
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        chunk = b"\x00" * (1 << 16)
        try:
            if self.path.startswith("/slow"):
                for _ in range(600):
                    self.wfile.write(b"\x00")
                    self.wfile.flush()
                    time.sleep(0.5)
            else:
                while True:
                    self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def start_server(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, "http://127.0.0.1:%d" % server.server_address[1]


def stop(svc):
    """Stops a service; one that does not stop within a minute is killed, with its private Redis."""
    try:
        svc.stop()
    except subprocess.TimeoutExpired:
        check("the service stops on SIGTERM", False, "killed after 60 s")
        svc.proc.kill()
        svc.proc.wait()
        sock = os.path.join(svc.state, "redis")
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "redis-server" in cmd and sock in cmd:
                os.kill(int(pid), 9)


def no_server_path(text, state):
    return state not in text and os.path.realpath(state) not in text and "/uploads/" not in text


# ---- a CPU service with its defaults ----------------------------------------------------------------

def defaults_tests(work):
    state = os.path.join(work, "defaults")
    svc = sc.Service(BIN, MODEL, state, ["--workers", "1"])
    try:
        key = svc.key("acme")
        r = sc.request(svc.base, "POST", "/v1/generations", key,
                       {"prompt": "x", "width": 32, "height": 32, "steps": 4, "num_images": 2, "sync": True})
        check("a generation within the limits runs", r.status == 200 and len(r.json()["images"]) == 2, r.body[:300])

        # Training targets are checked against the model's Linears before anything runs.
        images = zip_of(good_images(work))
        for targets in ("^no_such_module$", "(unclosed"):
            r = train(svc, key, images, targets=targets)
            e = error_of(r)
            check("targets %r are refused at the API (400 naming the field)" % targets,
                  r.status == 400 and "'targets'" in e["message"], (r.status, e))
        r = train(svc, key, images, targets="attention", steps=2)
        check("valid targets are accepted", r.status == 202, r.body[:300])

        # Preview images count as work: 64x64 x 3000 steps fits the default --max-training-work
        # (16384000 pixel-steps), 20 rounds of 4 preview images of 20 steps each on top do not.
        r = train(svc, key, images, steps=3000, resolution=64, preview_every=150, preview_count=4)
        e = error_of(r)
        check("previews that push a training over --max-training-work are refused (422 naming them)",
              r.status == 422 and e["code"] == "limit_exceeded" and "1600 preview sampling steps" in e["message"]
              and "--max-training-work" in e["message"], (r.status, e))
        r = train(svc, key, images, steps=3000, resolution=64, preview_every=149, preview_count=1)
        e = error_of(r)
        check("21 preview rounds are refused (422 naming the smallest preview_every that fits)",
              r.status == 422 and "preview_every 150 or more" in e["message"], (r.status, e))

        # Top-down BMPs (negative height) are as valid as bottom-up ones.
        def pattern(i):
            return lambda x, y: ((x * 7 + i * 40) % 256, (y * 9) % 256, 128 if x < y else 30)
        bmps = [("td%d.bmp" % i, bmp(20, 12, True, pattern(i))) for i in range(4)]
        r = train(svc, key, zip_of(bmps), steps=2, name="topdown")
        job = sc.wait_job(svc.base, key, r.json()["job_id"], timeout=120) if r.status == 202 else {"r": r.body[:300]}
        check("a set of top-down BMPs trains", job.get("state") == "succeeded", job)

        # A truncated image that claims a large size is refused from its header and data length.
        liar = png(7000, 7000, idat=zlib.compress(b"\x00" * 4000))
        r = train(svc, key, zip_of(good_images(work)[:3] + [("big.png", liar)]))
        e = error_of(r)
        check("a PNG claiming 7000x7000 with a few bytes of data is refused as truncated",
              r.status == 400 and "big.png: truncated or corrupt image (7000x7000 needs at least" in e["message"], e)

        # URLs: malformed ones are 400, never 500.
        for url in ("http://[::1/a.safetensors", "http://:80/a.safetensors", "https://exa mple.com/a"):
            r = sc.request(svc.base, "POST", "/v1/adapters", key, {"url": url})
            check("a malformed adapter URL %r -> 400" % url, r.status == 400, (r.status, r.body[:200]))
        r = sc.request(svc.base, "POST", "/v1/trainings", key, {"images_url": "http://[::1/x.zip",
                                                                "trigger_word": "sks", "resolution": 16})
        check("a malformed images_url -> 400", r.status == 400, (r.status, r.body[:200]))
        # An import is a job: a host that does not resolve fails it with that reason.
        r = sc.request(svc.base, "POST", "/v1/adapters", key, {"url": "http://nonexistent-host.invalid/a.safetensors",
                                                               "name": "nowhere"})
        job = sc.wait_job(svc.base, key, r.json()["job_id"], timeout=120) if r.status == 202 else {"r": r.body[:300]}
        check("an import from a host that does not resolve is a job that fails with the reason, naming the host",
              r.status == 202 and job.get("state") == "failed" and job["error"]["code"] == "url_unreachable"
              and "resolve" in job["error"]["message"] and "nonexistent-host.invalid" in job["error"]["message"], job)

        # Adapters: NaN weights and oversized metadata are refused at import.
        r = upload_adapter(svc, key, lora_file(MODEL, nan=True), "nan")
        e = error_of(r)
        check("an adapter with a NaN weight is refused, naming the tensor",
              r.status == 400 and "lora_B.weight" in e["message"] and "NaN" in e["message"], (r.status, e))
        r = upload_adapter(svc, key, lora_file(MODEL, {"notes": "x" * 100000}), "fat")
        e = error_of(r)
        check("an adapter whose metadata is over --max-metadata-bytes is refused with the limit",
              r.status == 413 and "65536" in e["message"], (r.status, e))
        r = upload_adapter(svc, key, lora_file(MODEL, {"notes": "fine"}), "fine")
        check("a normal adapter still imports", r.status == 201, r.body[:300])

        # No server path in what a client sees: a failed upload write, a failed job.
        uploads = os.path.join(state, "uploads")
        os.rename(uploads, uploads + ".away")
        with open(uploads, "w") as f:
            f.write("not a folder")
        r = train(svc, key, images)
        e = error_of(r)
        check("a failed upload store answers without server paths",
              r.status >= 500 and no_server_path(e["message"], state), (r.status, e))
        os.unlink(uploads)
        os.rename(uploads + ".away", uploads)
        jobs_dir = os.path.join(state, "jobs")
        shutil.rmtree(jobs_dir, ignore_errors=True)
        with open(jobs_dir, "w") as f:
            f.write("not a folder")
        r = train(svc, key, images, steps=2)
        job = sc.wait_job(svc.base, key, r.json()["job_id"], timeout=120) if r.status == 202 else {"r": r.body[:300]}
        msg = json.dumps(job.get("error"))
        check("a job failing on a server file says so without its path",
              job.get("state") == "failed" and no_server_path(msg, state), job)
        os.unlink(jobs_dir)
        os.makedirs(jobs_dir)

        r = sc.request(svc.base, "POST", "/v1/generations", key,
                       {"prompt": "x", "width": 1024, "height": 1024, "steps": 100, "num_images": 8})
        check("a 1024x1024, 100-step, 8-image generation is refused by default on a CPU service",
              r.status in (400, 422), (r.status, r.body[:300]))
    finally:
        stop(svc)


# ---- limits raised to reach the memory estimate; API only ---------------------------------------------

def api_only_tests(work):
    state = os.path.join(work, "api")
    svc = sc.Service(BIN, MODEL, state, ["--workers", "0", "--max-resolution", "1024", "--max-training-work",
                                         str(1 << 40), "--max-page-bytes", "131072", "--max-train-queue-per-tenant",
                                         "0"])
    try:
        key = svc.key("acme")
        images = zip_of(good_images(work))
        r = train(svc, key, images, resolution=1024, batch_size=16)
        e = error_of(r)
        check("a 1024x1024 batch-16 training is refused (422) naming --max-job-memory and the figure",
              r.status == 422 and e["code"] == "limit_exceeded" and "--max-job-memory" in e["message"]
              and "GiB" in e["message"], (r.status, e))
        print("     (%s)" % e["message"])
        r = sc.request(svc.base, "GET", "/healthz")
        check("the service is alive after it", r.status == 200, r.status)
        r = sc.request(svc.base, "POST", "/v1/generations", key,
                       {"prompt": "x", "width": 1024, "height": 1024, "steps": 100, "num_images": 8})
        e = error_of(r)
        check("a 1024x1024, 100-step, 8-image generation -> 422 naming --max-generation-work and its work",
              r.status == 422 and "--max-generation-work" in e["message"] and "838860800" in e["message"], (r.status, e))
        r = sc.request(svc.base, "POST", "/v1/generations", key,
                       {"prompt": "x", "width": 64, "height": 64, "steps": 20, "num_images": 1})
        check("a small generation is still accepted", r.status == 202, r.body[:200])

        # Image bombs: five 7000x7000 PNGs (a small zip) are checked from their headers.
        bomb = png(7000, 7000)
        archive = zip_of([("bomb%d.png" % i, bomb) for i in range(5)], zipfile.ZIP_STORED)
        pid = svc.proc.pid
        resettable = reset_peak(pid)
        before = peak_kb(pid)
        t0 = time.time()
        r = train(svc, key, archive)
        seconds = time.time() - t0
        grew_mb = (peak_kb(pid) - before) / 1024
        print("     (bomb: %d KB zip, %.2f s, peak RSS +%.0f MB, %s)" % (len(archive) // 1024, seconds, grew_mb,
                                                                        "reset" if resettable else "not reset"))
        check("five 7000x7000 PNGs in a %d KB zip: answered (%d) without decoding (peak RSS +%.0f MB)"
              % (len(archive) // 1024, r.status, grew_mb), r.status in (202, 422) and grew_mb < 150, r.body[:300])

        # The upload is stored under a name from the archive's detected kind, not the client's.
        tgz = io.BytesIO()
        import tarfile
        with tarfile.open(fileobj=tgz, mode="w:gz") as t:
            for name, data in good_images(work):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        before = set(os.listdir(os.path.join(state, "uploads")))
        r1 = train(svc, key, tgz.getvalue(), filename="../../evil.php")
        r2 = train(svc, key, images, filename="pictures.tar.gz")
        after = sorted(set(os.listdir(os.path.join(state, "uploads"))) - before)
        check("uploads are named by job and detected kind (.tar.gz, .zip), whatever the client called them",
              r1.status == 202 and r2.status == 202 and
              after == sorted([r1.json()["job_id"] + ".tar.gz", r2.json()["job_id"] + ".zip"]), (after, r1.body[:200]))

        # A slow adapter URL no longer holds the request: the import is a job.
        server, url = start_server(Endless)
        try:
            t0 = time.time()
            r = sc.request(svc.base, "POST", "/v1/adapters", key, {"url": "http://example.com/slow.safetensors"})
            seconds = time.time() - t0
            check("an adapter URL import answers at once with a job (202 in %.2f s)" % seconds,
                  r.status == 202 and seconds < 3 and r.json()["job_id"].startswith("job_"), (r.status, r.body[:200]))
            r = sc.request(svc.base, "POST", "/v1/adapters", key, {"url": url + "/endless"})
            check("an adapter URL on loopback is still refused at once (400)", r.status == 400, r.body[:200])
        finally:
            server.shutdown()

        # Pages of the adapter list are bounded in bytes.
        ids = []
        for i in range(6):
            r = upload_adapter(svc, key, lora_file(MODEL, {"notes": ("%d" % i) * 50000}), "meta%d" % i)
            if r.status == 201:
                ids.append(r.json()["id"])
        check("six adapters with 50 KB of metadata each import", len(ids) == 6, ids)
        r = sc.request(svc.base, "GET", "/v1/adapters?limit=500", key)
        page = r.json()
        check("a list page stops at --max-page-bytes and says where to go on (%d items, %d bytes)"
              % (len(page["adapters"]), len(r.body)),
              r.status == 200 and 1 <= len(page["adapters"]) < 6 and page["next_offset"] == len(page["adapters"])
              and len(r.body) < 2 * 131072, (r.status, len(r.body), page.get("next_offset")))
        seen, offset = [], 0
        while offset is not None and len(seen) < 20:
            page = sc.request(svc.base, "GET", "/v1/adapters?limit=500&offset=%d" % offset, key).json()
            seen += [a["id"] for a in page["adapters"]]
            offset = page["next_offset"]
        check("following next_offset lists every adapter once", sorted(seen) == sorted(ids), seen)
    finally:
        stop(svc)


# ---- a worker whose job cannot get its memory; URL downloads to disk ------------------------------------

def worker_tests(work):
    state = os.path.join(work, "worker")
    svc = sc.Service(BIN, MODEL, state, ["--workers", "1", "--max-resolution", "1024", "--max-job-memory",
                                         str(1 << 50), "--max-training-work", str(1 << 40), "--allow-private-urls",
                                         "--max-adapter-bytes", str(300 << 20)], env=asan_env())
    try:
        key = svc.key("acme")
        with open("/proc/sys/vm/overcommit_memory") as f:
            overcommit = f.read().strip()
        if overcommit == "1":
            print("     (skipped the out-of-memory job: vm.overcommit_memory = 1 grants any allocation)")
        else:
            r = train(svc, key, zip_of(good_images(work)), resolution=1024, batch_size=16)
            job = sc.wait_job(svc.base, key, r.json()["job_id"], timeout=240) if r.status == 202 else {"r": r.body[:300]}
            check("admitted under a huge limit, the training fails its job with out_of_memory",
                  job.get("state") == "failed" and job["error"]["code"] == "out_of_memory", job)
            r = sc.request(svc.base, "GET", "/healthz")
            check("the process lives on and answers", svc.proc.poll() is None and r.status == 200, r.status)
            r = sc.request(svc.base, "POST", "/v1/generations", key,
                           {"prompt": "x", "width": 16, "height": 16, "steps": 2, "sync": True})
            check("and its worker still generates", r.status == 200, r.body[:200])

        server, url = start_server(Endless)
        try:
            pid = svc.proc.pid
            reset_peak(pid)
            before = peak_kb(pid)
            r = sc.request(svc.base, "POST", "/v1/adapters", key, {"url": url + "/endless", "name": "endless"})
            job = sc.wait_job(svc.base, key, r.json()["job_id"], timeout=120) if r.status == 202 else {"r": r.body[:200]}
            grew_mb = (peak_kb(pid) - before) / 1024
            check("an endless adapter URL fails its job at --max-adapter-bytes (300 MiB) with peak RSS +%.0f MB"
                  % grew_mb, job.get("state") == "failed" and "300 MiB" in job["error"]["message"] and grew_mb < 100,
                  job)
            leftovers = [n for n in os.listdir(os.path.join(state, "store", "blobs")) if n.startswith(".tmp")]
            check("and leaves no temporary file behind", not leftovers, leftovers)
        finally:
            server.shutdown()
        files, files_url = sc.file_server(work)
        try:
            with open(os.path.join(work, "good.safetensors"), "wb") as f:
                f.write(lora_file(MODEL, {"notes": "by url"}))
            r = sc.request(svc.base, "POST", "/v1/adapters", key, {"url": files_url + "/good.safetensors?sig=secret",
                                                                   "name": "by-url"})
            job = sc.wait_job(svc.base, key, r.json()["job_id"], timeout=120) if r.status == 202 else {"r": r.body[:200]}
            res = job.get("result") or {}
            got = sc.request(svc.base, "GET", "/v1/adapters/by-url", key)
            check("a URL import job's result names the adapter, registered without the URL's query",
                  job.get("state") == "succeeded" and res.get("name") == "by-url" and got.status == 200
                  and got.json()["id"] == res.get("adapter_id") and got.json()["source"] == files_url + "/good.safetensors",
                  (job, got.body[:200]))
        finally:
            files.shutdown()
    finally:
        stop(svc)


def main():
    work = tempfile.mkdtemp(prefix="flashlora-admit-")
    try:
        for group in (defaults_tests, api_only_tests, worker_tests):
            try:
                group(work)
            except Exception as e:  # noqa: BLE001
                check(group.__name__ + " ran to the end", False, repr(e))
        if check.failed:
            for log in sorted(n for n in os.listdir(work) if n.endswith(".log")):
                with open(os.path.join(work, log), errors="replace") as f:
                    print("---- %s (last lines)\n%s" % (log, "".join(f.readlines()[-20:])))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
