"""Helpers shared by the service's integration test and load test (standard library only): start
and stop `flashlora serve` / `flashlora worker`, talk HTTP (JSON, multipart, server-sent events),
decode PNG, and write LoRA files for the test model."""

import functools
import http.server
import json
import os
import random
import signal
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def request(base, method, path, key=None, body=None, headers=None, timeout=120):
    """One HTTP request; body is bytes, a dict (sent as JSON) or None. Never raises on 4xx/5xx."""
    hdrs = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    if key:
        hdrs["Authorization"] = "Bearer " + key
    req = urllib.request.Request(base + path, data=body, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, dict(e.headers), e.read())


def multipart(fields, files):
    """fields: {name: value}; files: {name: (filename, bytes)} -> (body, content type)."""
    boundary = "----flashlora" + uuid.uuid4().hex
    out = []
    for name, value in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                   f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), "multipart/form-data; boundary=" + boundary


def events(base, path, key, timeout=300):
    """Reads a server-sent event stream to its end: a list of (event, data dict)."""
    req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + key})
    out, event, data = [], None, []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and event is not None:
                out.append((event, json.loads("\n".join(data))))
                event, data = None, []
    return out


def png_decode(data):
    """Decodes an 8-bit RGB PNG (as the service writes them): (width, height, pixel rows)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, idat, width = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, chunk = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + chunk) & 0xFFFFFFFF == crc, "bad chunk CRC"
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and color in (2, 6), "unexpected PNG format"
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    assert len(raw) == height * (stride + 1), "pixel data has the wrong size"
    return width, height, raw


def safetensors_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def write_lora(path, model_path, seed, rank=2, modules=None, scale=0.05, layout="canonical"):
    """A random LoRA for some Linears of the model (distinct content per seed), in the canonical
    layout or kohya's (lora_unet_<module with _>.lora_down/.lora_up/.alpha)."""
    header = safetensors_header(model_path)
    linears = sorted(k[:-len(".weight")] for k, v in header.items()
                     if k.endswith(".weight") and isinstance(v, dict) and len(v["shape"]) == 2
                     and ("blocks" in k))
    rng = random.Random(seed)
    chosen = modules or rng.sample(linears, min(4, len(linears)))
    tensors, blobs, offset = {}, [], 0
    kohya = layout == "kohya"
    for m in chosen:
        out_dim, in_dim = header[m + ".weight"]["shape"]
        prefix, down, up = ("lora_unet_" + m.replace(".", "_"), ".lora_down.weight", ".lora_up.weight") if kohya \
            else (m, ".lora_A.weight", ".lora_B.weight")
        parts = [(down, [rank, in_dim]), (up, [out_dim, rank])] + ([(".alpha", [])] if kohya else [])
        for suffix, shape in parts:
            values = [rng.gauss(0, scale) for _ in range(shape[0] * shape[1])] if shape else [float(rank)]
            blob = struct.pack("<%df" % len(values), *values)
            tensors[prefix + suffix] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
            blobs.append(blob)
            offset += len(blob)
    tensors["__metadata__"] = {"format": layout, "alpha": str(rank), "rank": str(rank)}
    text = json.dumps(tensors).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


class Service:
    """`flashlora serve` on a free loopback port with its own state directory."""

    def __init__(self, binary, model, state, extra=(), env=None):
        self.binary, self.model, self.state = binary, model, state
        port_file = os.path.join(state + ".port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        os.makedirs(state, exist_ok=True)
        self.log = open(state + ".serve.log", "ab")
        self.proc = subprocess.Popen([binary, "serve", "--model", model, "--state", state, "--listen", "127.0.0.1:0",
                                      "--port-file", port_file] + list(extra),
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 60
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("flashlora serve did not start; see " + state + ".serve.log")
            time.sleep(0.05)
        with open(port_file) as f:
            self.base = "http://127.0.0.1:%d" % int(f.read())

    def key(self, tenant):
        return subprocess.check_output([self.binary, "keys", "create", "--tenant", tenant, "--state", self.state],
                                       text=True).strip()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code


def start_worker(binary, model, state, extra=()):
    log = open(state + ".worker.log", "ab")
    return subprocess.Popen([binary, "worker", "--model", model, "--state", state] + list(extra),
                            stdout=log, stderr=subprocess.STDOUT)


def wait_job(base, key, job_id, timeout=300, until=None):
    """Polls a job until it ends (or until(job) is true); returns the job."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = request(base, "GET", "/v1/jobs/" + job_id, key).json()
        if job.get("state") in ("succeeded", "failed") or (until and until(job)):
            return job
        time.sleep(0.05)
    raise TimeoutError("job %s did not finish" % job_id)


def file_server(directory):
    """A static HTTP server on a free loopback port in a thread; returns (server, base URL)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, "http://127.0.0.1:%d" % server.server_address[1]


def redis_call(sock_path, *args, timeout=10):
    """One command to the Redis listening on a unix socket (RESP, no client library): the reply as
    bytes, int, list or None; an error reply raises RuntimeError with its text."""
    import socket
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(out)
        f = s.makefile("rb")

        def parse():
            line = f.readline()
            if not line:
                raise ConnectionError("Redis closed the connection")
            kind, rest = line[:1], line[1:-2]
            if kind == b"+":
                return rest
            if kind == b"-":
                raise RuntimeError(rest.decode(errors="replace"))
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2]
            if kind == b"*":
                n = int(rest)
                return None if n < 0 else [parse() for _ in range(n)]
            raise RuntimeError("unexpected RESP reply %r" % line)
        return parse()


def child_pids(parent, name):
    """The pids of the direct children of parent whose command name is name (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == parent and comm == name:
            found.append(int(entry))
    return found


class Checks:
    """The checks of an integration test: check(name, condition, detail) prints "ok   name" or
    "FAIL name: detail" and returns the condition; finish() prints the closing "N passed, N failed"
    and returns the exit status."""

    def __init__(self):
        self.passed = self.failed = 0

    def __call__(self, name, cond, detail=""):
        if cond:
            self.passed += 1
            print("ok   " + name, flush=True)
        else:
            self.failed += 1
            print("FAIL " + name + ((": " + str(detail)[:600]) if detail else ""), flush=True)
        return cond

    def finish(self):
        print("%d passed, %d failed" % (self.passed, self.failed))
        return 1 if self.failed else 0
