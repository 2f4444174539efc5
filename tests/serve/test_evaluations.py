"""Evaluations through the real service: `flashlora serve` with one worker, its private redis-server,
HTTP on loopback, the tiny test model and (through FLASHLORA_DATA_DIR) the tiny built-in-layout
encoder of the golden fixture.

  test_evaluations.py FLASHLORA SOURCE_DIR

Covers: an adapter trained through the API keeps its training images as references; POST
/v1/evaluations (JSON) runs as a job whose server-sent events show every stage and end with
succeeded; GET /v1/evaluations/{id} gives the evaluation JSON, .../report.html a self-contained
page with every image embedded; a references upload (multipart) for an imported adapter; another
tenant sees none of it (404); bad input answered with one clear error: an upload without a usable
image (400), an adapter without references (400), work over --max-evaluation-work (422, naming
the limit), unknown fields and encoders (400), a generation job's id (404), the report of an
evaluation that did not succeed (409). Ends with "N passed, N failed".
"""

import io
import json
import os
import shutil
import sys
import tempfile
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import service_client as sc  # noqa: E402

BIN, SRC = sys.argv[1], sys.argv[2]
MODEL = os.path.join(SRC, "tests/fixtures/flux_b.model.safetensors")
ENCODER = os.path.join(SRC, "tests/fixtures/builtin_vit/tiny.safetensors")
check = sc.Checks()


def image_zip(work, count=5):
    images = os.path.join(work, "images")
    sc.subprocess.check_call([sys.executable, os.path.join(SRC, "tests/trainer/make_images.py"), images, str(count)])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in sorted(os.listdir(images)):
            z.write(os.path.join(images, name), name)
    return buf.getvalue()


def run_all(svc, work):
    key_a, key_b = svc.key("acme"), svc.key("rival")
    archive = image_zip(work)
    body, ctype = sc.multipart({"trigger_word": "sks", "steps": 8, "rank": 2, "resolution": 16, "name": "logo"},
                               {"images": ("images.zip", archive)})
    r = sc.request(svc.base, "POST", "/v1/trainings", key_a, body, {"Content-Type": ctype})
    check("a training is accepted", r.status == 202, r.body)
    job = sc.wait_job(svc.base, key_a, r.json()["job_id"])
    check("the training succeeds", job["state"] == "succeeded", job)
    adapter = job["result"]["adapter_id"]
    refs = [n for n in os.listdir(os.path.join(svc.state, "refs"))] if os.path.isdir(os.path.join(svc.state, "refs")) else []
    check("its training images are kept as its references", len(refs) == 1 and refs[0].startswith(job["result"]["sha256"]),
          refs)

    small = {"prompts": ["a photo of [trigger]", "[trigger] on red"], "seeds": [1, 2], "width": 16, "height": 16,
             "steps": 3, "bootstrap": 50}
    r = sc.request(svc.base, "POST", "/v1/evaluations", key_a, dict(small, adapters=["logo"]))
    check("POST /v1/evaluations: 202 with its URLs", r.status == 202 and r.json()["report_url"].endswith("/report.html"),
          r.body)
    eid = r.json()["job_id"]
    evs = sc.events(svc.base, "/v1/jobs/%s/events" % eid, key_a)
    stages = {d.get("stage") for e, d in evs if e == "progress"}
    check("its events show every stage and end with succeeded", stages == {"generate", "embed", "score"} and
          evs[-1][0] == "succeeded", [e for e, _ in evs][-5:])
    r = sc.request(svc.base, "GET", "/v1/evaluations/" + eid, key_a)
    ev = r.json().get("evaluation") or {}
    a = (ev.get("adapters") or [{}])[0]
    ok = (r.status == 200 and r.json()["state"] == "succeeded" and a.get("adapter") == "logo" and a.get("n_gen") == 4
          and a.get("n_base") == 4 and a.get("n_refs") == 5 and a.get("refs_in_training") is True
          and 0 <= a["identity_accuracy"]["retrieval"] <= 1 and len(a["identity_accuracy"]["auc_ci"]) == 2
          and ev["encoder"]["kind"] == "builtin")
    check("GET /v1/evaluations/{id}: the evaluation JSON", ok, r.body[:400])
    r = sc.request(svc.base, "GET", "/v1/evaluations/%s/report.html" % eid, key_a)
    html = r.body.decode(errors="replace")
    check("the report: a self-contained page with every image", r.status == 200 and
          r.headers.get("Content-Type", "").startswith("text/html") and "<svg" in html and
          html.count("data:image/png;base64,") == 4 + 4 + 5 and "<script" not in html, html[:200])

    # another tenant sees nothing
    for path in ("/v1/evaluations/" + eid, "/v1/evaluations/%s/report.html" % eid, "/v1/jobs/" + eid):
        r = sc.request(svc.base, "GET", path, key_b)
        check("another tenant: %s is 404" % path.replace(eid, "{id}"), r.status == 404, r.status)
    r = sc.request(svc.base, "POST", "/v1/evaluations", key_b, dict(small, adapters=[adapter]))
    check("another tenant cannot evaluate the adapter (404)", r.status == 404, r.body)

    # an imported adapter has no training images: it needs an upload
    lora = os.path.join(work, "imported.safetensors")
    sc.write_lora(lora, MODEL, seed=3)
    with open(lora, "rb") as f:
        body, ctype = sc.multipart({"name": "imported", "trigger_word": "zq"}, {"file": ("imported.safetensors", f.read())})
    r = sc.request(svc.base, "POST", "/v1/adapters", key_a, body, {"Content-Type": ctype})
    check("an adapter is imported", r.status in (200, 201), r.body)
    r = sc.request(svc.base, "POST", "/v1/evaluations", key_a, dict(small, adapters=["imported"]))
    check("no references for an imported adapter: 404 naming the upload", r.status == 404 and
          "references" in r.json()["error"]["message"], r.body)
    body, ctype = sc.multipart({"adapters": "imported", "prompts": "a photo of [trigger]\n[trigger] on red",
                                "seeds": "1,2", "width": "16", "height": "16", "steps": "3", "distractors": "logo"},
                               {"references": ("refs.zip", archive)})
    r = sc.request(svc.base, "POST", "/v1/evaluations", key_a, body, {"Content-Type": ctype})
    check("a references upload (multipart) is accepted", r.status == 202, r.body)
    if r.status == 202:
        job = sc.wait_job(svc.base, key_a, r.json()["job_id"])
        ev = (sc.request(svc.base, "GET", "/v1/evaluations/" + r.json()["job_id"], key_a).json().get("evaluation") or {})
        a = (ev.get("adapters") or [{}])[0]
        check("it succeeds with the uploaded references and the distractor", job["state"] == "succeeded" and
              a.get("refs_in_training") is False and a.get("n_distractors") == 1 and
              set(a.get("confusion", {})) == {"imported", "logo"}, json.dumps(a)[:400])

    # bad input
    bad_zip = io.BytesIO()
    with zipfile.ZipFile(bad_zip, "w") as z:
        z.writestr("notes.txt", "no image here")
        z.writestr("broken.png", b"\x89PNG\r\n\x1a\nbroken")
    body, ctype = sc.multipart({"adapters": "logo"}, {"references": ("refs.zip", bad_zip.getvalue())})
    r = sc.request(svc.base, "POST", "/v1/evaluations", key_a, body, {"Content-Type": ctype})
    check("an upload without a usable image: 400", r.status == 400 and "no usable reference image" in
          r.json()["error"]["message"], r.body)
    r = sc.request(svc.base, "POST", "/v1/evaluations", key_a, {"adapters": ["logo"], "width": 256, "height": 256,
                                                               "steps": 100, "seeds": list(range(16))})
    check("work over the limit: 422 naming --max-evaluation-work", r.status == 422 and
          "--max-evaluation-work" in r.json()["error"]["message"], r.body)
    r = sc.request(svc.base, "POST", "/v1/evaluations", key_a, {"adapters": ["logo"], "colour": "red"})
    check("an unknown field: 400 naming it", r.status == 400 and "colour" in r.json()["error"]["message"], r.body)
    r = sc.request(svc.base, "POST", "/v1/evaluations", key_a, {"adapters": ["logo"], "encoder": "dino:/x"})
    check("an encoder the service does not offer: 400", r.status == 400 and "encoder" in r.json()["error"]["message"],
          r.body)
    r = sc.request(svc.base, "POST", "/v1/evaluations", key_a, {"adapters": []})
    check("no adapter: 400", r.status == 400, r.body)
    r = sc.request(svc.base, "POST", "/v1/evaluations", key_a, {"adapters": ["logo"], "prompts": ["x"] * 65})
    check("too many prompts: 400", r.status == 400 and "prompts" in r.json()["error"]["message"], r.body)
    g = sc.request(svc.base, "POST", "/v1/generations", key_a, {"prompt": "a photo", "width": 16, "height": 16,
                                                                "steps": 2, "seed": 1, "sync": True})
    gid = g.json().get("job_id", "")
    r = sc.request(svc.base, "GET", "/v1/evaluations/" + gid, key_a)
    check("a generation's id is no evaluation (404)", g.status == 200 and r.status == 404, (g.status, r.body))
    r = sc.request(svc.base, "GET", "/v1/evaluations/job_0000/report.html", key_a)
    check("an unknown evaluation's report: 404", r.status == 404, r.body)
    # a canceled evaluation has no report
    # (long enough that it cannot finish before the cancel arrives, under the default work limit:
    # 96 images of 32x32, 100 steps, 24 times the work of the evaluation that once finished first)
    r = sc.request(svc.base, "POST", "/v1/evaluations", key_a,
                   dict(small, adapters=["logo"], steps=100, width=32, height=32, seeds=list(range(16)),
                        prompts=["[trigger] number %d" % i for i in range(3)]))
    check("a long evaluation is accepted", r.status == 202, r.body[:300])
    cid = r.json().get("job_id", "")
    sc.request(svc.base, "POST", "/v1/jobs/%s/cancel" % cid, key_a)
    sc.wait_job(svc.base, key_a, cid, until=lambda j: j["state"] == "canceled")
    r = sc.request(svc.base, "GET", "/v1/evaluations/%s/report.html" % cid, key_a)
    check("a canceled evaluation's report: 409", r.status == 409, r.body)
    r = sc.request(svc.base, "GET", "/v1/evaluations/" + cid, key_a)
    check("a canceled evaluation: its state, no evaluation", r.status == 200 and r.json()["state"] == "canceled" and
          r.json()["evaluation"] is None, r.body)


def main():
    work = tempfile.mkdtemp(prefix="flashlora-eval-")
    data = os.path.join(work, "data")
    os.makedirs(os.path.join(data, "models", "builtin_encoder"))
    shutil.copy(ENCODER, os.path.join(data, "models", "builtin_encoder", "flashlora-vit.safetensors"))
    env = dict(os.environ, FLASHLORA_DATA_DIR=data)
    svc = sc.Service(BIN, MODEL, os.path.join(work, "state"), ["--workers", "1", "--batch-wait-ms", "50"], env=env)
    try:
        run_all(svc, work)
    except Exception as e:  # a broken service must fail the test, not hang it
        check("no exception", False, repr(e))
    finally:
        if svc.proc.poll() is None:
            svc.stop()
        shutil.rmtree(work, ignore_errors=True)
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
