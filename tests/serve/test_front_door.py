"""The service's front door against hostile clients: the real `flashlora serve` binary (API only,
no worker), its private redis-server, real sockets on loopback.

  test_front_door.py FLASHLORA SOURCE_DIR [MODEL]

Covers, each as a client would do it:
  - a multipart body of 300,000 one-byte parts without a key is answered 401 from its head, before
    the body is sent, and the serve process's peak RSS does not grow (bound: 4 MiB); with a key,
    50,000 parts are refused (413) and the peak grows by at most the body plus 8 MiB; unknown
    routes and wrong methods are answered from the head too, and a chunked body where a route
    takes none is refused before it is read;
  - 25 connections trickling their headers from five other loopback addresses (127.0.0.2-6) while
    /healthz is polled with --max-connections 20: every poll answers within 1 s, and the tricklers
    get a JSON 408 once --header-timeout (3 s) has passed; one address holding more than
    --max-client-connections gets a JSON 429;
  - 20 open event streams fill --max-connections: one more request gets a JSON 503 with
    Retry-After, while /healthz and /metrics still answer (the ops reserve);
  - /v1/jobs/<id>:events is 404 (it named the job's event stream in Redis and answered 500);
  - HEAD on GET routes answers like GET without a body (and HEAD on an adapter deletes nothing);
  - heads libmicrohttpd would refuse in HTML (HTTP/2.0, 40 KiB of headers, a 40 KiB URI, HTTP/1.1
    without Host) and heads it would accept wrongly (two different Content-Lengths, Content-Length
    with chunked) are answered with our JSON error;
  - a quoted multipart boundary (boundary="...") is understood;
  - no response shows a path of the server's file system (an upload whose filename makes the
    server path unwritable).
Flags the binary does not know (older builds) are left out, so each case fails for its own reason
there. Ends with "N passed, N failed".
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import service_client as sc  # noqa: E402

BIN, SRC = sys.argv[1], sys.argv[2]
# the base model: argument 3 (the release build passes the embedded default), else the tiny test model
MODEL = sys.argv[3] if len(sys.argv) > 3 else os.path.join(SRC, "tests/fixtures/flux_b.model.safetensors")
BOUNDARY = b"----flashlora-front-door"
check = sc.Checks()


# ---- raw HTTP ---------------------------------------------------------------------------------------------


def connect(port, source=None, timeout=10):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def read_response(s, timeout=10):
    """(status, headers with lower-case names, body) of the response on s; status None when the
    server closed or stayed silent without answering."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", "-1"))
                if 0 <= n <= len(body):
                    return int(lines[0].split()[1]), headers, body[:n]
    except (socket.timeout, ConnectionError, OSError):
        pass
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None, {}, data
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def raw(port, data, source=None, timeout=10):
    s = connect(port, source, timeout)
    try:
        s.sendall(data)
        return read_response(s, timeout)
    finally:
        s.close()


def error_code(body):
    try:
        return json.loads(body)["error"]["code"]
    except Exception:  # noqa: BLE001
        return None


def is_json_error(status, headers, body, want_status):
    return status == want_status and headers.get("content-type", "").startswith("application/json") and \
        error_code(body) is not None


# ---- the serve process's memory ---------------------------------------------------------------------------


def proc_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak(pid):
    """Resets VmHWM to the current RSS (Linux: clear_refs 5); returns the RSS in KiB."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
    except OSError:
        pass
    return proc_kib(pid, "VmRSS")


def many_parts(n):
    one = b'--' + BOUNDARY + b'\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n'
    return one * n + b"--" + BOUNDARY + b"--\r\n"


def post_head(path, length, key=None, ctype="multipart/form-data; boundary=" + BOUNDARY.decode()):
    auth = "Authorization: Bearer %s\r\n" % key if key else ""
    return ("POST %s HTTP/1.1\r\nHost: t\r\n%sContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (path, auth, ctype, length)).encode()


def send_parts(port, pid, n, key=None, early_s=2.0):
    """Sends the head of an n-part form, waits early_s for an answer without sending the body (an
    answer then came from the head alone), else sends the body and waits for the answer. Returns
    (status, body, answered_from_head, peak growth in MiB, body bytes)."""
    body = many_parts(n)
    before = reset_peak(pid)
    s = connect(port, timeout=60)
    try:
        s.sendall(post_head("/v1/trainings", len(body), key))
        status, _, rbody = read_response(s, early_s)
        early = status is not None
        if not early:
            sender = threading.Thread(target=lambda: s.sendall(body), daemon=True)
            sender.start()
            status, _, rbody = read_response(s, 120)
    except OSError:
        status, rbody, early = None, b"", False
    finally:
        s.close()
    time.sleep(0.3)
    growth = (proc_kib(pid, "VmHWM") - before) / 1024.0
    return status, rbody, early, growth, len(body)


# ---- helpers ------------------------------------------------------------------------------------------------


def image_zip(work, count=5):
    images = os.path.join(work, "images")
    subprocess.check_call([sys.executable, os.path.join(SRC, "tests/trainer/make_images.py"), images, str(count)])
    path = os.path.join(work, "images.zip")
    with zipfile.ZipFile(path, "w") as z:
        for name in sorted(os.listdir(images)):
            z.write(os.path.join(images, name), name)
    with open(path, "rb") as f:
        return f.read()


def supported_flags(flags):
    """The flags (name, value) this build of flashlora serve knows."""
    text = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True).stdout
    out = []
    for name, value in flags:
        if name in text:
            out += [name, value]
    return out


def main():
    work = tempfile.mkdtemp(prefix="flashlora-front-")
    state = os.path.join(work, "state")
    archive = image_zip(work)
    extra = ["--workers", "0", "--max-connections", "20", "--max-upload", str(32 << 20)]
    extra += supported_flags([("--header-timeout", "3"), ("--max-client-connections", "12"),
                              ("--ops-reserve", "4"), ("--max-parts", "64")])
    svc = sc.Service(BIN, MODEL, state, extra)
    try:
        run_all(svc, work, archive)
    finally:
        if svc.proc.poll() is None:
            svc.stop()
        log = os.path.join(work, "state.serve.log")
        if check.failed and os.path.exists(log):
            print("---- serve log (last lines)")
            with open(log, errors="replace") as f:
                print("".join(f.readlines()[-25:]))
        shutil.rmtree(work, ignore_errors=True)
    return check.finish()


def run_all(svc, work, archive):
    port = int(svc.base.rsplit(":", 1)[1])
    pid = svc.proc.pid
    key = svc.key("acme")
    seen = []  # every response body, checked for server paths at the end

    # ---- defect 1: nothing is read before authentication; multipart costs its body --------------------------
    status, body, early, growth, size = send_parts(port, pid, 300000)
    seen.append(body)
    check("300,000 one-byte parts without a key: 401 from the head, before the body",
          early and status == 401 and error_code(body) == "unauthorized", (status, early, body[:200]))
    check("... and the serve process's peak RSS grows by less than 4 MiB (grew %.1f MiB for a %.1f MiB body)"
          % (growth, size / 2**20), growth < 4, growth)
    status, body, early, growth, size = send_parts(port, pid, 50000, key)
    seen.append(body)
    check("50,000 parts with a key: 413 naming the part limit",
          status == 413 and b"parts" in body, (status, body[:200]))
    check("... and the peak RSS grows by at most the body plus 8 MiB (grew %.1f MiB for a %.1f MiB body)"
          % (growth, size / 2**20), growth < size / 2**20 + 8, growth)
    status, _, body = raw(port, post_head("/v1/nowhere", 20 << 20, key))
    check("an unknown route is 404 from the head (a 20 MiB body never sent)", status == 404, (status, body[:200]))
    status, headers, body = raw(port, post_head("/v1/jobs/job_x", 20 << 20, key))
    check("a method a route does not take is 405 with Allow, from the head",
          status == 405 and "GET" in headers.get("allow", ""), (status, headers))

    s = connect(port, timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n")
    status, headers, body = read_response(s, 2)
    s.close()
    check("a chunked body to a route that takes none is 413 before it is read (it cannot trickle)",
          is_json_error(status, headers, body, 413), (status, body[:200]))

    # ---- defect 7: slow headers do not starve health checks ---------------------------------------------
    tricklers = []
    for i in range(25):
        try:
            s = connect(port, "127.0.0.%d" % (2 + i % 5), timeout=10)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            tricklers.append(s)
        except OSError:
            pass
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            for s in tricklers:
                try:
                    s.send(b"X")
                except OSError:
                    pass
            stop.wait(0.5)

    tr = threading.Thread(target=trickle, daemon=True)
    tr.start()
    times, statuses = [], []
    for _ in range(12):
        t0 = time.time()
        try:
            r = sc.request(svc.base, "GET", "/healthz", timeout=5)
            statuses.append(r.status)
        except Exception as e:  # noqa: BLE001
            statuses.append(repr(e)[:80])
        times.append(time.time() - t0)
        time.sleep(0.15)
    check("/healthz keeps answering while 25 connections trickle headers (--max-connections 20): "
          "slowest poll %.3f s" % max(times), all(s == 200 for s in statuses) and max(times) < 1.0,
          list(zip(statuses, ["%.2f" % t for t in times])))
    stop.set()
    tr.join()
    got_408 = 0
    for s in tricklers:
        status, headers, body = read_response(s, 6)
        seen.append(body)
        if is_json_error(status, headers, body, 408):
            got_408 += 1
        s.close()
    check("the tricklers get a JSON 408 once --header-timeout passed (%d of %d)" % (got_408, len(tricklers)),
          got_408 == len(tricklers) and len(tricklers) == 25)
    hogs, refused = [], 0
    for _ in range(15):
        s = connect(port, "127.0.0.9", timeout=2)
        hogs.append(s)
    for s in hogs:
        status, headers, body = read_response(s, 0.5)
        if is_json_error(status, headers, body, 429):
            refused += 1
    for s in hogs:
        s.close()
    check("one address past --max-client-connections 12 gets JSON 429s (%d of 15)" % refused, refused == 3)

    # ---- the ops reserve: a full server still answers /healthz and /metrics -------------------------------
    job = None
    form, ctype = sc.multipart({"trigger_word": "sks", "steps": 5, "resolution": 16}, {"images": ("images.zip", archive)})
    r = sc.request(svc.base, "POST", "/v1/trainings", key, form, {"Content-Type": ctype})
    if check("a training is queued", r.status == 202, r.body):
        job = r.json()["job_id"]
    streams = []
    for i in range(20):
        try:
            s = connect(port, "127.0.0.%d" % (10 + i % 2), timeout=5)
            s.sendall(("GET /v1/jobs/%s/events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n\r\n"
                       % (job, key)).encode())
            streams.append(s)
        except OSError:
            pass
    time.sleep(1.0)
    status, headers, body = raw(port, ("GET /v1/adapters HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n\r\n"
                                       % key).encode(), timeout=5)
    check("with 20 streams open (--max-connections 20) another request gets a JSON 503 with Retry-After",
          is_json_error(status, headers, body, 503) and "retry-after" in headers, (status, headers, body[:200]))
    hz = raw(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", timeout=5)
    mt = raw(port, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", timeout=5)
    check("... while /healthz and /metrics still answer (ops reserve)", hz[0] == 200 and mt[0] == 200,
          (hz[0], hz[2][:100], mt[0]))
    counters = {}
    for line in mt[2].decode(errors="replace").splitlines():
        if line.startswith("flashlora_http_refused_total{"):
            counters[line.split('"')[1]] = int(line.split()[-1])
    check("/metrics counts what the front door refused, by reason (%s)" % counters,
          counters.get("header_timeout", 0) >= 25 and counters.get("client_limit", 0) >= 3
          and counters.get("busy", 0) >= 1, mt[2][-600:])
    for s in streams:
        s.close()
    time.sleep(1.5)  # the streams notice their clients left within a keep-alive period

    # ---- defect 12, the HTTP parts ------------------------------------------------------------------------
    r = sc.request(svc.base, "GET", "/v1/jobs/%s:events" % job, key)
    seen.append(r.body)
    check("/v1/jobs/<id>:events is 404, not 500", r.status == 404 and error_code(r.body) == "not_found", r.body)
    r = sc.request(svc.base, "HEAD", "/healthz")
    check("HEAD /healthz answers 200 without a body", r.status == 200 and r.body == b"", (r.status, r.body[:100]))
    r = sc.request(svc.base, "HEAD", "/v1/jobs/" + job, key)
    check("HEAD /v1/jobs/{id} answers 200 without a body, with the JSON's length",
          r.status == 200 and r.body == b"" and int(r.headers.get("Content-Length", "0")) > 0, (r.status, r.headers))
    t0 = time.time()
    r = sc.request(svc.base, "HEAD", "/v1/jobs/%s/events" % job, key, timeout=10)
    check("HEAD on an event stream answers at once with its type and no stream",
          r.status == 200 and r.headers.get("Content-Type") == "text/event-stream" and time.time() - t0 < 2,
          (r.status, r.headers))
    lora = os.path.join(work, "one.safetensors")
    sc.write_lora(lora, MODEL, seed=5)
    with open(lora, "rb") as f:
        form, ctype = sc.multipart({"name": "one"}, {"file": ("one.safetensors", f.read())})
    r = sc.request(svc.base, "POST", "/v1/adapters", key, form, {"Content-Type": ctype})
    check("an adapter imports", r.status == 201, r.body)
    r = sc.request(svc.base, "HEAD", "/v1/adapters/one", key)
    r2 = sc.request(svc.base, "GET", "/v1/adapters/one", key)
    check("HEAD on an adapter answers 200 and deletes nothing", r.status == 200 and r2.status == 200,
          (r.status, r2.status, r2.body[:200]))
    r = sc.request(svc.base, "HEAD", "/v1/trainings", key)
    check("HEAD where only POST is allowed: 405 with Allow", r.status == 405 and "POST" in r.headers.get("Allow", ""),
          (r.status, r.headers))

    gen = json.dumps({"prompt": "a sks logo", "width": 16, "height": 16, "steps": 2})  # a valid generation
    cases = [
        ("HTTP/2.0 -> JSON 505", b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        ("40 KiB of headers -> JSON 431", b"GET /healthz HTTP/1.1\r\nHost: t\r\n" +
         b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(40)) + b"\r\n", 431),
        ("a 40 KiB URI -> JSON 414", b"GET /healthz?" + b"a" * 40960 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        ("HTTP/1.1 without Host -> JSON 400", b"GET /healthz HTTP/1.1\r\n\r\n", 400),
        ("a malformed request line -> JSON 400", b"GET  /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("two different Content-Lengths -> JSON 400",
         ("POST /v1/generations HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
          "Content-Length: %d\r\nContent-Length: 900\r\n\r\n%s" % (key, len(gen), gen)).encode(), 400),
        ("Content-Length with chunked -> JSON 400",
         ("POST /v1/generations HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
          "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
          % (key, len(gen), gen)).encode(), 400),
    ]
    for name, data, want in cases:
        status, headers, body = raw(port, data, timeout=5)
        seen.append(body)
        check(name, is_json_error(status, headers, body, want) and (want != 400 or b"Host" in body or
                                                                     b"request line" in body or b"Content-Length" in body),
              (status, headers.get("content-type"), body[:120]))

    body = (b'--q b:1\r\nContent-Disposition: form-data; name="trigger_word"\r\n\r\nsks\r\n'
            b'--q b:1\r\nContent-Disposition: form-data; name="steps"\r\n\r\n5\r\n'
            b'--q b:1\r\nContent-Disposition: form-data; name="resolution"\r\n\r\n16\r\n'
            b'--q b:1\r\nContent-Disposition: form-data; name="images"; filename="images.zip"\r\n'
            b'Content-Type: application/zip\r\n\r\n' + archive + b'\r\n--q b:1--\r\n')
    r = sc.request(svc.base, "POST", "/v1/trainings", key, body,
                   {"Content-Type": 'multipart/form-data; boundary="q b:1"; charset=utf-8'})
    seen.append(r.body)
    check('a quoted multipart boundary followed by a parameter (boundary="q b:1"; charset=utf-8) is understood',
          r.status == 202, r.body[:300])

    # ---- no server path in any response ---------------------------------------------------------------------
    form, ctype = sc.multipart({"trigger_word": "sks", "steps": 5, "resolution": 16},
                               {"images": ("images./x", archive)})
    r = sc.request(svc.base, "POST", "/v1/trainings", key, form, {"Content-Type": ctype})
    seen.append(r.body)
    check("an upload whose filename the server cannot use as given is answered without a server path",
          work.encode() not in r.body and b"/uploads/" not in r.body, (r.status, r.body[:300]))
    leaks = [b[:200] for b in seen if work.encode() in b]
    check("no response of this test shows the server's state directory", not leaks, leaks)


if __name__ == "__main__":
    sys.exit(main())
