"""Integration test of the service: the real `flashlora serve` and `flashlora worker` binaries, a
real redis-server (the service's private one, AOF on), real HTTP on loopback.

  test_service.py FLASHLORA SOURCE_DIR [MODEL]

MODEL is the base model the service runs (default: the tiny random test model); the release build
runs this test on the embedded default model, the sanitizer build on the tiny one. Adapters the
test imports are written for MODEL's shapes.

Covers: training through the API with server-sent events to the end, generation naming the new
adapter (the PNG decodes), adapter metadata through GET, imports (and refused imports), mixed
batches giving each request exactly its solo image, tenant isolation (404) and keys (401),
validation (400 naming the field, 413, 404, 429 with Retry-After), metrics, a worker killed with
SIGKILL mid-training whose job another worker completes from its checkpoint (one adapter in the
registry, byte-identical to an uninterrupted run), the delivery cap, a restart of the service and
its private redis-server, and a shared redis-server killed and restarted under a running service,
with every adapter and job still there. Ends with "N passed, N failed".
"""

import base64
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import service_client as sc  # noqa: E402

BIN, SRC = sys.argv[1], sys.argv[2]
MODEL = sys.argv[3] if len(sys.argv) > 3 else os.path.join(SRC, "tests/fixtures/flux_b.model.safetensors")
check = sc.Checks()


def image_zip(work, count=6):
    images = os.path.join(work, "images")
    subprocess.check_call([sys.executable, os.path.join(SRC, "tests/trainer/make_images.py"), images, str(count)])
    path = os.path.join(work, "images.zip")
    with zipfile.ZipFile(path, "w") as z:
        for name in sorted(os.listdir(images)):
            z.write(os.path.join(images, name), name)
    with open(path, "rb") as f:
        return f.read()


def train(svc, key, archive, **fields):
    form = {"trigger_word": "sks", "steps": 30, "rank": 4, "resolution": 16, "learning_rate": "0.001"}
    form.update(fields)
    body, ctype = sc.multipart(form, {"images": ("images.zip", archive)})
    return sc.request(svc.base, "POST", "/v1/trainings", key, body, {"Content-Type": ctype})


def generate(svc, key, adapters, seed, sync=True, prompt="a photo of sks", **extra):
    body = {"prompt": prompt, "adapters": adapters, "width": 16, "height": 16, "steps": 4, "seed": seed,
            "sync": sync}
    body.update(extra)
    return sc.request(svc.base, "POST", "/v1/generations", key, body)


def import_adapter(svc, key, path, name):
    with open(path, "rb") as f:
        body, ctype = sc.multipart({"name": name}, {"file": (os.path.basename(path), f.read())})
    return sc.request(svc.base, "POST", "/v1/adapters", key, body, {"Content-Type": ctype})


def main():
    work = tempfile.mkdtemp(prefix="flashlora-service-")
    state = os.path.join(work, "state")
    archive = image_zip(work)
    svc = sc.Service(BIN, MODEL, state, ["--workers", "1", "--claim-timeout", "3", "--checkpoint-every", "5",
                                         "--batch-wait-ms", "100", "--max-queue", "12", "--max-body", "65536"])
    procs = []
    try:
        run_all(svc, work, state, archive, procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if svc.proc.poll() is None:
            svc.stop()
        for log in ("state.serve.log", "state.worker.log"):
            path = os.path.join(work, log)
            if check.failed and os.path.exists(path):
                print("---- " + log + " (last lines)")
                with open(path, errors="replace") as f:
                    print("".join(f.readlines()[-25:]))
        shutil.rmtree(work, ignore_errors=True)
    return check.finish()


def run_all(svc, work, state, archive, procs):
    base = svc.base
    alpha, beta = svc.key("alpha"), svc.key("beta")
    check("keys are created per tenant", alpha.startswith("fl_") and beta.startswith("fl_") and alpha != beta)

    r = sc.request(base, "GET", "/healthz")
    check("healthz answers ok", r.status == 200 and r.json()["status"] == "ok", r.body)

    # ---- authentication -------------------------------------------------------------------------------
    r = sc.request(base, "GET", "/v1/adapters")
    check("no key -> 401", r.status == 401 and r.json()["error"]["code"] == "unauthorized", r.body)
    r = sc.request(base, "GET", "/v1/adapters", "fl_0000000000000000000000000000000000000000")
    check("unknown key -> 401", r.status == 401, r.body)
    r = sc.request(base, "GET", "/v1/adapters", headers={"Authorization": "Basic abc"})
    check("malformed Authorization -> 401", r.status == 401, r.body)

    # ---- training through the API, followed by server-sent events ---------------------------------------
    r = train(svc, alpha, archive, name="logo")
    check("POST /v1/trainings -> 202 with a job id", r.status == 202 and r.json()["job_id"].startswith("job_"), r.body)
    job_id = r.json()["job_id"]
    evs = sc.events(base, "/v1/jobs/%s/events" % job_id, alpha)
    kinds = [e for e, _ in evs]
    check("events run queued -> running -> progress ... -> succeeded",
          kinds[:2] == ["queued", "running"] and "progress" in kinds and kinds[-1] == "succeeded", kinds)
    progress = [d for e, d in evs if e == "progress"]
    check("progress events carry step, total, loss and ETA",
          progress and progress[-1]["step"] == 30 and progress[-1]["total"] == 30 and "loss" in progress[-1]
          and "eta_s" in progress[-1], progress[-1:] or evs)
    job = sc.request(base, "GET", "/v1/jobs/" + job_id, alpha).json()
    check("GET /v1/jobs/{id}: succeeded with the adapter in the result",
          job["state"] == "succeeded" and job["result"]["adapter_id"].startswith("ad_"), job)
    adapter_id = job["result"]["adapter_id"]
    r = sc.request(base, "GET", "/v1/adapters/" + adapter_id, alpha)
    meta = r.json() if r.status == 200 else {}
    check("the adapter's metadata is visible through GET",
          r.status == 200 and meta["name"] == "logo" and meta["trigger_word"] == "sks" and meta["rank"] == 4
          and len(meta["sha256"]) == 64 and meta["source"] == "training:" + job_id
          and meta["metadata"].get("steps") == "30", r.body)
    r = sc.request(base, "GET", "/v1/adapters/logo", alpha)
    check("an adapter is found by its name too", r.status == 200 and r.json()["id"] == adapter_id, r.body)

    # ---- previews during training ----------------------------------------------------------------------------
    r = train(svc, alpha, archive, name="logo-previews", preview_every="10", preview_count="2")
    pjob = r.json().get("job_id", "x") if r.status == 202 else "x"
    check("a training with previews is accepted", r.status == 202, r.body)
    evs = sc.events(base, "/v1/jobs/%s/events" % pjob, alpha)
    previews = [d for e, d in evs if e == "preview"]
    check("3 preview rounds of 2 images each arrive as events naming images (steps 10, 20, 30)",
          [(d["step"], len(d["images"])) for d in previews] == [(10, 1), (10, 1), (20, 1), (20, 1), (30, 1), (30, 1)]
          and all(d["images"][0]["id"].startswith("img_") for d in previews), previews)
    check("no event shows a server path", all("path" not in d for _, d in evs), [d for _, d in evs if "path" in d])
    job = sc.request(base, "GET", "/v1/jobs/" + pjob, alpha).json()
    listed = job.get("result", {}).get("previews", [])
    check("the result lists the previews with step and seed",
          [(p["step"], p["seed"]) for p in listed] == [(10, 1), (10, 2), (20, 1), (20, 2), (30, 1), (30, 2)]
          and [p["id"] for p in listed] == [d["images"][0]["id"] for d in previews], listed)
    first = listed[0]["url"] if listed else "/v1/images/none.png"
    img = sc.request(base, "GET", first, alpha)
    try:
        size = sc.png_decode(img.body)[:2] if img.status == 200 else None
    except Exception:  # noqa: BLE001
        size = None
    check("a preview is served to its tenant as a PNG of the training's size",
          img.status == 200 and img.headers.get("Content-Type") == "image/png" and size == (16, 16), img.status)
    other = sc.request(base, "GET", first, beta)
    check("another tenant gets 404 for it", other.status == 404, other.status)
    r = train(svc, alpha, archive, name="too-many-previews", preview_every="1")
    check("30 preview rounds are refused by admission (422 limit_exceeded, naming the minimum)",
          r.status == 422 and r.json()["error"]["code"] == "limit_exceeded"
          and "preview_every 2 or more" in r.json()["error"]["message"], r.body)
    r = train(svc, alpha, archive, name="too-many-images", preview_every="10", preview_count="5")
    check("preview_count over 4 -> 400", r.status == 400 and "preview_count" in r.json()["error"]["message"], r.body)
    padapter = job.get("result", {}).get("adapter_id", "x")
    r = sc.request(base, "DELETE", "/v1/adapters/" + padapter, alpha)
    check("the previews' adapter is deleted again (the listings below count one trained adapter)",
          r.status in (200, 204), r.body)

    # ---- generation naming the new adapter ----------------------------------------------------------------
    r = generate(svc, alpha, [{"id": adapter_id, "scale": 1.0}], seed=7)
    ok = r.status == 200
    png = base64.b64decode(r.json()["images"][0]["png_base64"]) if ok else b""
    try:
        w, h, _ = sc.png_decode(png)
        decoded = (w, h) == (16, 16)
    except Exception as e:  # noqa: BLE001
        decoded = False
        r.body = repr(e).encode()
    check("sync generation with the adapter returns a PNG that decodes (16x16)", ok and decoded, r.body[:300])
    r2 = generate(svc, alpha, [{"id": adapter_id, "scale": 1.0}], seed=7, sync=False)
    check("async generation -> 202 with Location", r2.status == 202 and "/v1/jobs/" in r2.headers.get("Location", ""))
    job = sc.wait_job(base, alpha, r2.json()["job_id"])
    url = job["result"]["images"][0]["url"] if job["state"] == "succeeded" else "/"
    img = sc.request(base, "GET", url, alpha)
    check("the image URL serves the same PNG bytes for the same seed",
          img.status == 200 and img.headers.get("Content-Type") == "image/png" and img.body == png, job)
    r3 = generate(svc, alpha, [], seed=7)
    check("the adapter changes the image",
          r3.status == 200 and base64.b64decode(r3.json()["images"][0]["png_base64"]) != png, r3.body[:200])

    # ---- imports ----------------------------------------------------------------------------------------------
    kohya = os.path.join(work, "kohya.safetensors")
    sc.write_lora(kohya, MODEL, seed=99, rank=4, layout="kohya")
    r = import_adapter(svc, alpha, kohya, "kohya-one")
    check("POST /v1/adapters imports a kohya file (201, canonical)", r.status == 201 and r.json()["format"] == "kohya",
          r.body)
    r = import_adapter(svc, alpha, os.path.join(SRC, "tests/fixtures/flux_a.lora.safetensors"), "wrong-model")
    check("an adapter for another model is refused, naming the tensors",
          r.status == 400 and "shape" in r.json()["error"]["message"].lower(), r.body)
    garbage = os.path.join(work, "garbage.safetensors")
    with open(garbage, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    r = import_adapter(svc, alpha, garbage, "garbage")
    check("a malformed file is refused with 400", r.status == 400, r.body)
    with open(garbage, "wb") as f:
        f.write(b"\xff\xff\xff\xff\x00\x00\x00\x00{}")  # claims a 4 GiB header
    r = import_adapter(svc, alpha, garbage, "garbage")
    check("a file whose header claims more bytes than it has is refused with 400", r.status == 400, r.body)

    # ---- mixed batches: each request gets exactly its solo image ------------------------------------------
    ids = [adapter_id]
    for i in range(3):
        path = os.path.join(work, "rand%d.safetensors" % i)
        sc.write_lora(path, MODEL, seed=100 + i)
        r = import_adapter(svc, alpha, path, "rand%d" % i)
        if r.status == 201:
            ids.append(r.json()["id"])
    check("random adapters import", len(ids) == 4, ids)
    specs = [([], 11), ([{"id": ids[0], "scale": 1.0}], 12), ([{"id": ids[1], "scale": 0.5}], 13),
             ([{"id": ids[1], "scale": 1.5}, {"id": ids[2], "scale": -1.0}], 14), ([{"id": ids[3]}], 15),
             ([{"id": ids[2], "scale": 2.0}], 16)]
    solo = []
    for adapters, seed in specs:
        r = generate(svc, alpha, adapters, seed, prompt="sks logo %d" % seed)
        solo.append(base64.b64decode(r.json()["images"][0]["png_base64"]) if r.status == 200 else r.body)
    with concurrent.futures.ThreadPoolExecutor(len(specs)) as pool:
        futures = [pool.submit(generate, svc, alpha, a, s, False, "sks logo %d" % s) for a, s in specs]
        job_ids = [f.result().json().get("job_id") for f in futures]
    jobs = [sc.wait_job(base, alpha, j) for j in job_ids]
    batched = max((j["result"] or {}).get("batch_size", 0) for j in jobs)
    same = all(j["state"] == "succeeded" and
               sc.request(base, "GET", j["result"]["images"][0]["url"], alpha).body == solo[i]
               for i, j in enumerate(jobs))
    check("concurrent requests with different adapters were batched (batch of %d)" % batched, batched > 1)
    check("each request in a mixed batch gets exactly its solo image", same)

    # ---- tenant isolation ----------------------------------------------------------------------------------------
    first_image = jobs[0]["result"]["images"][0]["url"] if jobs[0]["state"] == "succeeded" else "/v1/images/x.png"
    cross = [sc.request(base, "GET", "/v1/adapters/" + adapter_id, beta),
             sc.request(base, "GET", "/v1/adapters/logo", beta),
             sc.request(base, "DELETE", "/v1/adapters/" + adapter_id, beta),
             sc.request(base, "GET", "/v1/jobs/" + job_id, beta),
             sc.request(base, "GET", "/v1/jobs/%s/events" % job_id, beta),
             sc.request(base, "GET", first_image, beta),
             generate(svc, beta, [{"id": adapter_id}], 1)]
    check("every cross-tenant access is 404", all(c.status == 404 for c in cross), [c.status for c in cross])
    r = sc.request(base, "GET", "/v1/adapters", beta)
    check("another tenant's list is empty", r.status == 200 and r.json()["total"] == 0, r.body)
    r = sc.request(base, "GET", "/v1/adapters/" + adapter_id, alpha)
    check("the owner still has the adapter after the other tenant's DELETE", r.status == 200)
    r = sc.request(base, "GET", "/v1/adapters?limit=2", alpha)
    page = r.json()
    check("adapter listing paginates", page["total"] == 5 and len(page["adapters"]) == 2 and page["next_offset"] == 2,
          page)

    # ---- validation and limits -------------------------------------------------------------------------------------
    r = sc.request(base, "POST", "/v1/generations", alpha, b"{\"prompt\": ", {"Content-Type": "application/json"})
    check("malformed JSON -> 400", r.status == 400 and r.json()["error"]["code"] == "invalid_input", r.body)
    r = generate(svc, alpha, [], 1, width=15)
    check("a bad field -> 400 naming it", r.status == 400 and "'width'" in r.json()["error"]["message"], r.body)
    r = generate(svc, alpha, [], 1, stepz=3)
    check("an unknown field -> 400 naming it", r.status == 400 and "'stepz'" in r.json()["error"]["message"], r.body)
    r = generate(svc, alpha, [{"id": "ad_doesnotexist"}], 1)
    check("an unknown adapter -> 404", r.status == 404, r.body)
    r = sc.request(base, "POST", "/v1/generations", alpha, b"{\"prompt\": \"" + b"x" * 70000 + b"\"}",
                   {"Content-Type": "application/json"})
    check("a body over the limit -> 413", r.status == 413, r.status)
    r = sc.request(base, "GET", "/v1/nothing", alpha)
    check("an unknown route -> 404", r.status == 404)
    r = sc.request(base, "PUT", "/v1/generations", alpha, b"{}")
    check("a wrong method -> 405", r.status == 405)

    # Backpressure: more slow requests than the queue holds.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda s: generate(svc, alpha, [], s, False, steps=100, width=32, height=32), range(24)))
    statuses = [x.status for x in rs]
    limited = [x for x in rs if x.status == 429]
    check("a full queue answers 429 with Retry-After, the rest are accepted",
          limited and all(x.headers.get("Retry-After") for x in limited)
          and all(s in (202, 429) for s in statuses), statuses)
    for x in rs:
        if x.status == 202:
            sc.wait_job(base, alpha, x.json()["job_id"], timeout=600)

    # ---- URLs: refused on loopback unless the service allows private addresses ------------------------
    files, files_url = sc.file_server(work)
    try:
        r = sc.request(base, "POST", "/v1/adapters", alpha, {"url": files_url + "/rand0.safetensors", "name": "u0"})
        check("an adapter URL on loopback is refused by default (SSRF)", r.status == 400, r.body)
        r = sc.request(base, "POST", "/v1/trainings", alpha, {"images_url": files_url + "/images.zip",
                                                              "trigger_word": "sks", "steps": 5, "resolution": 16})
        job = sc.wait_job(base, alpha, r.json()["job_id"]) if r.status == 202 else {}
        check("a training images_url on loopback fails its job with the reason",
              job.get("state") == "failed" and "private" in job["error"]["message"], job)
    finally:
        files.shutdown()

    # ---- delete ------------------------------------------------------------------------------------------------------
    r = sc.request(base, "DELETE", "/v1/adapters/" + ids[3], alpha)
    gone = sc.request(base, "GET", "/v1/adapters/" + ids[3], alpha)
    check("DELETE removes the adapter", r.status == 200 and gone.status == 404, r.body)

    # ---- metrics --------------------------------------------------------------------------------------------------------
    m = sc.request(base, "GET", "/metrics").body.decode()
    check("metrics: queue depth, jobs by state, latency histograms, cache hits/misses, resident adapters",
          all(s in m for s in ("flashlora_queue_depth{queue=\"generate\"}", "flashlora_jobs{state=\"succeeded\"}",
                               "flashlora_http_request_duration_seconds_bucket",
                               "flashlora_adapter_cache_hits_total", "flashlora_adapter_cache_misses_total",
                               "flashlora_resident_adapters")), m[:400])

    # ---- restart of the service and its private redis-server --------------------------------------------------------
    code = svc.stop()
    check("SIGTERM stops the service cleanly", code == 0, code)
    svc2 = sc.Service(BIN, MODEL, state, ["--workers", "0", "--claim-timeout", "3", "--allow-private-urls"])
    try:
        base = svc2.base
        r = sc.request(base, "GET", "/v1/adapters/" + adapter_id, alpha)
        j = sc.request(base, "GET", "/v1/jobs/" + job_id, alpha)
        lst = sc.request(base, "GET", "/v1/adapters", alpha)
        check("after a restart of redis-server the adapters and jobs are all there (AOF)",
              r.status == 200 and j.status == 200 and j.json()["state"] == "succeeded" and lst.json()["total"] == 4,
              (r.status, j.body[:200], lst.body[:200]))
        url_tests(svc2, work, state, alpha, procs)
        fault_tests(svc2, work, state, archive, alpha, procs)
    finally:
        svc2.stop()
    external_redis_restart(work, procs)


def start_redis(rdir):
    sock = os.path.join(rdir, "redis.sock")
    if os.path.exists(sock):
        os.unlink(sock)  # left by a killed server
    proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock, "--dir", rdir, "--appendonly",
                             "yes", "--appendfsync", "always", "--save", "", "--logfile", os.path.join(rdir, "log")])
    deadline = time.time() + 20
    while not os.path.exists(sock) and time.time() < deadline:
        time.sleep(0.05)
    return proc, "unix:" + sock


def external_redis_restart(work, procs):
    """A shared redis-server killed (SIGKILL) and restarted under a running service: the service and
    its worker reconnect, and every adapter and job is still there."""
    rdir = os.path.join(work, "shared-redis")
    os.makedirs(rdir)
    redis, address = start_redis(rdir)
    procs.append(redis)
    svc = sc.Service(BIN, MODEL, os.path.join(work, "state-shared"), ["--redis", address, "--workers", "1"])
    try:
        key = subprocess.check_output([BIN, "keys", "create", "--tenant", "gamma", "--redis", address],
                                      text=True).strip()
        shared = os.path.join(work, "shared.safetensors")
        sc.write_lora(shared, MODEL, seed=98)
        r = import_adapter(svc, key, shared, "shared")
        ad = r.json().get("id") if r.status == 201 else None
        g = generate(svc, key, [{"id": ad}], 3)
        check("a service on a shared Redis imports and generates", ad and g.status == 200, (r.body[:200], g.status))
        redis.kill()
        redis.wait()
        r = sc.request(svc.base, "GET", "/v1/adapters/" + str(ad), key)
        check("with redis-server down the API answers 503", r.status == 503, r.status)
        redis, _ = start_redis(rdir)
        procs.append(redis)
        r = sc.request(svc.base, "GET", "/v1/adapters/" + str(ad), key)
        j = sc.request(svc.base, "GET", "/v1/jobs/" + g.json().get("job_id", "x"), key)
        check("after redis-server restarts, the adapter and the job are still there",
              r.status == 200 and j.status == 200 and j.json()["state"] == "succeeded", (r.status, j.body[:200]))
        g2 = generate(svc, key, [{"id": ad}], 3)
        same = g2.status == 200 and g2.json()["images"][0]["png_base64"] == g.json()["images"][0]["png_base64"]
        check("the running service and its worker reconnect and generate the same image", same, g2.body[:300])
    finally:
        svc.stop()
        redis.terminate()
        redis.wait()


def url_tests(svc, work, state, key, procs):
    """With --allow-private-urls: an adapter imported by URL (recorded without its query) and a
    training whose images come from a URL."""
    files, files_url = sc.file_server(work)
    w = sc.start_worker(BIN, MODEL, state, ["--allow-private-urls"])
    procs.append(w)
    try:
        r = sc.request(svc.base, "POST", "/v1/adapters", key,
                       {"url": files_url + "/rand1.safetensors?token=secret", "name": "from-url"})
        job = sc.wait_job(svc.base, key, r.json()["job_id"]) if r.status == 202 else {}
        got = sc.request(svc.base, "GET", "/v1/adapters/from-url", key)
        check("an adapter imports from a URL (an import job), recorded without its query",
              job.get("state") == "succeeded" and got.status == 200
              and got.json()["source"] == files_url + "/rand1.safetensors", (r.body, job))
        r = sc.request(svc.base, "POST", "/v1/trainings", key, {"images_url": files_url + "/images.zip",
                                                                "trigger_word": "sks", "steps": 10, "rank": 2,
                                                                "resolution": 16})
        job = sc.wait_job(svc.base, key, r.json()["job_id"]) if r.status == 202 else {}
        check("a training from images_url succeeds", job.get("state") == "succeeded", job)
    finally:
        files.shutdown()
        w.terminate()
        w.wait(timeout=60)


def fault_tests(svc, work, state, archive, key, procs):
    base = svc.base
    worker_args = ["--claim-timeout", "3", "--checkpoint-every", "5"]
    # Reference: the same training uninterrupted.
    w = sc.start_worker(BIN, MODEL, state, worker_args)
    procs.append(w)
    r = train(svc, key, archive, steps=150, seed=5)
    ref = sc.wait_job(base, key, r.json()["job_id"])
    check("an uninterrupted reference training succeeds", ref["state"] == "succeeded", ref)
    w.terminate()
    w.wait(timeout=60)

    # A worker killed with SIGKILL mid-training; another one takes over after the claim timeout.
    w = sc.start_worker(BIN, MODEL, state, worker_args)
    procs.append(w)
    r = train(svc, key, archive, steps=150, seed=5, name="resumed")
    victim = r.json()["job_id"]
    job = sc.wait_job(base, key, victim, until=lambda j: j["progress"]["step"] >= 12)
    w.kill()
    w.wait()
    check("the first worker died mid-training (step %d of 150)" % job["progress"]["step"],
          job["state"] == "running" and 12 <= job["progress"]["step"] < 150, job)
    w2 = sc.start_worker(BIN, MODEL, state, worker_args)
    procs.append(w2)
    done = sc.wait_job(base, key, victim, timeout=300)
    res = done.get("result") or {}
    check("another worker completes the job", done["state"] == "succeeded" and done["attempts"] == 2, done)
    check("it resumed from the last checkpoint (step %s)" % res.get("resumed_at"), res.get("resumed_at", 0) >= 10, res)
    lst = sc.request(base, "GET", "/v1/adapters?limit=500", key).json()["adapters"]
    mine = [a for a in lst if a["source"] == "training:" + victim]
    check("the registry holds exactly one adapter for the job", len(mine) == 1, mine)
    check("the resumed adapter is byte-identical to the uninterrupted run",
          mine and mine[0]["sha256"] == ref["result"]["sha256"], (res, ref.get("result")))

    # Delivery cap: the job's worker dies, and the next worker has a cap of one delivery.
    r = train(svc, key, archive, steps=150, seed=6)
    capped = r.json()["job_id"]
    sc.wait_job(base, key, capped, until=lambda j: j["progress"]["step"] >= 3)
    w2.kill()
    w2.wait()
    w3 = sc.start_worker(BIN, MODEL, state, ["--claim-timeout", "3", "--max-deliveries", "1"])
    procs.append(w3)
    done = sc.wait_job(base, key, capped, timeout=120)
    check("a job past its delivery cap fails with the reason",
          done["state"] == "failed" and done["error"]["code"] == "delivery_cap", done)
    w3.terminate()
    w3.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
