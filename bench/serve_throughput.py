"""Serving throughput: herd serve (transformers and llama.cpp backends) vs raw llama.cpp, one run.

For each backend a real ``herd serve`` process on loopback is driven by N concurrent clients (the
official openai client, streaming, greedy, max_tokens fixed): tokens/s over the whole run and p50/p95
request latency at 1, 8 and 32 clients. llama.cpp alone (llama-cpp-python ``create_completion`` on
the same GGUF, same prompts, same threads) is the ceiling the llamacpp backend is measured against
(goal: >= 0.9x): served 1-client runs and raw runs alternate, so both see the same machine load, and
the ratio is of medians. Servers run one at a time so they never share the CPU with each other.

    python bench/serve_throughput.py                 # SmolLM2-135M-Instruct, f16 GGUF
    python bench/serve_throughput.py --base tiny     # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

QUESTIONS = ["What is the capital of France?", "Explain photosynthesis in two sentences.",
             "Write a haiku about the sea.", "List three uses of a paperclip.", "Why is the sky blue?",
             "Give me a tip for learning Python.", "What does a compiler do?", "Name a famous painter."]


def make_artifact(base: str, folder: Path) -> Path:
    from herd.artifacts import new_lineage, save_model_folder, template_record, write_lineage
    from herd.base import load_model, load_tokenizer, resolve_base
    from herd.templates import get_template

    if (folder / "lineage.json").is_file():
        return folder
    ref = resolve_base(base)
    t, tok = get_template("chatml"), load_tokenizer(ref)
    save_model_folder(load_model(ref), tok, t, folder)
    write_lineage(folder, new_lineage(f"bench-{base}", parent=ref.describe(), template=template_record(t, tok)))
    return folder


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system, all threads) of a process."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(fn, *args, server_pid: int | None = None) -> dict:
    """Run ``fn(*args)`` and add the CPU milliseconds per generated token it cost (this process + the server)."""
    c0, s0 = cpu_s(), cpu_s(server_pid) if server_pid else 0.0
    r = fn(*args)
    cpu = cpu_s() - c0 + ((cpu_s(server_pid) - s0) if server_pid else 0.0)
    r["cpu_ms_tok"] = 1000 * cpu / max(r["tokens"], 1)
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(artifact: Path, backend: str, gguf: Path, threads: int, max_batch: int):
    port = free_port()
    cmd = [sys.executable, "-m", "herd.cli", "serve", str(artifact), "--backend", backend, "--port", str(port),
           "--threads", str(threads), "--max-batch", str(max_batch)]
    if backend == "llamacpp":
        cmd += ["--gguf", str(gguf)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start in 300 s")


async def drive(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    """``clients`` workers share ``requests`` requests; returns tokens/s and latency percentiles."""
    lat, tokens, todo = [], [], list(range(requests))

    async def worker(client):
        while todo:
            i = todo.pop()
            t0 = time.perf_counter()
            stream = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                max_tokens=max_tokens, temperature=0, stream=True, stream_options={"include_usage": True})
            async for ch in stream:
                if ch.usage:
                    tokens.append(ch.usage.completion_tokens)
            lat.append(time.perf_counter() - t0)

    async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat.sort()
    return {"tok_s": sum(tokens) / wall, "p50": statistics.median(lat),
            "p95": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))], "tokens": sum(tokens), "n": len(lat)}


def run_drive(*args) -> dict:
    return asyncio.run(drive(*args))


class RawLlamaCpp:
    """llama.cpp with nothing around it: the same prompts, tokens and greedy decoding, one after another."""

    def __init__(self, artifact: Path, gguf: Path, threads: int):
        from llama_cpp import Llama

        from herd.base import load_tokenizer
        from herd.templates import get_template

        self.tok, self.t = load_tokenizer(artifact), get_template("chatml")
        self.llm = Llama(model_path=str(gguf), n_ctx=0, n_threads=threads, n_batch=512, verbose=False)

    def run(self, requests: int, max_tokens: int) -> dict:
        lat, tokens = [], 0
        t_all = time.perf_counter()
        for i in range(requests):
            ids = self.tok.encode(self.t.prompt([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                                self.tok), add_special_tokens=False)
            t0 = time.perf_counter()
            out = self.llm.create_completion(ids, max_tokens=max_tokens, temperature=0, top_k=0, min_p=0.0,
                                             top_p=1.0, repeat_penalty=1.0)
            lat.append(time.perf_counter() - t0)
            tokens += out["usage"]["completion_tokens"]
        wall = time.perf_counter() - t_all
        lat.sort()
        return {"tok_s": tokens / wall, "p50": statistics.median(lat), "p95": lat[round(0.95 * (len(lat) - 1))],
                "tokens": tokens, "n": len(lat)}


def _median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["tok_s"])[len(runs) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2")
    ap.add_argument("--gguf-dtype", default="f16", choices=("f32", "f16", "q8_0"))
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=0, help="per level (default: max(8, 2 x clients))")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--backends", default="transformers,llamacpp")
    ap.add_argument("--repeats", type=int, default=3, help="alternating served/raw rounds for the ratio")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "herd-bench-serve"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from herd.export import export_gguf

    art = make_artifact(args.base, Path(args.workdir) / f"bench-{args.base}")
    gguf = art / "export" / f"bench.{args.gguf_dtype}.gguf"
    if not gguf.is_file():
        export_gguf(art, gguf, args.gguf_dtype)
    levels = [int(x) for x in args.clients.split(",")]

    def n_req(clients: int) -> int:
        return args.requests or max(8, 2 * clients)

    rows, ratio = [], None
    for backend in args.backends.split(","):
        proc, url = start_server(art, backend, gguf, args.threads, args.max_batch)
        model = f"bench-{args.base}"
        try:
            asyncio.run(drive(url, model, 1, 2, 8))  # warm-up
            for c in levels:
                r = measured(run_drive, url, model, c, n_req(c), args.max_tokens, server_pid=proc.pid)
                rows.append((f"herd serve --backend {backend}", c, r))
                print(f"{backend:>12} clients={c:<3} {r['tok_s']:7.1f} tok/s  p50 {r['p50']:.2f}s  "
                      f"p95 {r['p95']:.2f}s  {r['cpu_ms_tok']:.1f} CPU ms/token  ({r['n']} requests, {r['tokens']} tokens)",
                      flush=True)
            if backend == "llamacpp":
                # the headline ratio: served and raw alternate, so both see the same machine load
                raw_llm, served, raw = RawLlamaCpp(art, gguf, args.threads), [], []
                for i in range(args.repeats):
                    served.append(measured(run_drive, url, model, 1, n_req(1), args.max_tokens, server_pid=proc.pid))
                    raw.append(measured(raw_llm.run, n_req(1), args.max_tokens))
                    print(f"round {i + 1}: served {served[-1]['tok_s']:.1f} tok/s "
                          f"({served[-1]['cpu_ms_tok']:.1f} CPU ms/token), raw {raw[-1]['tok_s']:.1f} tok/s "
                          f"({raw[-1]['cpu_ms_tok']:.1f} CPU ms/token)", flush=True)
                rows.append((f"herd serve --backend llamacpp, alternating with raw (median of {args.repeats})", 1,
                             _median_run(served)))
                rows.append((f"raw llama.cpp, in-process create_completion (median of {args.repeats})", 1,
                             _median_run(raw)))
                ratio = (_median_run(served)["tok_s"] / _median_run(raw)["tok_s"],
                         statistics.median(r["cpu_ms_tok"] for r in raw)
                         / statistics.median(r["cpu_ms_tok"] for r in served))
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"\nbase {args.base}, GGUF {args.gguf_dtype}, {args.threads} threads, greedy, max_tokens "
          f"{args.max_tokens}, streaming\n")
    print("| system | clients | requests | tokens/s | p50 latency s | p95 latency s | CPU ms/token |")
    print("|---|---|---|---|---|---|---|")
    for name, c, r in rows:
        print(f"| {name} | {c} | {r['n']} | {r['tok_s']:.1f} | {r['p50']:.2f} | {r['p95']:.2f} | "
              f"{r['cpu_ms_tok']:.1f} |")
    if ratio is not None:
        print(f"\nllamacpp backend / raw llama.cpp, 1 client: {ratio[0]:.2f}x tokens/s (goal >= 0.9x); "
              f"{ratio[1]:.2f}x by CPU time per token (server + client CPU vs raw CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
