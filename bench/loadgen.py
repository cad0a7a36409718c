"""A small keep-alive HTTP/1.1 load generator (asyncio, raw sockets), run as its own process.

    python bench/loadgen.py --host 127.0.0.1 --port 8000 --path /predict --body body.json \
        --concurrency 8 --requests 2000 --duration 5

Prints one JSON line: requests, errors, seconds, rps, p50_ms, p99_ms, mean_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path


async def _worker(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    budget: list[int],
    lat: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            t = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            lat.append(time.perf_counter() - t)
            if status != 200:
                errors[0] += 1
    finally:
        writer.close()


async def run(
    host: str,
    port: int,
    path: str,
    body: bytes,
    concurrency: int,
    requests: int,
    duration: float,
    warmup: int,
) -> dict[str, float]:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode() + body
    if warmup:
        await _worker(host, port, request, time.perf_counter() + 30, [warmup], [], [0])
    lat: list[float] = []
    errors = [0]
    budget = [requests]
    t0 = time.perf_counter()
    deadline = t0 + duration
    await asyncio.gather(
        *[_worker(host, port, request, deadline, budget, lat, errors) for _ in range(concurrency)]
    )
    secs = time.perf_counter() - t0
    lat.sort()
    n = len(lat)

    def pct(p: float) -> float:
        return lat[min(n - 1, int(p * n))] * 1000 if n else float("nan")

    return {
        "requests": n,
        "errors": errors[0],
        "seconds": secs,
        "rps": n / secs if secs else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": (sum(lat) / n * 1000) if n else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--body", required=True, help="file with the JSON body")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args()
    body = Path(a.body).read_bytes()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(run(a.host, a.port, a.path, body, a.concurrency, a.requests, a.duration, a.warmup))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
