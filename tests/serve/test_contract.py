"""The API contract, checked from outside: serve/openapi.yaml against the real `flashlora serve` on
the test model, with its private redis-server, over HTTP on loopback.

  test_contract.py FLASHLORA SOURCE_DIR BUILD_DIR [--examples N] [--keep]

1. Schemathesis 4 (PyPI, pinned below) runs every phase — examples, coverage, fuzzing, stateful —
   with `--checks all` as two tenants (the Web Fuzzing Commons auth file lists both as peers, so
   object-level authorization is checked: one tenant's adapters, jobs and images are 404 to the
   other). Bounded: N examples per operation (default 50), a fixed seed, one worker, a 170 s limit
   on the run. It fails on any failure, and on a "missing test data" warning (an operation that
   no link reaches with a real id). The schemathesis configuration and hooks are in
   tests/serve/contract/: the hooks give the two upload media types real content (a LoRA for the
   test model, small image archives), which no JSON Schema can describe; the configuration
   accepts 422 `limit_exceeded` as an answer to a schema-valid job request, since the limits on
   products of fields (work, memory) cannot be stated per field.
2. A scrape of GET /metrics after that traffic passes `promtool check metrics` (Debian
   `prometheus`) with no problem reported.
3. Direct checks of the defects this contract found: DELETE /v1/jobs/{id} removes a finished job
   (then 404) and refuses an unfinished one (409) while POST /v1/jobs/{id}/cancel cancels; a URL
   whose host does not resolve fails its job with `url_unreachable` naming the host; every event
   of a job's stream matches the documented event (JSON data whose `event` is the SSE event).

The service runs with the default flags except, to keep the run short on a CPU:
--max-generation-work 8192 (e.g. 32x32 at 8 steps: under a second), --max-training-work 4096,
--max-queue 8, --max-train-queue 2, --sync-timeout 15, --batch-wait-ms 1, --sweep-interval 1.
None of these changes a bound the description states per field; with them most random job requests
are 422, so schemathesis warns that POST /v1/trainings "mostly rejected generated data" (a warning
that does not fail the run). URL fetches never leave the
machine: the run happens in a new network namespace with only loopback (`unshare -rn`) where
available, else every fetch goes to a closed loopback proxy port.

Schemathesis is installed into BUILD_DIR/contract-venv on the first run (network is needed only
then) and reused after. Ends with "N passed, N failed".
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import service_client as sc  # noqa: E402

SCHEMATHESIS = "schemathesis==4.32.5"
RUN_LIMIT_S = 170
check = sc.Checks()


def venv_python(build):
    """The cached venv with schemathesis; created (pip, network) only when missing or stale."""
    venv = os.path.join(build, "contract-venv")
    stamp = os.path.join(venv, ".flashlora-installed")
    py = os.path.join(venv, "bin", "python")
    if os.path.exists(stamp) and open(stamp).read() == SCHEMATHESIS and os.path.exists(py):
        return py
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", SCHEMATHESIS], check=True)
    with open(stamp, "w") as f:
        f.write(SCHEMATHESIS)
    return py


def isolate_network(argv):
    """Re-runs this test in a new network namespace with only loopback (up), if it can be made."""
    if os.environ.get("FLASHLORA_CONTRACT_NETNS") or not shutil.which("unshare") or not shutil.which("ip"):
        return
    probe = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True)
    if probe.returncode != 0:
        return
    env = dict(os.environ, FLASHLORA_CONTRACT_NETNS="1")
    script = 'ip link set lo up && exec "$@"'
    os.execvpe("unshare", ["unshare", "-rn", "sh", "-c", script, "sh", sys.executable] + argv, env)


def seed_evaluation(base, key, work, model):
    """An adapter trained through the API (so it keeps its training images as references) and an
    evaluation of it run to success before schemathesis starts: "logo" is the adapter the
    description's example evaluation names, and the evaluation's id is what its GET routes are
    tested with. None if either fails."""
    import io
    import zipfile
    images = os.path.join(work, "seed-images")
    subprocess.check_call([sys.executable, os.path.join(HERE, "..", "trainer", "make_images.py"), images, "4"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in sorted(os.listdir(images)):
            z.write(os.path.join(images, name), name)
    body, ctype = sc.multipart({"trigger_word": "sks", "name": "logo", "steps": "16", "rank": "2", "resolution": "16"},
                               {"images": ("images.zip", buf.getvalue())})
    r = sc.request(base, "POST", "/v1/trainings", key, body, {"Content-Type": ctype})
    if r.status != 202 or sc.wait_job(base, key, r.json()["job_id"], timeout=120)["state"] != "succeeded":
        return None
    r = sc.request(base, "POST", "/v1/evaluations", key, {"adapters": ["logo"], "prompts": ["a photo of [trigger]"],
                                                         "seeds": [1], "width": 8, "height": 8, "steps": 1,
                                                         "bootstrap": 0})
    if r.status != 202:
        return None
    job = sc.wait_job(base, key, r.json()["job_id"], timeout=120)
    return job["id"] if job["state"] == "succeeded" else None


def schemathesis_run(py, src, base, work, keys, model, examples, evaluation="job_none"):
    """Runs schemathesis; returns (exit code, output)."""
    auth = {"auth": [{"name": tenant, "fixedHeaders": [{"name": "Authorization", "value": "Bearer " + key}]}
                     for tenant, key in keys]}
    auth_path = os.path.join(work, "auth.json")
    with open(auth_path, "w") as f:
        json.dump(auth, f)
    with open(os.path.join(HERE, "contract", "schemathesis.toml")) as f:
        config = f.read().replace("@AUTH@", auth_path).replace("@EVALUATION@", evaluation)
    config_path = os.path.join(work, "schemathesis.toml")
    with open(config_path, "w") as f:
        f.write(config)
    env = dict(os.environ, SCHEMATHESIS_HOOKS="hooks", PYTHONPATH=os.path.join(HERE, "contract"),
               FLASHLORA_CONTRACT_MODEL=model, NO_COLOR="1", HOME=work)
    st = os.path.join(os.path.dirname(py), "schemathesis")
    cmd = [st, "--config-file", config_path, "run", os.path.join(src, "serve", "openapi.yaml"), "--url", base,
           "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", str(examples),
           "--seed", "20240613", "--workers", "1", "--generation-database", "none", "--no-color", "--output-sanitize", "false",
           "--request-timeout", "30", "--report", "junit,ndjson", "--report-dir", os.path.join(work, "report")]
    print("+ " + " ".join(cmd), flush=True)
    t0 = time.time()
    try:
        p = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=RUN_LIMIT_S)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = -1, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += "\n(schemathesis did not finish within %d s)" % RUN_LIMIT_S
    print("schemathesis: exit %d in %.0f s" % (rc, time.time() - t0), flush=True)
    return rc, out


def sse_events(base, path, key, timeout=60):
    """The raw events of a stream: a list of {field: value} as an SSE client reads them."""
    req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + key})
    events, cur, data = [], {}, []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if data or cur:
                    cur["data"] = "\n".join(data)
                    events.append(cur)
                cur, data = {}, []
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "data":
                    data.append(value)
                else:
                    cur[field] = value
    return events


def drain(base, timeout=120):
    """Waits until no job is queued or running (what the fuzzer left behind)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pending = sc.request(base, "GET", "/healthz").json().get("pending", {})
        if not pending.get("generate") and not pending.get("train"):
            return True
        time.sleep(0.2)
    return False


def direct_checks(base, alpha, beta):
    check("the jobs the fuzzer queued all finish", drain(base))
    # A finished job is deleted with its events and images; an unfinished one is not.
    r = sc.request(base, "POST", "/v1/generations", alpha, {"prompt": "a mug", "width": 4, "height": 4, "steps": 2,
                                                           "seed": 3, "sync": True})
    ok = r.status == 200
    check("a small sync generation succeeds", ok, (r.status, r.body[:300]))
    if ok:
        job_id, image = r.json()["job_id"], r.json()["images"][0]["id"]
        events = sse_events(base, "/v1/jobs/%s/events" % job_id, alpha)
        good = bool(events)
        for ev in events:
            try:
                d = json.loads(ev.get("data", ""))
            except ValueError:
                d = None
            good = good and isinstance(d, dict) and d.get("event") == ev.get("event") and "id" in ev
        check("every event of a stream is JSON whose 'event' is the SSE event, with an id", good, events)
        r = sc.request(base, "DELETE", "/v1/jobs/" + job_id, beta)
        check("DELETE of another tenant's job -> 404", r.status == 404, r.status)
        r = sc.request(base, "DELETE", "/v1/jobs/" + job_id, alpha)
        check("DELETE of a finished job -> 200 {deleted}", r.status == 200 and r.json() == {"deleted": job_id},
              (r.status, r.body[:200]))
        gone = [sc.request(base, "GET", p, alpha).status
                for p in ("/v1/jobs/" + job_id, "/v1/jobs/%s/events" % job_id, "/v1/images/%s.png" % image)]
        check("after DELETE the job, its events and its image are 404", gone == [404, 404, 404], gone)
        r = sc.request(base, "POST", "/v1/jobs/%s/cancel" % job_id, alpha)
        check("a cancel of a deleted job -> 404", r.status == 404, r.status)
    # An unfinished job: DELETE cancels and deletes it (200 queued, 202 running; then 404). A
    # training over the work limit is 422, so queue a generation behind a URL import whose host
    # cannot resolve (fast in any network).
    r = sc.request(base, "POST", "/v1/adapters", alpha, {"url": "http://no-such-host.invalid/a.safetensors"})
    check("an import from a URL is accepted as a job", r.status == 202, (r.status, r.body[:200]))
    if r.status == 202:
        imp = r.json()["job_id"]
        job = sc.wait_job(base, alpha, imp, timeout=60)
        err = job.get("error") or {}
        check("a host that does not resolve fails the job with url_unreachable, naming the host",
              job.get("state") == "failed" and err.get("code") == "url_unreachable"
              and "no-such-host.invalid" in err.get("message", ""), job)
    r = sc.request(base, "POST", "/v1/generations", alpha, {"prompt": "queued", "width": 16, "height": 16,
                                                           "steps": 1, "num_images": 1})
    if r.status == 202:
        jid = r.json()["job_id"]
        d = sc.request(base, "DELETE", "/v1/jobs/" + jid, alpha)
        after = [sc.request(base, "GET", "/v1/jobs/" + jid, alpha).status,
                 sc.request(base, "POST", "/v1/jobs/%s/cancel" % jid, alpha).status,
                 sc.request(base, "DELETE", "/v1/jobs/" + jid, alpha).status]
        # 200 when it was still queued (or had finished already), 202 when it was running.
        check("DELETE of an unfinished job cancels and deletes it: 200 or 202, then GET, cancel and DELETE 404",
              (d.status == 200 and d.json() == {"deleted": jid}
               or d.status == 202 and d.json() == {"deleted": jid, "stopping": True}) and after == [404, 404, 404],
              (d.status, d.body[:200], after))
    else:
        check("a generation is accepted", False, (r.status, r.body[:200]))
    r = sc.request(base, "DELETE", "/v1/jobs/job_000000000000000000000000", alpha)
    check("DELETE of no job -> 404", r.status == 404, r.status)
    r = sc.request(base, "PUT", "/v1/jobs/job_000000000000000000000000/cancel", alpha)
    check("PUT on the cancel route -> 405 with Allow: POST", r.status == 405 and r.headers.get("Allow") == "POST",
          (r.status, r.headers))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    examples = 50
    if "--examples" in sys.argv:
        examples = int(sys.argv[sys.argv.index("--examples") + 1])
        args = [a for a in args if a != str(examples)]
    binary, src, build = (os.path.abspath(a) for a in args[:3])
    model = os.path.join(src, "tests/fixtures/flux_b.model.safetensors")
    for tool in ("redis-server", "promtool"):
        if not shutil.which(tool):
            check("%s is installed (scripts/install-deps.sh)" % tool, False)
            return check.finish()
    try:
        py = venv_python(build)
    except (subprocess.CalledProcessError, OSError) as e:
        check("schemathesis installs into the build directory's venv", False, e)
        return check.finish()
    isolate_network(sys.argv)
    work = tempfile.mkdtemp(prefix="flashlora-contract-")
    env = dict(os.environ)
    if not os.environ.get("FLASHLORA_CONTRACT_NETNS"):
        for var in ("http_proxy", "https_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
            env[var] = "http://127.0.0.1:9"
        env.pop("no_proxy", None)
        env.pop("NO_PROXY", None)
    print("network namespace of its own: %s" % ("yes" if os.environ.get("FLASHLORA_CONTRACT_NETNS") else
                                                  "no (fetches go to a closed loopback proxy)"), flush=True)
    # evaluations embed with the golden fixture's tiny encoder (fast; the shipped one is not needed)
    data = os.path.join(work, "data", "models", "builtin_encoder")
    os.makedirs(data)
    shutil.copy(os.path.join(src, "tests", "fixtures", "builtin_vit", "tiny.safetensors"),
                os.path.join(data, "flashlora-vit.safetensors"))
    env["FLASHLORA_DATA_DIR"] = os.path.join(work, "data")
    svc = sc.Service(binary, model, os.path.join(work, "state"),
                     ["--max-generation-work", "8192", "--max-training-work", "4096", "--max-queue", "8",
                      "--max-train-queue", "2", "--sync-timeout", "15", "--batch-wait-ms", "1",
                      "--sweep-interval", "1"], env=env)
    try:
        keys = [("acme", svc.key("acme")), ("globex", svc.key("globex"))]
        evaluation = seed_evaluation(svc.base, keys[0][1], work, model)
        check("an evaluation runs to success before schemathesis (the id its GET routes use)", evaluation is not None)
        rc, out = schemathesis_run(py, src, svc.base, work, keys, model, examples, evaluation or "job_none")
        failures = re.findall(r"^\s*(?:\d+\. Test Case ID|- ST\d+ .*)$", out, re.M)
        summary = out[out.rfind("SUMMARY"):] if "SUMMARY" in out else out[-3000:]
        print(out[-20000:] if rc != 0 else out[out.find("Examples ("):][:1200] + "\n" + summary[-2500:], flush=True)
        check("schemathesis: every phase, --checks all, two tenants: no failure", rc == 0,
              "exit %d; %s" % (rc, "; ".join(failures[:12]) or summary[-1500:]))
        check("schemathesis: no 'missing test data' warning", "Missing test data" not in out,
              out[out.find("Missing test data"):][:800])
        check("schemathesis: the stateful phase ran", re.search(r"Stateful \(in", out) is not None, summary[-800:])
        m = re.search(r"(\d+) generated", out)
        print("schemathesis: %s test cases" % (m.group(1) if m else "?"), flush=True)

        direct_checks(svc.base, keys[0][1], keys[1][1])

        r = sc.request(svc.base, "GET", "/metrics")
        path = os.path.join(work, "metrics.txt")
        with open(path, "wb") as f:
            f.write(r.body)
        p = subprocess.run(["promtool", "check", "metrics"], input=r.body, capture_output=True)
        problems = (p.stdout + p.stderr).decode(errors="replace").strip()
        check("promtool check metrics: no problem after the traffic", r.status == 200 and p.returncode == 0
              and not problems, problems[:1500])
        n = sum(1 for line in r.body.decode().splitlines() if line.startswith("flashlora_http_requests_total{"))
        check("the scrape counts the traffic by route and status", n >= 20, n)
    finally:
        code = svc.stop()
        check("serve exits cleanly", code == 0, code)
    if "--keep" not in sys.argv:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("kept " + work)
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
