"""Bounded load test of the OpenAI-compatible server on 127.0.0.1: latency and throughput.

    python bench/serve_load.py <run folder> [--requests 20 --concurrency 4 --max-tokens 64 --server-concurrency 2]

Starts `medgpt serve <run>` on a free loopback port, waits for /health, sends the requests with the
official openai client (non-streaming, then the same number streaming for time-to-first-token), prints a JSON
summary and stops the server it started.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
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


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_load(client, model, n, concurrency, max_tokens, stream):
    def one(i):
        start = time.perf_counter()
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        if not stream:
            r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens)
            return time.perf_counter() - start, None, r.usage.completion_tokens
        first, pieces = None, 0
        for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                    stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter() - start
                pieces += 1
        return time.perf_counter() - start, first, pieces

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    latencies = [r[0] for r in results]
    out = {"requests": n, "concurrency": concurrency, "wall_s": round(wall, 2),
           "requests_per_s": round(n / wall, 2), "latency_p50_s": round(statistics.median(latencies), 3),
           "latency_p95_s": round(percentile(latencies, 0.95), 3), "latency_max_s": round(max(latencies), 3)}
    if stream:
        out["time_to_first_token_p50_s"] = round(statistics.median(r[1] for r in results if r[1]), 3)
    else:
        out["completion_tokens_per_s"] = round(sum(r[2] for r in results) / wall, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--server-concurrency", type=int, default=2)
    args = parser.parse_args()
    from openai import OpenAI

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "medgpt", "serve", args.run, "--host", "127.0.0.1", "--port",
                             str(port), "--max-concurrency", str(args.server_concurrency)],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_healthy(url, proc)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        model = client.models.list().data[0].id
        run_load(client, model, 2, 1, 8, stream=False)  # warm-up
        summary = {"model": model, "max_tokens": args.max_tokens, "server_concurrency": args.server_concurrency,
                   "non_streaming": run_load(client, model, args.requests, args.concurrency, args.max_tokens, False),
                   "streaming": run_load(client, model, args.requests, args.concurrency, args.max_tokens, True)}
        print(json.dumps(summary, indent=1))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
