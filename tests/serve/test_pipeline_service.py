"""The service on a FLUX.1 model: the real `flashlora serve --model DIR` on the tiny dev-like
pipeline (tests/fixtures/pipeline/dev, diffusers folders), its private redis-server and one worker,
real HTTP on loopback.

  test_pipeline_service.py FLASHLORA SOURCE_DIR

A training job on an uploaded set trains on the autoencoder's latents and T5 + CLIP encodings and
registers its adapter; a generation with that adapter gives a PNG of the requested size (a multiple
of 16), different from the base model's; the same request again gives the same bytes (the prompt's
embedding then comes from the worker's cache); a size that is not a multiple of 16 is refused with
400. Ends with "N passed, N failed".
"""

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import service_client as sc  # noqa: E402

BIN, SRC = sys.argv[1], sys.argv[2]
MODEL = os.path.join(SRC, "tests/fixtures/pipeline/dev")
check = sc.Checks()


def generate(svc, key, adapters, seed=1, size=32):
    body = {"prompt": "a photo of sks", "adapters": adapters, "width": size, "height": size, "steps": 2, "seed": seed,
            "sync": True}
    return sc.request(svc.base, "POST", "/v1/generations", key, body)


def png(r):
    return base64.b64decode(r.json()["images"][0]["png_base64"]) if r.status == 200 else None


def main():
    work = tempfile.mkdtemp(prefix="flashlora-pipeline-service-")
    state = os.path.join(work, "state")
    svc = sc.Service(BIN, MODEL, state, ["--workers", "1"])
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
    key = svc.key("brand")
    images = os.path.join(work, "images")
    subprocess.check_call([sys.executable, os.path.join(SRC, "tests/trainer/make_images.py"), images, "5"])
    archive = os.path.join(work, "images.zip")
    with zipfile.ZipFile(archive, "w") as z:
        for name in sorted(os.listdir(images)):
            z.write(os.path.join(images, name), name)
    with open(archive, "rb") as f:
        body, ctype = sc.multipart({"trigger_word": "sks", "steps": 6, "rank": 2, "resolution": 32, "name": "mug"},
                                   {"images": ("images.zip", f.read())})
    r = sc.request(svc.base, "POST", "/v1/trainings", key, body, {"Content-Type": ctype})
    check("a training job on the FLUX.1 model is accepted", r.status == 202, (r.status, r.body[:300]))
    if r.status != 202:
        return
    job = sc.wait_job(svc.base, key, r.json()["job_id"], timeout=240)
    check("the training job succeeds", job.get("state") == "succeeded", job)
    if job.get("state") != "succeeded":
        return
    adapter = job["result"]["adapter_id"] if "adapter_id" in job.get("result", {}) else "mug"
    with_adapter = generate(svc, key, [{"id": adapter, "scale": 1.0}])
    base = generate(svc, key, [])
    a, b = png(with_adapter), png(base)
    check("a generation with the trained adapter", with_adapter.status == 200, (with_adapter.status,
                                                                              with_adapter.body[:300]))
    check("the base model generates too", base.status == 200, (base.status, base.body[:300]))
    if a and b:
        w, h = sc.png_decode(a)[:2]
        check("the image has the requested size", (w, h) == (32, 32), (w, h))
        check("the adapter changes the image", a != b)
    again = generate(svc, key, [{"id": adapter, "scale": 1.0}])
    check("the same request gives the same bytes", png(again) == a and a is not None)
    bad = generate(svc, key, [], size=40)
    check("a size that is not a multiple of 16 is refused with 400", bad.status == 400, (bad.status, bad.body[:200]))


if __name__ == "__main__":
    sys.exit(main())
