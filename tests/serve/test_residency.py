"""Adapters resident on the worker's model, through the real service: the real `flashlora serve`
(private redis-server, one in-process worker), real HTTP on loopback.

  test_residency.py FLASHLORA SOURCE_DIR

A batch naming 8 adapters already attached attaches, detaches and plans nothing (the counters
flashlora_adapter_attaches_total, flashlora_adapter_detaches_total and
flashlora_forward_plans_total in /metrics, summed from worker heartbeats, do not move); the same
request gives the same PNG bytes whether its adapters were just attached or long resident, and
each request of a mixed batch over resident adapters gets its solo image; a training job detaches
the resident sets (it needs the bare model) and the next generation attaches them again with
unchanged images. Ends with "N passed, N failed".
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
MODEL = os.path.join(SRC, "tests/fixtures/flux_b.model.safetensors")
COUNTERS = ("flashlora_adapter_attaches_total", "flashlora_adapter_detaches_total", "flashlora_forward_plans_total",
            "flashlora_attached_adapters")
check = sc.Checks()


def counters(svc):
    """The residency counters once the worker's heartbeat (every 0.5 s) has caught up with its last
    job; None for a counter /metrics does not have."""
    time.sleep(1.2)
    text = sc.request(svc.base, "GET", "/metrics").body.decode()
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in COUNTERS:
            values[parts[0]] = int(float(parts[1]))
    return {c: values.get(c) for c in COUNTERS}


def delta(before, after):
    return {c: (after[c] - before[c]) if after[c] is not None and before[c] is not None else None for c in COUNTERS}


def generate(svc, key, adapters, seed, sync=True, num_images=1):
    body = {"prompt": "resident %d" % seed, "adapters": adapters, "width": 16, "height": 16, "steps": 3,
            "seed": seed, "num_images": num_images, "sync": sync}
    return sc.request(svc.base, "POST", "/v1/generations", key, body)


def pngs(r):
    if r.status != 200:
        return r.body
    return [base64.b64decode(i["png_base64"]) for i in r.json()["images"]]


def main():
    work = tempfile.mkdtemp(prefix="flashlora-residency-")
    state = os.path.join(work, "state")
    svc = sc.Service(BIN, MODEL, state, ["--workers", "1", "--batch", "8", "--batch-wait-ms", "300",
                                         "--device-cache-mb", "16"])
    try:
        run(svc, work)
    finally:
        if svc.proc.poll() is None:
            svc.stop()
        log = os.path.join(work, "state.serve.log")
        if check.failed and os.path.exists(log):
            print("---- state.serve.log (last lines)")
            with open(log, errors="replace") as f:
                print("".join(f.readlines()[-25:]))
        shutil.rmtree(work, ignore_errors=True)
    return check.finish()


def run(svc, work):
    key = svc.key("resident")
    ids = []
    for i in range(8):
        path = os.path.join(work, "a%d.safetensors" % i)
        sc.write_lora(path, MODEL, seed=300 + i, scale=0.2)
        with open(path, "rb") as f:
            body, ctype = sc.multipart({"name": "res%d" % i}, {"file": ("a.safetensors", f.read())})
        r = sc.request(svc.base, "POST", "/v1/adapters", key, body, {"Content-Type": ctype})
        if r.status == 201:
            ids.append(r.json()["id"])
    if not check("8 adapters import", len(ids) == 8, ids):
        return
    all8 = [{"id": a, "scale": 0.5 + 0.1 * i} for i, a in enumerate(ids)]

    # First batch: a request of 2 images naming all 8 adapters attaches them.
    c0 = counters(svc)
    check("/metrics has the residency counters", all(v is not None for v in c0.values()), c0)
    if any(v is None for v in c0.values()):
        return
    r = generate(svc, key, all8, seed=1, num_images=2)
    first = pngs(r)
    c1 = counters(svc)
    d = delta(c0, c1)
    check("the first batch naming 8 adapters attaches 8", r.status == 200 and d[COUNTERS[0]] == 8 and
          c1["flashlora_attached_adapters"] == 8, (r.status, d, c1))

    # The same shape again over the same adapters (other order, scales and seed): nothing
    # attached, detached or planned.
    shuffled = [{"id": a["id"], "scale": 1.5 - a["scale"]} for a in reversed(all8)]
    r = generate(svc, key, shuffled, seed=2, num_images=2)
    c2 = counters(svc)
    d = delta(c1, c2)
    check("a batch naming 8 resident adapters attaches, detaches and plans nothing",
          r.status == 200 and d[COUNTERS[0]] == 0 and d[COUNTERS[1]] == 0 and d[COUNTERS[2]] == 0, (r.status, d))
    r = generate(svc, key, all8, seed=1, num_images=2)
    check("the same request over resident adapters gives the same PNG bytes", pngs(r) == first)

    # A mixed batch over resident adapters: each request its solo image; still nothing attached.
    specs = [(all8[0:2], 11), (all8[2:3], 12), ([], 13), (all8[3:8], 14), (all8[1:2] + all8[6:7], 15)]
    solo = [pngs(generate(svc, key, a, s)) for a, s in specs]
    with concurrent.futures.ThreadPoolExecutor(len(specs)) as pool:
        futures = [pool.submit(generate, svc, key, a, s, False) for a, s in specs]
        job_ids = [f.result().json().get("job_id") for f in futures]
    jobs = [sc.wait_job(svc.base, key, j, timeout=120) for j in job_ids]
    batched = max((j.get("result") or {}).get("batch_size", 0) for j in jobs)
    same = all(j["state"] == "succeeded" and
               [sc.request(svc.base, "GET", i["url"], key).body for i in j["result"]["images"]] == solo[n]
               for n, j in enumerate(jobs))
    c3 = counters(svc)
    d = delta(c2, c3)
    check("concurrent requests over resident adapters were batched (batch of %d)" % batched, batched > 1)
    check("each request of a mixed batch over resident adapters gets its solo image", same)
    check("solo and mixed batches over resident adapters attach and detach nothing",
          d[COUNTERS[0]] == 0 and d[COUNTERS[1]] == 0 and c3["flashlora_attached_adapters"] == 8, d)

    # A training needs the bare model: it detaches the 8; the next generation attaches them again
    # and gives the same images.
    images = os.path.join(work, "images")
    subprocess.check_call([sys.executable, os.path.join(SRC, "tests/trainer/make_images.py"), images, "5"])
    archive = os.path.join(work, "images.zip")
    with zipfile.ZipFile(archive, "w") as z:
        for name in sorted(os.listdir(images)):
            z.write(os.path.join(images, name), name)
    with open(archive, "rb") as f:
        body, ctype = sc.multipart({"trigger_word": "sks", "steps": 3, "rank": 2, "resolution": 16},
                                   {"images": ("images.zip", f.read())})
    r = sc.request(svc.base, "POST", "/v1/trainings", key, body, {"Content-Type": ctype})
    job = sc.wait_job(svc.base, key, r.json()["job_id"], timeout=120) if r.status == 202 else {"state": r.body}
    check("a training job runs beside resident adapters", job.get("state") == "succeeded", job)
    c4 = counters(svc)
    d = delta(c3, c4)
    check("the training detached the resident adapters", d[COUNTERS[1]] == 8 and c4["flashlora_attached_adapters"] == 0,
          (d, c4))
    r = generate(svc, key, all8, seed=1, num_images=2)
    c5 = counters(svc)
    d = delta(c4, c5)
    check("after the training the adapters are attached again, images unchanged",
          pngs(r) == first and d[COUNTERS[0]] == 8 and c5["flashlora_attached_adapters"] == 8, d)


if __name__ == "__main__":
    sys.exit(main())
