"""Integration test of the job lifecycle: the real `flashlora serve` and `flashlora worker`
binaries, their private redis-server, real HTTP on loopback.

  test_lifecycle.py FLASHLORA SOURCE_DIR

Covers: per-tenant queue quotas (429 tenant_quota naming the setting, the other tenant still
admitted, a place freed by a cancel); POST /v1/jobs/{id}/cancel on a queued job (canceled at once,
a terminal SSE event, never started by a worker), on a running generation and a running training
(stopped at the next step, the worker free again, the training's upload and checkpoints gone), on
a finished job (409), another tenant's (404), and on a job whose worker died (the next worker
finishes it as canceled); an event stream given a far-future Last-Event-ID for a finished job
(it ends); a generation longer than the claim timeout with two workers (it runs once); a worker
stopped by SIGTERM in a long generation (it exits within --shutdown-timeout and the job goes back
to the queue), in a short one (it finishes it first), in a training (the checkpointed job is
resumed at once by another worker, not after the claim timeout), and by a second signal (it exits
at once); `serve` stopped by SIGTERM with a "sync" generation in flight (it exits within the
deadline); retention (a finished job, its events, image key and PNG removed after
--job-retention, the work stream trimmed) and the files of a job failed by the delivery cap removed
at once. Workers run with one thread. Ends with "N passed, N failed".
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import service_client as sc  # noqa: E402

BIN, SRC = sys.argv[1], sys.argv[2]
MODEL = os.path.join(SRC, "tests/fixtures/flux_b.model.safetensors")
ENV = dict(os.environ, FLASHLORA_THREADS="1")
# A generation that takes tens of seconds even on a fast machine: never allowed to finish here.
LONG = {"width": 64, "height": 64, "steps": 100, "num_images": 4}
check = sc.Checks()
ARCHIVE = []  # the training image set (a zip), made once


# ---- helpers ----------------------------------------------------------------------------------------


def redis(state, *args):
    """One command to the service's private redis-server (RESP over its unix socket)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(os.path.join(state, "redis", "redis.sock"))
    parts = [str(a).encode() for a in args]
    s.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
    f = s.makefile("rb")

    def read():
        line = f.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else f.read(n + 2)[:-2].decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [read() for _ in range(n)]
        raise RuntimeError("unexpected reply %r" % line)

    try:
        return read()
    finally:
        s.close()


def group_done(state, stream):
    """True when the workers' group has read every entry of the stream and acknowledged it."""
    group = redis(state, "XINFO", "GROUPS", stream)[0]
    info = dict(zip(group[::2], group[1::2]))
    return info.get("pending") == 0 and info.get("lag") == 0


def wait_until(pred, timeout, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    return pred()


def start_worker(state, *extra):
    log = open(state + ".worker.log", "ab")
    return subprocess.Popen([BIN, "worker", "--model", MODEL, "--state", state] + list(extra), stdout=log,
                            stderr=subprocess.STDOUT, env=ENV)


def stop_process(proc, sig=signal.SIGTERM, limit=30.0):
    """Sends sig and waits up to limit seconds; kills it past that. Returns (exit code, seconds);
    the code is None when it had to be killed."""
    t0 = time.time()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    return code, time.time() - t0


def gen(base, key, sync=False, **fields):
    body = {"prompt": "a photo of sks", "width": 16, "height": 16, "steps": 2, "seed": 3, "sync": sync}
    body.update(fields)
    return sc.request(base, "POST", "/v1/generations", key, body)


def job_of(base, key, job_id):
    r = sc.request(base, "GET", "/v1/jobs/" + job_id, key)
    return r.json() if r.status == 200 else {"status": r.status}


def state_is(base, key, job_id, *states):
    return lambda: job_of(base, key, job_id).get("state") in states


def redis_job_gone(state, job_id):
    """True once the job's record and its events are gone from Redis."""
    return not redis(state, "EXISTS", "fl:job:%s" % job_id) and not redis(state, "EXISTS", "fl:job:%s:events" % job_id)


def event_names(state, job_id):
    out = []
    for _, fields in redis(state, "XRANGE", "fl:job:%s:events" % job_id, "-", "+") or []:
        out.append(json.loads(fields[1]).get("event"))
    return out


def read_events(base, path, key, headers=None, timeout=10):
    """Reads a server-sent event stream; (event names, True) when it ended by itself, (names so far,
    False) when it stayed open past timeout."""
    hdrs = {"Authorization": "Bearer " + key}
    hdrs.update(headers or {})
    names = []
    try:
        req = urllib.request.Request(base + path, headers=hdrs)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            deadline = time.time() + timeout
            for raw in r:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    names.append(line[7:])
                if time.time() > deadline:
                    return names, False
        return names, True
    except (socket.timeout, TimeoutError, urllib.error.URLError):
        return names, False


def image_zip(work):
    images = os.path.join(work, "images")
    subprocess.check_call([sys.executable, os.path.join(SRC, "tests/trainer/make_images.py"), images, "4"])
    path = os.path.join(work, "images.zip")
    with zipfile.ZipFile(path, "w") as z:
        for name in sorted(os.listdir(images)):
            z.write(os.path.join(images, name), name)
    with open(path, "rb") as f:
        return f.read()


def train(base, key, steps=3000):
    form = {"trigger_word": "sks", "steps": steps, "rank": 2, "resolution": 16, "learning_rate": "0.001"}
    body, ctype = sc.multipart(form, {"images": ("images.zip", ARCHIVE[0])})
    return sc.request(base, "POST", "/v1/trainings", key, body, {"Content-Type": ctype})


def job_files(state, job_id):
    """The job's upload and checkpoint directory, those that exist."""
    found = [n for n in os.listdir(os.path.join(state, "uploads")) if n.startswith(job_id)]
    if os.path.exists(os.path.join(state, "jobs", job_id)):
        found.append("jobs/" + job_id)
    return found


# ---- the scenarios ------------------------------------------------------------------------------------


def quota_and_cancel(work, procs):
    """No worker yet: quotas, cancel of queued jobs, a finished job's event stream; then a worker,
    which never starts the canceled jobs."""
    svc, state = service(work, "quota_and_cancel", procs, "--workers", "0", "--max-queue-per-tenant", "3")
    alpha, beta = svc.key("alpha"), svc.key("beta")
    base = svc.base
    ids = []
    for _ in range(3):
        r = gen(base, alpha, **LONG)
        ids.append(r.json().get("job_id") if r.status == 202 else None)
    check("a tenant's jobs are accepted up to its quota", all(ids), ids)
    r = gen(base, alpha, **LONG)
    err = r.json().get("error", {}) if r.status == 429 else {}
    check("past its quota a tenant gets 429 tenant_quota naming the setting, with Retry-After",
          r.status == 429 and err.get("code") == "tenant_quota" and "--max-queue-per-tenant" in err.get("message", "")
          and r.headers.get("Retry-After"), (r.status, r.body[:300]))
    r = gen(base, beta, **LONG)
    beta_id = r.json().get("job_id") if r.status == 202 else None
    check("another tenant is still admitted", r.status == 202, r.body[:200])

    r = sc.request(base, "POST", "/v1/jobs/%s/cancel" % ids[0], alpha)
    body = r.json() if r.status == 200 else {}
    check("a cancel of a queued job -> 200, canceled at once",
          r.status == 200 and body.get("state") == "canceled" and body["error"]["code"] == "canceled", r.body[:300])
    names, ended = read_events(base, "/v1/jobs/%s/events" % ids[0], alpha)
    check("its event stream ends with a terminal 'canceled' event", ended and names[-1:] == ["canceled"], names)
    r = gen(base, alpha, **LONG)
    check("the canceled job's place in the quota is free again", r.status == 202, r.body[:200])
    ids.append(r.json().get("job_id") if r.status == 202 else None)

    r = sc.request(base, "POST", "/v1/jobs/%s/cancel" % ids[0], alpha)
    check("a cancel of a finished job -> 409", r.status == 409 and r.json()["error"]["code"] == "conflict", r.body[:200])
    r = sc.request(base, "POST", "/v1/jobs/%s/cancel" % ids[1], beta)
    check("a cancel of another tenant's job -> 404, and it is untouched",
          r.status == 404 and job_of(base, alpha, ids[1]).get("state") == "queued", r.body[:200])
    r = sc.request(base, "POST", "/v1/jobs/job_000000000000000000000000/cancel", alpha)
    check("a cancel of no job -> 404", r.status == 404, r.status)

    for j in ids[1:]:
        sc.request(base, "POST", "/v1/jobs/%s/cancel" % j, alpha)
    sc.request(base, "POST", "/v1/jobs/%s/cancel" % beta_id, beta)
    canceled = ids + [beta_id]
    metrics = sc.request(base, "GET", "/metrics").body.decode()
    check("/metrics counts canceled jobs", 'flashlora_jobs{state="canceled"} 5' in metrics,
          [line for line in metrics.splitlines() if line.startswith("flashlora_jobs")])
    procs.append(start_worker(state, "--claim-timeout", "1"))
    drained = wait_until(lambda: group_done(state, "fl:stream:generate"), 20)
    never = [job_of(base, alpha if j != beta_id else beta, j) for j in canceled]
    check("canceled queued jobs are never started by a worker",
          drained and all(j.get("state") == "canceled" and j.get("attempts") == 0 for j in never),
          [(j.get("state"), j.get("attempts")) for j in never])


def runs_once(work, procs):
    """Two workers with a 1 s claim timeout and a generation of several seconds."""
    svc, state = service(work, "runs_once", procs, "--workers", "0")
    alpha = svc.key("alpha")
    for _ in range(2):
        procs.append(start_worker(state, "--claim-timeout", "1"))
    base = svc.base
    t0 = time.time()
    r = gen(base, alpha, sync=True, width=128, height=128, steps=100, seed=11)
    took = time.time() - t0
    job = job_of(base, alpha, r.json().get("job_id", "x")) if r.status == 200 else {}
    names = event_names(state, job.get("id", "x"))
    check("a generation longer than the claim timeout (%.1f s) runs once and succeeds" % took,
          r.status == 200 and job.get("state") == "succeeded" and job.get("attempts") == 1
          and names.count("running") == 1 and took > 2, (r.status, r.body[:200], job.get("attempts"), names))
    path = "/v1/jobs/%s/events" % job.get("id", "x")
    names, ended = read_events(base, path, alpha, {"Last-Event-ID": "99999999999999-0"}, timeout=8)
    check("a finished job's event stream ends even with a far-future Last-Event-ID", ended, names)
    names, ended = read_events(base, path, alpha, {"Last-Event-ID": "0-1"}, timeout=8)
    check("a Last-Event-ID before the first event replays the stream to its end",
          ended and names[:1] == ["queued"] and names[-1:] == ["succeeded"], names)


def cancel_running(work, procs):
    svc, state = service(work, "cancel_running", procs, "--workers", "0")
    alpha = svc.key("alpha")
    procs.append(start_worker(state, "--claim-timeout", "1"))
    base = svc.base
    r = gen(base, alpha, **LONG)
    gid = r.json().get("job_id", "x")
    wait_until(state_is(base, alpha, gid, "running"), 20)
    time.sleep(0.3)
    t0 = time.time()
    r = sc.request(base, "POST", "/v1/jobs/%s/cancel" % gid, alpha)
    check("a cancel of a running job -> 202 with cancel_requested",
          r.status == 202 and r.json().get("cancel_requested") is True and r.json().get("state") == "running",
          r.body[:300])
    done = wait_until(state_is(base, alpha, gid, "canceled"), 20)
    took = time.time() - t0
    check("the running generation stops at its next step (canceled after %.1f s)" % took, done and took < 15,
          job_of(base, alpha, gid))
    names = event_names(state, gid)
    check("its events end cancel_requested, canceled", names[-2:] == ["cancel_requested", "canceled"], names)
    r = gen(base, alpha, sync=True)
    check("the worker is free for the next job", r.status == 200, r.body[:200])

    # DELETE of a running job: canceled like a cancel, gone from view at once, removed as it stops.
    r = gen(base, alpha, **LONG)
    did = r.json().get("job_id", "x")
    wait_until(state_is(base, alpha, did, "running"), 20)
    time.sleep(0.3)
    r = sc.request(base, "DELETE", "/v1/jobs/" + did, alpha)
    gone_now = sc.request(base, "GET", "/v1/jobs/" + did, alpha).status
    check("DELETE of a running job -> 202 stopping, and the job is 404 at once",
          r.status == 202 and r.json().get("stopping") is True and gone_now == 404, (r.status, r.body[:200], gone_now))
    removed = wait_until(lambda: redis_job_gone(state, did), 20)
    r = gen(base, alpha, sync=True)
    check("its worker stops it at the next step and its record goes (the worker is free again)",
          removed and r.status == 200, (removed, r.status))

    r = train(base, alpha)
    tid = r.json().get("job_id", "x") if r.status == 202 else "x"
    wait_until(lambda: job_of(base, alpha, tid).get("progress", {}).get("step", 0) >= 2, 30)
    had = job_files(state, tid)
    r = sc.request(base, "POST", "/v1/jobs/%s/cancel" % tid, alpha)
    done = wait_until(state_is(base, alpha, tid, "canceled"), 20)
    gone = wait_until(lambda: not job_files(state, tid), 10)
    check("a running training is canceled at its next step, its upload and checkpoints removed",
          r.status == 202 and done and had and gone, (r.status, job_of(base, alpha, tid).get("state"), had,
                                                       job_files(state, tid)))


def worker_shutdown(work, procs):
    svc, state = service(work, "worker_shutdown", procs, "--workers", "0")
    alpha = svc.key("alpha")
    base = svc.base
    w = start_worker(state, "--claim-timeout", "1", "--shutdown-timeout", "4")
    procs.append(w)
    wait_until(lambda: redis(state, "SCARD", "fl:workers") == 1, 20)
    code, took = stop_process(w, limit=10)
    check("an idle worker exits at once on SIGTERM (%.1f s)" % took, code == 0 and took < 3, code)
    w = start_worker(state, "--claim-timeout", "1", "--shutdown-timeout", "4")
    procs.append(w)
    r = gen(base, alpha, **LONG)
    gid = r.json().get("job_id", "x")
    wait_until(state_is(base, alpha, gid, "running"), 20)
    time.sleep(0.3)
    code, took = stop_process(w, limit=8)
    job = job_of(base, alpha, gid)
    names = event_names(state, gid)
    check("SIGTERM during a long generation: the worker exits within --shutdown-timeout 4 (%.1f s)" % took,
          code == 0 and took < 5.5, (code, took))
    check("the abandoned generation goes back to the queue", job.get("state") == "queued" and "requeued" in names,
          (job.get("state"), names))
    sc.request(base, "POST", "/v1/jobs/%s/cancel" % gid, alpha)

    w = start_worker(state, "--claim-timeout", "1", "--shutdown-timeout", "30")
    procs.append(w)
    r = gen(base, alpha, width=64, height=64, steps=20, seed=5)
    gid = r.json().get("job_id", "x")
    wait_until(state_is(base, alpha, gid, "running", "succeeded"), 20)
    time.sleep(0.5)  # sampling has begun (a job started but not yet sampling is handed back)
    code, took = stop_process(w, limit=40)
    job = job_of(base, alpha, gid)
    check("SIGTERM during a short generation: it finishes first, then the worker exits",
          code == 0 and job.get("state") == "succeeded" and job.get("attempts") == 1, (code, job.get("state")))

    w = start_worker(state, "--claim-timeout", "60", "--shutdown-timeout", "4", "--checkpoint-every", "1000")
    procs.append(w)
    r = train(base, alpha)
    tid = r.json().get("job_id", "x") if r.status == 202 else "x"
    wait_until(lambda: job_of(base, alpha, tid).get("progress", {}).get("step", 0) >= 3, 30)
    code, took = stop_process(w, limit=10)
    job = job_of(base, alpha, tid)
    check("SIGTERM during a training: it checkpoints, goes back to the queue, the worker exits (%.1f s)" % took,
          code == 0 and took < 5.5 and job.get("state") == "queued" and "requeued" in event_names(state, tid),
          (code, job.get("state")))
    w = start_worker(state, "--claim-timeout", "60", "--shutdown-timeout", "30")
    procs.append(w)

    def resumed():
        for _, fields in redis(state, "XRANGE", "fl:job:%s:events" % tid, "-", "+") or []:
            ev = json.loads(fields[1])
            if ev.get("event") == "start" and ev.get("resumed_at", 0) >= 3:
                return True
        return False

    check("another worker resumes it from its checkpoint at once, not after the claim timeout",
          wait_until(resumed, 20), event_names(state, tid))
    sc.request(base, "POST", "/v1/jobs/%s/cancel" % tid, alpha)
    wait_until(state_is(base, alpha, tid, "canceled"), 20)
    code, took = stop_process(w, limit=10)

    # A generation of a few seconds that the first signal lets finish (an hour to stop): the
    # second signal does not wait for it.
    w = start_worker(state, "--claim-timeout", "60", "--shutdown-timeout", "3600")
    procs.append(w)
    r = gen(base, alpha, width=64, height=64, steps=100, seed=9)
    gid = r.json().get("job_id", "x")
    wait_until(state_is(base, alpha, gid, "running"), 20)
    time.sleep(0.3)
    w.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    code, took = stop_process(w, limit=5)
    check("a second signal exits at once (%.1f s, status %s)" % (took, code), code == 128 + signal.SIGTERM, code)
    r = sc.request(base, "POST", "/v1/jobs/%s/cancel" % gid, alpha)
    w = start_worker(state, "--claim-timeout", "1")
    procs.append(w)
    done = wait_until(state_is(base, alpha, gid, "canceled"), 20)
    check("a canceled job whose worker died is finished as canceled by the next worker",
          r.status == 202 and done, (r.status, job_of(base, alpha, gid)))


def serve_shutdown(work, procs):
    svc, state = service(work, "serve_shutdown", procs, "--workers", "1", "--shutdown-timeout", "4")
    key = svc.key("alpha")
    result = {}

    def sync_call():
        result["r"] = gen(svc.base, key, sync=True, **LONG)

    t = threading.Thread(target=sync_call, daemon=True)
    t.start()
    wait_until(lambda: redis(state, "HGET", "fl:jobs:states", "running") == "1", 20)
    time.sleep(0.3)
    code, took = stop_process(svc.proc, limit=10)
    svc.log.close()
    t.join(5)
    r = result.get("r")
    check("serve exits within --shutdown-timeout 4 with a sync generation in flight (%.1f s)" % took,
          code == 0 and took < 5.5, (code, took))
    check("the waiting client gets an answer (503, the job carries on)",
          r is not None and r.status == 503 and "/v1/jobs/" in r.json()["error"]["message"],
          r and (r.status, r.body[:200]))


def retention(work, procs):
    svc, state = service(work, "retention", procs, "--workers", "1", "--job-retention", "2", "--sweep-interval",
                         "1", "--claim-timeout", "1")
    try:
        key = svc.key("alpha")
        base = svc.base
        # Files no job owns: an old upload, an old PNG and the old converted copy of a download
        # whose process died go; a fresh upload (its job may be being accepted right now) and a
        # fresh conversion (a download in progress) stay.
        orphans = {os.path.join(state, "uploads", "job_%024d.zip" % 1): True,
                   os.path.join(state, "images", "img_%024d.png" % 2): True,
                   os.path.join(state, "uploads", "job_%024d.zip" % 3): False,
                   os.path.join(state, "uploads", ".export-a1B2c3"): True,
                   os.path.join(state, "uploads", ".export-d4E5f6"): False}
        for path, old in orphans.items():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(b"x")
            if old:
                os.utime(path, (time.time() - 7200, time.time() - 7200))
        r = gen(base, key, sync=True)
        jid = r.json().get("job_id", "x") if r.status == 200 else "x"
        img = r.json()["images"][0]["id"] if r.status == 200 else "x"
        png = os.path.join(state, "images", img + ".png")
        ttl = redis(state, "TTL", "fl:job:" + jid)
        check("a finished job expires after --job-retention", r.status == 200 and os.path.exists(png)
              and 0 < ttl <= 2, (r.status, ttl))
        gone = wait_until(lambda: sc.request(base, "GET", "/v1/jobs/" + jid, key).status == 404
                          and not os.path.exists(png), 10, 0.2)
        check("then the job, its events, its image key and its PNG are gone",
              gone and redis(state, "EXISTS", "fl:job:%s:events" % jid) == 0
              and redis(state, "EXISTS", "fl:image:" + img) == 0
              and sc.request(base, "GET", "/v1/images/%s.png" % img, key).status == 404, os.path.exists(png))
        check("orphaned files are removed once they are old, a fresh one is kept",
              wait_until(lambda: all(os.path.exists(p) != old for p, old in orphans.items()), 5),
              {os.path.basename(p): os.path.exists(p) for p in orphans})
        check("the work stream is trimmed of acknowledged entries",
              wait_until(lambda: redis(state, "XLEN", "fl:stream:generate") == 0, 5), redis(state, "XLEN",
                                                                                            "fl:stream:generate"))
    finally:
        svc.stop()
    # A training failed by the delivery cap: its upload and checkpoints go with it.
    svc = sc.Service(BIN, MODEL, state, ["--workers", "0"], env=ENV)
    procs.append(svc.proc)
    try:
        key = svc.key("alpha")
        w = start_worker(state, "--claim-timeout", "1", "--checkpoint-every", "1")
        procs.append(w)
        r = train(svc.base, key)
        tid = r.json().get("job_id", "x") if r.status == 202 else "x"
        wait_until(lambda: job_of(svc.base, key, tid).get("progress", {}).get("step", 0) >= 2, 30)
        w.kill()
        w.wait()
        had = job_files(state, tid)
        w = start_worker(state, "--claim-timeout", "1", "--max-deliveries", "1")
        procs.append(w)
        failed_job = wait_until(state_is(svc.base, key, tid, "failed"), 20)
        gone = wait_until(lambda: not job_files(state, tid), 5)
        check("a training failed by the delivery cap loses its upload and checkpoints at once",
              failed_job and len(had) == 2 and gone, (had, job_files(state, tid)))
        stop_process(w)
    finally:
        svc.stop()


def service(work, name, procs, *extra):
    """`flashlora serve` on its own state directory; stopped (or killed) with procs at the end. The
    long generations these tests need are over the default work limit of a CPU service."""
    state = os.path.join(work, name)
    svc = sc.Service(BIN, MODEL, state, ["--max-generation-work", str(1 << 40)] + list(extra), env=ENV)
    procs.append(svc.proc)
    return svc, state


SCENARIOS = [quota_and_cancel, runs_once, cancel_running, worker_shutdown, serve_shutdown, retention]


def main():
    work = tempfile.mkdtemp(prefix="flashlora-lifecycle-")
    ARCHIVE.append(image_zip(work))
    chosen = [f for f in SCENARIOS if len(sys.argv) < 4 or f.__name__ in sys.argv[3:]]
    t0 = time.time()
    for scenario in chosen:
        procs = []
        failed_before = check.failed
        try:
            scenario(work, procs)
        except Exception as e:  # noqa: BLE001 - a scenario that breaks is one failure, the others still run
            check(scenario.__name__ + " ran to its end", False, repr(e))
        finally:
            for p in reversed(procs):  # workers first, then their service (SIGTERM, then SIGKILL)
                if p.poll() is None:
                    stop_process(p, limit=10)
        if check.failed > failed_before:
            for log in sorted(os.listdir(work)):
                if log.startswith(scenario.__name__ + ".") and log.endswith(".log"):
                    with open(os.path.join(work, log), errors="replace") as f:
                        print("---- %s (last lines)\n%s" % (log, "".join(f.readlines()[-15:])))
    shutil.rmtree(work, ignore_errors=True)
    print("lifecycle test took %.1f s" % (time.time() - t0))
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
