"""Load test of the OpenAI-compatible server on 127.0.0.1: N concurrent clients against a bounded queue.

    python bench/serve_load.py <run folder> [--clients 50 --max-concurrency 2 --max-waiting 16 --max-tokens 32]

Starts `medgpt serve <run>` on a free loopback port, waits for /health, then releases --clients requests at
once with the official openai client (no retries): half streaming, half not; --abandon of the streaming ones
drop the connection after their first chunk. Beyond max-concurrency running + max-waiting queued the server must
answer 503 at once. Prints a JSON summary: statuses, p50/p95 latency of the answered and of the refused
requests, and /health once the burst is over (running and waiting must be back to 0: no leaked slot).
Exit status 1 when any request got a 5xx other than 503, or a slot leaked.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from medgpt.training.cluster import free_port

QUESTIONS = ["头痛发热怎么办？", "高血压患者饮食要注意什么？", "What are the early signs of diabetes?",
             "感冒和流感有什么区别？", "How should a sprained ankle be treated?"]


def wait_healthy(url: str, proc, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the server did not become healthy")


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
        return json.load(r)


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(q * (len(values) - 1))))], 3)


def burst(client, model: str, clients: int, max_tokens: int, abandon: int) -> list:
    """(kind, status, seconds, completion tokens) per client; all start together."""
    import openai

    gate = threading.Barrier(clients)

    def one(i):
        stream, drop = i % 2 == 1, i % 2 == 1 and i // 2 < abandon
        kind = "abandoned" if drop else "stream" if stream else "plain"
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        gate.wait()
        start = time.perf_counter()
        try:
            if not stream:
                r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens)
                return kind, 200, time.perf_counter() - start, r.usage.completion_tokens
            pieces = 0
            response = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                      stream=True)
            for chunk in response:
                pieces += bool(chunk.choices and chunk.choices[0].delta.content)
                if drop:
                    response.close()  # the client goes away mid-answer
                    break
            return kind, 200, time.perf_counter() - start, pieces
        except openai.APIStatusError as e:
            return kind, e.status_code, time.perf_counter() - start, 0
        except openai.APIError as e:  # an error event inside a stream
            return kind, f"stream error: {e}", time.perf_counter() - start, 0

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(clients)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--max-concurrency", type=int, default=2)
    parser.add_argument("--max-waiting", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--abandon", type=int, default=5, help="streaming clients that leave after one chunk")
    args = parser.parse_args()
    from openai import OpenAI

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "medgpt", "serve", args.run, "--host", "127.0.0.1", "--port",
                             str(port), "--max-concurrency", str(args.max_concurrency), "--max-waiting",
                             str(args.max_waiting)], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_healthy(url, proc)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        burst(client, model, 2, 8, 0)  # warm-up
        start = time.perf_counter()
        results = burst(client, model, args.clients, args.max_tokens, args.abandon)
        wall = time.perf_counter() - start
        time.sleep(1.0)  # abandoned streams: their slots must be free by now
        after = health(url)
        answered = [r for r in results if r[1] == 200 and r[0] != "abandoned"]
        refused = [r for r in results if r[1] == 503]
        statuses = Counter(str(r[1]) for r in results)
        summary = {
            "model": model, "clients": args.clients, "max_concurrency": args.max_concurrency,
            "max_waiting": args.max_waiting, "max_tokens": args.max_tokens, "abandoned": args.abandon,
            "statuses": dict(statuses), "wall_s": round(wall, 2),
            "answered": len(answered), "answered_p50_s": percentile([r[2] for r in answered], 0.5),
            "answered_p95_s": percentile([r[2] for r in answered], 0.95),
            "refused_503": len(refused), "refused_p95_s": percentile([r[2] for r in refused], 0.95),
            "completion_tokens_per_s": round(sum(r[3] for r in answered if r[0] == "plain") / wall, 1),
            "health_after": after,
        }
        print(json.dumps(summary, indent=1, ensure_ascii=False))
        bad = [s for s in statuses if s not in ("200", "503")]
        leaked = after.get("running") or after.get("waiting")
        if bad or leaked:
            print(f"FAILED: statuses {bad}, health after the burst {after}", file=sys.stderr)
            sys.exit(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
