"""A load generator for the HTTP benchmarks (B3, B8), run as its OWN process so that its CPU time is not
the server's GIL time: ``concurrency`` keep-alive connections on loopback, each sending its next request as
soon as the previous answer arrived (closed loop), for ``seconds``. HTTP/1.1 is spoken directly over asyncio
streams: a Python HTTP client library would add a millisecond of its own to every measured latency.

    python bench/_load.py --port 8000 --concurrency 16 --seconds 10 \
        --mix home=0.6,related=0.25,search=0.15 --out load.json

Writes one JSON object to --out (not stdout: a large result printed to a pipe the event loop left
non-blocking can be cut short): per-canvas latencies (ms) and the achieved requests/s, status counts, fallbacks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

WORDS = ["space", "love", "war", "ghost", "city", "family", "robot", "dream", "legend", "river"]
COUNTRIES = ["US", "FR", "DE", "BR", "GB"]
CATEGORIES = ["drama", "comedy", "action", "horror", "scifi", "romance", "animation", "documentary"]


def request_body(canvas: str, rng: random.Random, n_items: int, prefix: str) -> dict[str, Any]:
    """One request of a canvas with seeded random context (users and items of the benchmark world)."""
    if canvas == "home":
        context: dict[str, Any] = {"user_id": f"u{rng.randrange(400)}", "country": rng.choice(COUNTRIES)}
    elif canvas == "related":
        context = {"source_item_id": f"{prefix}{rng.randrange(n_items):07d}"}
    elif canvas == "search":
        context = {"query": " ".join(rng.sample(WORDS, 2))}
    else:
        context = {"category": rng.choice(CATEGORIES), "user_id": f"u{rng.randrange(400)}"}
    return {"canvas": canvas, "context": context, "k": 10}


def encode(body: dict[str, Any], port: int) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


async def connection(
    port: int, requests: list[tuple[str, bytes]], until: float, out: list[tuple[str, float, int, bool]], seed: int
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rng = random.Random(seed)
    try:
        while time.perf_counter() < until:
            canvas, raw = requests[rng.randrange(len(requests))]
            t0 = time.perf_counter()
            writer.write(raw)
            status, body = await read_response(reader)
            elapsed = (time.perf_counter() - t0) * 1000
            out.append((canvas, elapsed, status, b'"fallback":{' in body))
    finally:
        writer.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    mix = [(c, float(w)) for c, w in (part.split("=") for part in args.mix.split(","))]
    rng = random.Random(args.seed)
    canvases = rng.choices([c for c, _ in mix], [w for _, w in mix], k=2000)
    requests = [(c, encode(request_body(c, rng, args.items, args.prefix), args.port)) for c in canvases]
    warm: list[tuple[str, float, int, bool]] = []
    await asyncio.gather(
        *(connection(args.port, requests, time.perf_counter() + args.warmup, warm, i) for i in range(args.concurrency))
    )
    out: list[tuple[str, float, int, bool]] = []
    start = time.perf_counter()
    await asyncio.gather(
        *(connection(args.port, requests, start + args.seconds, out, 1000 + i) for i in range(args.concurrency))
    )
    wall = time.perf_counter() - start
    per_canvas: dict[str, list[float]] = {}
    statuses: dict[str, int] = {}
    fallbacks = 0
    for canvas, ms, status, fell_back in out:
        per_canvas.setdefault(canvas, []).append(ms)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        fallbacks += fell_back
    return {
        "concurrency": args.concurrency,
        "seconds": wall,
        "requests": len(out),
        "rps": len(out) / wall,
        "statuses": statuses,
        "fallbacks": fallbacks,
        "latencies_ms": per_canvas,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--mix", default="home=1")
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--prefix", default="x")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="where the JSON result goes")
    args = ap.parse_args()
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
