"""Bounded load test of the service on loopback: concurrent generation requests over distinct
adapters against the real `flashlora serve` (private redis-server, in-process workers).

  load_test.py FLASHLORA SOURCE_DIR [--clients 16] [--requests 200] [--adapters 8] [--workers 1]
               [--size 16] [--steps 4] [--max-queue 32] [--batch 8] [--threads N]
               [--rank 2] [--all-linears]

Each client sends synchronous generations naming one or two of the adapters (random scales);
a 429 is retried after its Retry-After. Prints throughput, latency percentiles of completed
requests, the mean batch size the workers formed, and the status counts; exits non-zero if any
request ended in anything but success or an intended 429. The adapters are random, of --rank on
four block Linears (or on every block Linear with --all-linears). Also prints the workers' adapter
counters from /metrics (cache hits and misses; attaches, detaches and forward plans where the
service reports them). The last line is "N passed, N failed" so the bounded run doubles as a test.
"""

import argparse
import concurrent.futures
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "serve"))
import service_client as sc  # noqa: E402


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("source")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-queue", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8, help="images per worker batch")
    ap.add_argument("--threads", type=int, default=0, help="FLASHLORA_THREADS for the service (0: default)")
    ap.add_argument("--rank", type=int, default=2, help="rank of the random adapters")
    ap.add_argument("--all-linears", action="store_true", help="adapters on every block Linear (default: four)")
    args = ap.parse_args()

    model = os.path.join(args.source, "tests/fixtures/flux_b.model.safetensors")
    work = tempfile.mkdtemp(prefix="flashlora-load-")
    env = dict(os.environ)
    if args.threads:
        env["FLASHLORA_THREADS"] = str(args.threads)
    svc = sc.Service(args.binary, model, os.path.join(work, "state"),
                     ["--workers", str(args.workers), "--max-queue", str(args.max_queue), "--batch-wait-ms", "5",
                      "--batch", str(args.batch)],
                     env=env)
    failures = []
    try:
        key = svc.key("load")
        ids = []
        for i in range(args.adapters):
            path = os.path.join(work, "a%d.safetensors" % i)
            modules = None
            if args.all_linears:
                header = sc.safetensors_header(model)
                modules = sorted(k[:-len(".weight")] for k, v in header.items()
                                 if k.endswith(".weight") and isinstance(v, dict) and len(v["shape"]) == 2
                                 and "blocks" in k)
            sc.write_lora(path, model, seed=1000 + i, rank=args.rank, modules=modules)
            with open(path, "rb") as f:
                body, ctype = sc.multipart({"name": "load%d" % i}, {"file": ("a.safetensors", f.read())})
            r = sc.request(svc.base, "POST", "/v1/adapters", key, body, {"Content-Type": ctype})
            if r.status != 201:
                failures.append("import %d: %d %s" % (i, r.status, r.body[:200]))
                continue
            ids.append(r.json()["id"])

        counts, latencies, batch_sizes, rejected = {}, [], [], [0]
        rng = random.Random(0)
        plan = []
        for n in range(args.requests):
            chosen = rng.sample(ids, rng.choice((1, 2))) if ids else []
            plan.append(([{"id": a, "scale": round(rng.uniform(0.5, 1.5), 2)} for a in chosen], n))

        def one(item):
            adapters, seed = item
            body = {"prompt": "load test %d" % seed, "adapters": adapters, "width": args.size,
                    "height": args.size, "steps": args.steps, "seed": seed, "sync": True}
            t0 = time.time()
            while True:
                r = sc.request(svc.base, "POST", "/v1/generations", key, body, timeout=600)
                if r.status != 429:
                    break
                rejected[0] += 1
                time.sleep(float(r.headers.get("Retry-After", "1")) * 0.25)
            return r, time.time() - t0

        t_start = time.time()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            for r, seconds in pool.map(one, plan):
                counts[r.status] = counts.get(r.status, 0) + 1
                if r.status == 200:
                    latencies.append(seconds)
                    batch_sizes.append(r.json().get("batch_size", 1))
                else:
                    failures.append("%d %s" % (r.status, r.body[:200]))
        wall = time.time() - t_start
        ok = counts.get(200, 0)
        print("requests %d, clients %d, adapters %d (rank %d, %s), workers %d, batch %d, %dx%d, %d steps" %
              (args.requests, args.clients, len(ids), args.rank, "every block Linear" if args.all_linears else
               "4 Linears", args.workers, args.batch, args.size, args.size, args.steps))
        print("completed %d in %.2f s: %.2f requests/s" % (ok, wall, ok / wall if wall > 0 else 0))
        print("latency p50 %.3f s, p90 %.3f s, p99 %.3f s, max %.3f s" %
              (percentile(latencies, 0.5), percentile(latencies, 0.9), percentile(latencies, 0.99),
               max(latencies) if latencies else float("nan")))
        print("mean batch size %.2f; 429 answers (retried) %d; statuses %s" %
              (sum(batch_sizes) / len(batch_sizes) if batch_sizes else 0, rejected[0], counts))
        time.sleep(1.0)  # one worker heartbeat, which carries the cache counters
        metrics = sc.request(svc.base, "GET", "/metrics").body.decode()
        for line in metrics.splitlines():
            if line.startswith(("flashlora_adapter_cache", "flashlora_resident_adapters ", "flashlora_adapter_attaches",
                                "flashlora_adapter_detaches", "flashlora_forward_plans", "flashlora_attached_adapters ")):
                print(line)
    finally:
        svc.stop()
        shutil.rmtree(work, ignore_errors=True)
    for f in failures[:10]:
        print("error: " + f)
    print("%d passed, %d failed" % (0 if failures else 1, 1 if failures else 0))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
