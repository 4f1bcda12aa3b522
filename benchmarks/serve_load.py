"""Load test of `ila serve` on 127.0.0.1: requests per second, p50/p99 latency, failed requests (bounded in count and
time). Either against a running server (--url), or one started per --max-batch value (--serve CHECKPOINT), so that
batch settings are compared in one run.

    python benchmarks/serve_load.py --serve runs/tiny/best.pt --video video.mp4 --requests 200 --concurrency 8 \
        --max-batch 1,8
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --video clip.mp4 --requests 500 --max-seconds 60

Each of --concurrency threads keeps one HTTP/1.1 connection and posts the same video (multipart field `video`) until
--requests are sent or --max-seconds have passed; a request fails when its answer is not 200 with predictions (or it
raises). The server's /health batch counters give the mean batch size.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit


def multipart(video: str, fields: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
             for k, v in fields.items()]
    with open(video, "rb") as f:
        data = f.read()
    name = os.path.basename(video)
    parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"{name}\""
                 f"\r\nContent-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def health(url: str) -> dict:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", "/health")
    out = json.loads(conn.getresponse().read())
    conn.close()
    return out


def load(url: str, video: str, requests: int, concurrency: int, max_seconds: float, fields: dict) -> dict:
    body, kind = multipart(video, fields)
    u = urlsplit(url)
    latencies, failures, lock = [], [], threading.Lock()
    sent = [0]
    stop_at = time.monotonic() + max_seconds

    def worker():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        while True:
            with lock:
                if sent[0] >= requests or time.monotonic() > stop_at:
                    break
                sent[0] += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": kind})
                response = conn.getresponse()
                answer = response.read()
                ok = response.status == 200 and ("predictions" in json.loads(answer)[0] or
                                                 "windows" in json.loads(answer)[0])
                why = None if ok else f"{response.status} {answer[:200]!r}"
            except Exception as e:  # noqa: BLE001 - counted as a failure
                why = f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
            dt = time.perf_counter() - t0
            with lock:
                (failures.append(why) if why else latencies.append(dt))
        conn.close()

    before = health(url)["batches"]
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = health(url)["batches"]
    ms = sorted(x * 1000 for x in latencies)
    pct = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))] if ms else float("nan")  # noqa: E731
    batches = after["batches"] - before["batches"]
    return {"requests": len(latencies) + len(failures), "ok": len(latencies), "failed": len(failures),
            "seconds": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(pct(0.50), 1), "p99_ms": round(pct(0.99), 1),
            "mean_ms": round(statistics.fmean(ms), 1) if ms else None,
            "mean_batch": round((after["clips"] - before["clips"]) / batches, 2) if batches else None,
            "largest_batch": after["largest_batch"], "first_failures": failures[:3]}


def serve(checkpoint: str, max_batch: int, max_wait_ms: float, extra: str = ""):
    """`ila serve` on a free port of 127.0.0.1 in a subprocess: (process, URL)."""
    cmd = [sys.executable, "-m", "ila", "serve", "--checkpoint", checkpoint, "--port", "0", "--max-batch",
           str(max_batch), "--max-wait-ms", str(max_wait_ms), *shlex.split(extra)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    line = proc.stderr.readline()
    if " on http://" not in line:
        proc.kill()
        raise SystemExit(f"ila serve did not start: {line.strip()}")
    threading.Thread(target=proc.stderr.read, daemon=True).start()     # keep its log flowing
    return proc, line.split(" on ")[1].split("/ ")[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--serve", metavar="CHECKPOINT", help="start `ila serve` on this model for each --max-batch")
    p.add_argument("--video", required=True)
    p.add_argument("--requests", type=int, default=200, help="at most this many requests (default 200)")
    p.add_argument("--max-seconds", type=float, default=60, help="and at most this long (default 60)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    p.add_argument("--max-batch", default="8", help="--serve: comma-separated --max-batch values to compare")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="--serve: the server's --max-wait-ms")
    p.add_argument("--serve-args", default="", help="--serve: more `ila serve` options, e.g. '--classes kinetics400'")
    p.add_argument("--window", help="a window length (s) for each request")
    p.add_argument("--stride", help="a stride (s) for each request")
    args = p.parse_args()
    if not 1 <= args.requests <= 100_000 or not 0 < args.max_seconds <= 3600 or not 1 <= args.concurrency <= 512:
        raise SystemExit("--requests 1..100000, --max-seconds up to 3600, --concurrency 1..512")
    fields = {k: v for k, v in (("window", args.window), ("stride", args.stride)) if v}
    runs = [(None, args.url)] if args.url else [(int(b), None) for b in args.max_batch.split(",")]
    print(f"# {args.requests} requests max, {args.max_seconds:g} s max, concurrency {args.concurrency}, "
          f"video {os.path.basename(args.video)} {fields or ''}; {os.cpu_count()} CPUs", flush=True)
    for max_batch, url in runs:
        proc = None
        if url is None:
            proc, url = serve(args.serve, max_batch, args.max_wait_ms, args.serve_args)
        try:
            load(url, args.video, min(args.requests, 2 * args.concurrency), args.concurrency, 30, fields)  # warm up
            result = load(url, args.video, args.requests, args.concurrency, args.max_seconds, fields)
        finally:
            if proc:
                proc.terminate()
                proc.wait(30)
        print(json.dumps({"max_batch": max_batch, **result}), flush=True)


if __name__ == "__main__":
    main()
