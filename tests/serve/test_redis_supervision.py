"""Integration test of Redis supervision and of a full disk: the real `flashlora serve` and
`flashlora worker` binaries, real redis-servers, real HTTP on loopback.

  test_redis_supervision.py FLASHLORA SOURCE_DIR

The private redis-server is started through a small wrapper (FL_REDIS_SERVER) that reads a control
file at each start: "normal", "fail" (exit at once: a crash loop) or "fsize:BYTES" (a file-size
limit with SIGXFSZ ignored, so its append-only file cannot grow: a full disk, without mounting
anything). Covers:
  - redis-server killed with SIGKILL: restarted, reported in /healthz and /metrics, every job
    answered 202 before the kill still there and completed by a worker;
  - a crash loop: restarts slowed by the backoff, visible in /healthz, recovered when it ends;
  - /healthz counts only workers with a live heartbeat and prunes the dead ones;
  - a Redis flushed under the service: a job accepted before any worker recreated the consumer
    group still runs;
  - the private Redis's disk full (AOF writes fail): 507 with the reason, nothing accepted lost,
    service back once there is room;
  - the service's own disk full (a file-size limit on the process): adapter import and training
    upload answer 507, leave nothing behind, and the process lives;
  - a shared Redis refusing writes (MISCONF after a failed snapshot): 507 with the reason.
Ends with "N passed, N failed".
"""

import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import service_client as sc  # noqa: E402

BIN, SRC = sys.argv[1], sys.argv[2]
MODEL = os.path.join(SRC, "tests/fixtures/flux_b.model.safetensors")
REDIS = shutil.which("redis-server")
check = sc.Checks()


def until(fn, timeout, step=0.05):
    """Polls fn() until it returns something true (returned) or timeout seconds pass (None)."""
    deadline = time.time() + timeout
    while True:
        try:
            v = fn()
        except (OSError, ValueError, RuntimeError):
            v = None
        if v or time.time() > deadline:
            return v
        time.sleep(step)


def health(svc):
    r = sc.request(svc.base, "GET", "/healthz", timeout=30)
    return r.status, r.json()


def rd(h):
    """The "redis" object of a /healthz answer ({} when there is none)."""
    return h.get("redis") if isinstance(h, dict) and isinstance(h.get("redis"), dict) else {}


def metric(svc, name):
    for line in sc.request(svc.base, "GET", "/metrics", timeout=30).body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def generate(svc, key, seed, steps=2):
    return sc.request(svc.base, "POST", "/v1/generations", key,
                      {"prompt": "a photo", "width": 16, "height": 16, "steps": steps, "seed": seed}, timeout=60)


def write_wrapper(work):
    """The redis-server wrapper and its control file."""
    control = os.path.join(work, "redis-control")
    path = os.path.join(work, "redis-wrapper.sh")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n"
                "mode=$(cat '%s' 2>/dev/null)\n"
                "case \"$mode\" in\n"
                "  fail) echo 'test wrapper: redis-server refuses to start' >&2; exit 1 ;;\n"
                "  fsize:*) trap '' XFSZ; ulimit -f \"${mode#fsize:}\" ;;\n"
                "esac\n"
                "exec '%s' \"$@\"\n" % (control, REDIS))
    os.chmod(path, 0o755)
    set_mode(control, "normal")
    return path, control


def set_mode(control, mode):
    with open(control, "w") as f:
        f.write(mode)


def redis_pid(svc):
    pids = sc.child_pids(svc.proc.pid, "redis-server")
    return pids[0] if len(pids) == 1 else None


def wait_jobs(svc, key, ids, timeout=90):
    """The final states of the jobs, waiting for all of them up to timeout seconds in total."""
    deadline, states = time.time() + timeout, {}
    while time.time() < deadline and len(states) < len(ids):
        for j in ids:
            if j not in states:
                r = sc.request(svc.base, "GET", "/v1/jobs/" + j, key)
                if r.status == 200 and r.json()["state"] in ("succeeded", "failed"):
                    states[j] = r.json()["state"]
        time.sleep(0.1)
    return [states.get(j, "not finished") for j in ids]


def private_service(work, name, wrapper, procs, services):
    """flashlora serve (no in-process worker) on its own state, its redis-server through the wrapper."""
    state = os.path.join(work, name)
    env = dict(os.environ, FL_REDIS_SERVER=wrapper)
    svc = sc.Service(BIN, MODEL, state, ["--workers", "0", "--redis-backoff-ms", "100",
                                         "--redis-backoff-max-ms", "1000", "--max-queue-per-tenant", "0"], env=env)
    services.append(svc)
    return svc, state, os.path.join(state, "redis", "redis.sock")


def random_png(width, height, seed):
    """An RGB PNG of noise (incompressible: its size is about width * height * 3 bytes)."""
    raw = b"".join(b"\0" + os.urandom(width * 3) for _ in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b""))


def main():
    work = tempfile.mkdtemp(prefix="flashlora-redis-")
    procs, services = [], []
    try:
        wrapper, control = write_wrapper(work)
        for section in (lambda: kill_tests(work, wrapper, control, procs, services),
                        lambda: workers_and_flush_tests(work, wrapper, procs, services),
                        lambda: aof_disk_full_tests(work, wrapper, control, procs, services),
                        lambda: service_disk_full_tests(work, services),
                        lambda: shared_redis_misconf_tests(work, procs, services)):
            set_mode(control, "normal")
            try:
                section()
            except Exception:  # a section that cannot go on is one failure; the others still run
                check("the section runs to its end", False, traceback.format_exc())
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for svc in services:
            if svc.proc.poll() is None:
                svc.stop()
        if check.failed:
            for name in sorted(os.listdir(work)):
                if name.endswith(".log"):
                    with open(os.path.join(work, name), errors="replace") as f:
                        print("---- %s (last lines)\n%s" % (name, "".join(f.readlines()[-20:])))
            for name in ("state-kill", "state-aof"):
                rlog = os.path.join(work, name, "redis", "redis.log")
                if os.path.exists(rlog):
                    with open(rlog, errors="replace") as f:
                        print("---- %s redis.log (last lines)\n%s" % (name, "".join(f.readlines()[-20:])))
        shutil.rmtree(work, ignore_errors=True)
    return check.finish()


def kill_tests(work, wrapper, control, procs, services):
    """The private redis-server killed with SIGKILL, then crash-looping."""
    svc, state, sock = private_service(work, "state-kill", wrapper, procs, services)
    key = svc.key("alpha")
    status, h = health(svc)
    check("healthz: ok, the private Redis supervised, no restarts",
          status == 200 and h["status"] == "ok" and rd(h).get("supervised") is True
          and rd(h).get("restarts") == 0 and rd(h).get("aof") == "ok", h)

    # ---- SIGKILL: restarted, reported, nothing accepted lost ----------------------------------------------
    accepted = []
    for seed in range(6):
        r = generate(svc, key, seed)
        if r.status == 202:
            accepted.append(r.json()["job_id"])
    check("six generations accepted (202) before the kill", len(accepted) == 6, accepted)
    first = redis_pid(svc)
    os.kill(first, signal.SIGKILL)
    r = sc.request(svc.base, "GET", "/v1/jobs/" + accepted[0], key, timeout=30)
    check("a request just after the kill waits for the restart or is a 503 naming it (never a 500)",
          r.status == 200 or (r.status == 503 and "restart" in r.json()["error"]["message"]), (r.status, r.body[:300]))
    h = until(lambda: (lambda s, j: j if s == 200 and rd(j).get("restarts", 0) >= 1
                       and rd(j).get("status") == "up" else None)(*health(svc)), 20)
    check("redis-server is restarted after SIGKILL and healthz says so",
          h and rd(h).get("restarts") == 1 and rd(h).get("status") == "up"
          and "signal 9" in (rd(h).get("last_error") or ""), h)
    check("healthz is degraded with the reason until the restarted server is stable",
          h and h["status"] == "degraded" and "signal 9" in h.get("reason", ""), h)
    second = redis_pid(svc)
    check("a new redis-server process runs", second and second != first, (first, second))
    check("metrics: flashlora_redis_up 1, flashlora_redis_restarts_total 1, AOF ok",
          metric(svc, "flashlora_redis_up") == 1 and metric(svc, "flashlora_redis_restarts_total") == 1
          and metric(svc, "flashlora_redis_aof_last_write_ok") == 1 and metric(svc, "flashlora_redis_supervised") == 1)
    jobs = [sc.request(svc.base, "GET", "/v1/jobs/" + j, key) for j in accepted]
    check("every job answered 202 before the kill is still there",
          all(j.status == 200 and j.json()["state"] == "queued" for j in jobs), [j.status for j in jobs])
    r = generate(svc, key, 100)
    check("a job is accepted after the restart", r.status == 202, r.body[:300])
    if r.status == 202:
        accepted.append(r.json()["job_id"])
    worker = sc.start_worker(BIN, MODEL, state)
    procs.append(worker)
    done = wait_jobs(svc, key, accepted)
    check("every accepted job completes", all(d == "succeeded" for d in done), done)
    h = until(lambda: (lambda s, j: j if s == 200 and j["status"] == "ok" else None)(*health(svc)), 10)
    check("healthz is ok again once the server stayed up (2 x the longest backoff)", h, health(svc))

    # ---- a crash loop: slow, visible, recovered --------------------------------------------------------------
    set_mode(control, "fail")
    before = rd(health(svc)[1]).get("restarts", 0)
    os.kill(redis_pid(svc), signal.SIGKILL)
    time.sleep(3)
    status, h = health(svc)
    loops = rd(h).get("restarts", 0) - before
    check("a crash loop is visible in healthz: unavailable, the reason, restarts counted",
          status == 503 and h["status"] == "unavailable" and "status 1" in (rd(h).get("last_error") or "")
          and loops >= 2, h)
    check("and slowed by the backoff (%d restarts in 3 s; at most 1 s apart once it grew)" % loops, loops <= 8, loops)
    r = sc.request(svc.base, "GET", "/v1/jobs/" + accepted[0], key)
    check("meanwhile the API answers 503 naming the restart", r.status == 503
          and r.json()["error"]["code"] == "unavailable" and "restart" in r.json()["error"]["message"], r.body[:300])
    set_mode(control, "normal")
    h = until(lambda: (lambda s, j: j if s == 200 and rd(j).get("status") == "up" else None)(*health(svc)), 10)
    check("the crash loop ends when redis-server can start again", h, health(svc))
    r = generate(svc, key, 200)
    d = wait_jobs(svc, key, [r.json()["job_id"]], 60) if r.status == 202 else []
    check("the service and the running worker work again", d == ["succeeded"], (r.status, d))
    worker.terminate()
    worker.wait(timeout=60)
    check("SIGTERM still stops the service cleanly", svc.stop() == 0)
    check("and its redis-server with it", not sc.child_pids(svc.proc.pid, "redis-server"))


def workers_and_flush_tests(work, wrapper, procs, services):
    """/healthz counts live workers only; a Redis flushed under the service."""
    svc, state, sock = private_service(work, "state-flush", wrapper, procs, services)
    key = svc.key("alpha")
    worker = sc.start_worker(BIN, MODEL, state)
    procs.append(worker)
    until(lambda: health(svc)[1]["workers"] == 1, 30)
    sc.redis_call(sock, "SADD", "fl:workers", "ghost-worker")  # a member whose heartbeat expired
    status, h = health(svc)
    check("healthz counts only workers with a live heartbeat", status == 200 and h["workers"] == 1, h)
    check("and removes the dead member", sc.redis_call(sock, "SISMEMBER", "fl:workers", "ghost-worker") == 0)
    worker.terminate()
    worker.wait(timeout=60)

    sc.redis_call(sock, "FLUSHALL")
    key = svc.key("alpha")  # the old key went with the data
    r = generate(svc, key, 300)
    check("after FLUSHALL a generation is accepted", r.status == 202, r.body[:300])
    worker = sc.start_worker(BIN, MODEL, state)
    procs.append(worker)
    d = wait_jobs(svc, key, [r.json()["job_id"]], 30) if r.status == 202 else []
    check("a job accepted before any worker recreated the consumer group still runs", d == ["succeeded"], d)
    worker.terminate()
    worker.wait(timeout=60)
    svc.stop()


def aof_disk_full_tests(work, wrapper, control, procs, services):
    """The private Redis's disk full: its append-only file cannot grow (a file-size limit)."""
    svc, state, sock = private_service(work, "state-aof", wrapper, procs, services)
    key = svc.key("alpha")
    r = generate(svc, key, 1)
    check("a job is accepted before the disk fills", r.status == 202, r.body[:300])
    accepted = [r.json()["job_id"]] if r.status == 202 else []
    rdir = os.path.join(state, "redis")
    sizes = [os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(rdir) for f in fs
             if not f.endswith(".sock")]
    limit = max(sizes) + 24 * 1024
    set_mode(control, "fsize:%d" % (limit // 512))
    os.kill(redis_pid(svc), signal.SIGKILL)
    until(lambda: (lambda s, j: s == 200 and rd(j).get("status") == "up")(*health(svc)), 10)
    refused = None
    for seed in range(400):
        r = generate(svc, key, 1000 + seed)
        if r.status != 202:
            refused = r
            break
        accepted.append(r.json()["job_id"])
    body = refused.json() if refused is not None and refused.body[:1] == b"{" else {}
    check("a full disk under Redis is a 507 with the reason (after %d jobs accepted)" % len(accepted),
          refused is not None and refused.status == 507 and body["error"]["code"] == "insufficient_storage"
          and "disk is full" in body["error"]["message"], (refused and refused.status, refused and refused.body[:400]))
    status, h = health(svc)
    check("healthz: unavailable, storage full, the reason", status == 503 and rd(h).get("storage_full") is True
          and "disk is full" in h.get("reason", ""), h)
    check("metrics: flashlora_redis_storage_full 1", metric(svc, "flashlora_redis_storage_full") == 1)
    set_mode(control, "normal")
    h = until(lambda: (lambda s, j: j if s == 200 and rd(j).get("status") == "up" else None)(*health(svc)), 15)
    r = generate(svc, key, 5000)
    check("once there is room Redis is back and writes succeed",
          h and rd(h).get("storage_full") is False and metric(svc, "flashlora_redis_storage_full") == 0
          and r.status == 202, (health(svc), r.status))
    if r.status == 202:
        accepted.append(r.json()["job_id"])
    jobs = [sc.request(svc.base, "GET", "/v1/jobs/" + j, key) for j in accepted]
    check("every job answered 202 before the disk filled is still there",
          accepted and all(j.status == 200 for j in jobs), [j.status for j in jobs])
    worker = sc.start_worker(BIN, MODEL, state)
    procs.append(worker)
    done = wait_jobs(svc, key, accepted)
    check("and completes", all(d == "succeeded" for d in done), done)
    worker.terminate()
    worker.wait(timeout=60)
    svc.stop()


def service_disk_full_tests(work, services):
    """The serve process itself under a file-size limit of 512 KiB (its redis-server inherits it):
    writes of the adapter store and of uploads fail with EFBIG, as on a full disk."""
    limited = os.path.join(work, "flashlora-limited.sh")
    with open(limited, "w") as f:
        f.write("#!/bin/sh\nulimit -f 1024\nexec '%s' \"$@\"\n" % BIN)
    os.chmod(limited, 0o755)
    state = os.path.join(work, "state-fsize")
    svc = sc.Service(limited, MODEL, state, ["--workers", "0"])
    services.append(svc)
    key = svc.key("beta")
    big = os.path.join(work, "big.safetensors")
    header = sc.safetensors_header(MODEL)
    linears = sorted(k[:-len(".weight")] for k, v in header.items()
                     if k.endswith(".weight") and isinstance(v, dict) and len(v["shape"]) == 2 and "blocks" in k)
    sc.write_lora(big, MODEL, 7, rank=64, modules=linears)
    with open(big, "rb") as f:
        data = f.read()
    body, ctype = sc.multipart({"name": "big"}, {"file": ("big.safetensors", data)})
    try:
        r = sc.request(svc.base, "POST", "/v1/adapters", key, body, {"Content-Type": ctype})
    except OSError as e:
        r = sc.Response(0, {}, str(e).encode())
    err = r.json()["error"] if r.body[:1] == b"{" else {}
    check("an adapter import larger than the disk's room is a 507 (%d bytes)" % len(data),
          r.status == 507 and err.get("code") == "insufficient_storage" and "disk is full" in err.get("message", "")
          and "/" not in err.get("message", ""), (r.status, r.body[:300]))
    check("the serve process lives on", svc.proc.poll() is None and health(svc)[0] == 200, svc.proc.poll())
    lst = sc.request(svc.base, "GET", "/v1/adapters", key).json()
    blobs = os.path.join(state, "store", "blobs")
    left = [f for dp, _, fs in os.walk(blobs) for f in fs]
    check("and nothing is left of it (no registry entry, no file)", lst.get("total") == 0 and not left, (lst, left))
    archive = os.path.join(work, "noise.zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for i in range(8):
            z.writestr("img%d.png" % i, random_png(160, 160, i))
    with open(archive, "rb") as f:
        body, ctype = sc.multipart({"trigger_word": "sks", "steps": 5, "resolution": 16},
                                   {"images": ("noise.zip", f.read())})
    try:
        r = sc.request(svc.base, "POST", "/v1/trainings", key, body, {"Content-Type": ctype})
    except OSError as e:
        r = sc.Response(0, {}, str(e).encode())
    err = r.json()["error"] if r.body[:1] == b"{" else {}
    uploads = os.listdir(os.path.join(state, "uploads")) if os.path.isdir(os.path.join(state, "uploads")) else []
    check("a training upload larger than the disk's room is a 507, nothing queued or left",
          r.status == 507 and err.get("code") == "insufficient_storage" and not uploads
          and svc.proc.poll() is None and metric(svc, "flashlora_queue_depth{queue=\"train\"}") == 0,
          (r.status, r.body[:300], uploads))
    with open(os.path.join(SRC, "tests/fixtures/flux_b.lora.safetensors"), "rb") as f:
        body, ctype = sc.multipart({"name": "small"}, {"file": ("small.safetensors", f.read())})
    r = sc.request(svc.base, "POST", "/v1/adapters", key, body, {"Content-Type": ctype})
    check("a write that fits still succeeds", r.status == 201, r.body[:300])
    check("the limited service stops cleanly", svc.stop() == 0)


def shared_redis_misconf_tests(work, procs, services):
    """A shared Redis whose snapshot failed refuses writes (MISCONF): the API answers 507."""
    rdir = os.path.join(work, "shared-redis")
    os.makedirs(rdir)
    sock = os.path.join(rdir, "redis.sock")
    # A soft file-size limit of 64 KiB for the snapshot (SIGXFSZ ignored: the write fails instead).
    cmd = ("trap '' XFSZ; ulimit -S -f 128; exec '%s' --port 0 --unixsocket '%s' --dir '%s' --appendonly no "
           "--save '3600 1' --logfile '%s'" % (REDIS, sock, rdir, os.path.join(rdir, "redis.log")))
    redis = subprocess.Popen(["/bin/sh", "-c", cmd])
    procs.append(redis)
    until(lambda: os.path.exists(sock), 20)
    svc = sc.Service(BIN, MODEL, os.path.join(work, "state-shared"), ["--redis", "unix:" + sock, "--workers", "0"])
    services.append(svc)
    key = subprocess.check_output([BIN, "keys", "create", "--tenant", "gamma", "--redis", "unix:" + sock],
                                  text=True).strip()
    check("a service on the shared Redis accepts a job", generate(svc, key, 1).status == 202)
    sc.redis_call(sock, "SET", "filler", os.urandom(256 * 1024))
    try:
        sc.redis_call(sock, "BGSAVE")
    except RuntimeError:
        pass
    until(lambda: b"rdb_last_bgsave_status:err" in sc.redis_call(sock, "INFO", "persistence"), 20)
    r = generate(svc, key, 2)
    err = r.json().get("error", {}) if r.body[:1] == b"{" else {}
    check("writes refused by Redis (MISCONF) are a 507 with the reason",
          r.status == 507 and err.get("code") == "insufficient_storage" and "disk" in err.get("message", ""),
          (r.status, r.body[:300]))
    status, h = health(svc)
    check("healthz: degraded, Redis cannot persist", status == 200 and h["status"] == "degraded"
          and rd(h).get("storage_full") is True and rd(h).get("supervised") is False, h)
    sc.redis_call(sock, "CONFIG", "SET", "stop-writes-on-bgsave-error", "no")
    check("writes succeed again once Redis accepts them", generate(svc, key, 3).status == 202)
    svc.stop()
    redis.kill()  # SIGTERM would try (and fail) to save the snapshot first
    redis.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
