"""The Self-Instruct loop: prompt → teacher → parse → filters → ROUGE-L novelty → append (recipes.md §1.2).

As in Alpaca, requests go out in batches (5 prompts, each with its own 3 sampled seeds) until at least
``n`` tasks are kept; every task kept in a batch joins the novelty pool before the next is checked.

Resumable: the output is append-only JSON Lines and ``OUT.state.json`` (rewritten atomically after every
batch) holds the request counter, the rejection counts and the byte length of the committed records. A
restart truncates a half-written batch, reloads the kept tasks into the novelty pool and continues at
the next request; request ``r`` samples its seeds from its own seeded stream and batches always start
at multiples of the batch size, so with an in-process teacher a resumed run writes what an unbroken
one would have.

``variant="self-instruct"`` runs the original pipeline: the loop above bootstraps instructions into
``OUT-stem.machine_generated_instructions.jsonl``, then ``instances`` identifies classification tasks,
generates their instances and writes one Alpaca record per instance to ``OUT`` (each step resumable).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from herd.core.errors import ConfigError, HerdError
from herd.core.hashing import sha256_file
from herd.core.jsonlines import json_lines
from herd.core.progress import Progress
from herd.data.builds.selfinstruct.filters import REASONS, blacklist_regex, filter_reason
from herd.data.builds.selfinstruct.instances import (
    check_out,
    format_instance_report,
    run_instance_steps,
    step_paths,
)
from herd.data.builds.selfinstruct.parse import parse_alpaca, parse_self_instruct
from herd.data.builds.selfinstruct.prompt import (
    VARIANTS,
    build_prompt,
    default_prompt_file,
    default_seed_file,
    load_prompt_header,
    load_seeds,
    request_rng,
)
from herd.data.builds.selfinstruct.teachers import Sampling


class GenerationSettings(BaseModel):
    """What to generate. ``None`` sampling fields take the variant's published value."""

    model_config = ConfigDict(extra="forbid")
    variant: Literal["alpaca", "self-instruct"] = "alpaca"
    n: int = Field(gt=0)                        # stop once this many tasks are kept (a batch is finished)
    seeds: str | None = None                    # seed tasks JSONL (default: the 175 Self-Instruct seeds)
    prompt_file: str | None = None              # Alpaca's prompt.txt (default: the shared copy)
    seed: int = 42
    request_batch_size: int | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_requests: int | None = Field(default=None, gt=0)  # give up after this many (whole batches)
    drop_empty_output: bool = True              # herd: an empty output cannot be trained on


@dataclass
class GenerationState:
    settings: dict
    requests: int = 0
    kept: int = 0
    items: int = 0                              # well-formed tasks that reached the filters
    bytes: int = 0
    finish: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    adopted: int = 0                            # records found without a state file (kept, not counted)
    instances: dict | None = None               # original variant: counts of steps 2-4 (not saved in state)

    def to_dict(self) -> dict:
        d = {"settings": self.settings, "requests": self.requests, "kept": self.kept, "items": self.items,
             "bytes": self.bytes, "finish": dict(self.finish), "rejected": dict(self.rejected),
             "adopted": self.adopted}
        if self.instances is not None:
            d["instances"] = self.instances
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GenerationState:
        return cls(settings=d["settings"], requests=d["requests"], kept=d["kept"], items=d["items"],
                   bytes=d["bytes"], finish=Counter(d["finish"]), rejected=Counter(d["rejected"]),
                   adopted=d.get("adopted", 0))


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state.json")


def _save_state(out: Path, st: GenerationState) -> None:
    p = state_path(out)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(st.to_dict(), indent=1) + "\n")
    os.replace(tmp, p)


def _load_records(out: Path) -> list[dict]:
    recs = []
    for lineno, line in enumerate(json_lines(out.read_text(encoding="utf-8")), 1):
        if line.strip():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise HerdError(f"{out}:{lineno}: not JSON ({e.msg}); the file was edited, or written by "
                                "something else") from None
    return recs


def open_state(out: Path, settings: dict) -> tuple[GenerationState, list[dict]]:
    """The state to continue from and the records already kept (a half-written batch is cut off)."""
    sp = state_path(out)
    if sp.exists():
        d = json.loads(sp.read_text())
        if "pipeline" in d:
            raise ConfigError(f"{out} holds the original Self-Instruct's instances (variant self-instruct); use "
                              "another --out, or that variant")
        st = GenerationState.from_dict(d)
        diff = sorted(k for k in set(st.settings) | set(settings) if st.settings.get(k) != settings.get(k))
        if diff:
            raise ConfigError(f"{out} was generated with other settings ({', '.join(diff)} differ); use another "
                              f"--out, or delete it and {sp.name} to start over")
        size = out.stat().st_size if out.exists() else 0
        if size < st.bytes:
            raise HerdError(f"{out} is shorter ({size} bytes) than its state says ({st.bytes}); it was "
                            f"modified. Delete {sp.name} to continue from the records it holds now")
        if size > st.bytes:
            with open(out, "r+b") as f:
                f.truncate(st.bytes)  # an interrupted batch: it is redone, identically
        return st, _load_records(out) if out.exists() else []
    st = GenerationState(settings=settings)
    recs = _load_records(out) if out.exists() else []
    if recs:
        st.kept = st.adopted = len(recs)
        st.bytes = out.stat().st_size
    return st, recs


def settings_record(cfg: GenerationSettings, teacher_key: str) -> dict:
    """What fixes the sequence of requests (not ``n``/``max_requests``, which may grow on a restart)."""
    v = VARIANTS[cfg.variant]
    seeds = Path(cfg.seeds) if cfg.seeds else default_seed_file()
    rec = {"variant": v.name, "teacher": teacher_key, "seed": cfg.seed, "seeds_sha256": sha256_file(seeds),
           "batch": cfg.request_batch_size or v.request_batch_size, "max_tokens": cfg.max_tokens or v.max_tokens,
           "temperature": v.temperature if cfg.temperature is None else cfg.temperature,
           "top_p": v.top_p if cfg.top_p is None else cfg.top_p, "drop_empty_output": cfg.drop_empty_output}
    if v.name == "alpaca":
        rec["prompt_sha256"] = sha256_file(Path(cfg.prompt_file) if cfg.prompt_file else default_prompt_file())
    return rec


def _postfix(st: GenerationState) -> str:
    rej = " ".join(f"{k}={st.rejected[k]}" for k in REASONS if st.rejected.get(k))
    return f"req={st.requests} kept={st.kept} " + (f"rejected: {rej}" if rej else "")


def generate_self_instruct(cfg: GenerationSettings, teacher, out: str | Path, *, progress: bool = True,
                           log=None) -> GenerationState:
    """Run (or continue) a generation into ``out``; returns the final state (its counts are the report)."""
    from herd.data.builds.selfinstruct.novelty import (
        NoveltyPool,  # rouge_score pulls in nltk: load it only to generate
    )

    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    v = VARIANTS[cfg.variant]
    final = out
    if v.name == "self-instruct":  # step 1 bootstraps into its own file; OUT gets the instances
        check_out(final)
        out = step_paths(final)["instructions"]
    settings = settings_record(cfg, teacher.key)
    seeds = load_seeds(cfg.seeds)
    header = load_prompt_header(cfg.prompt_file) if v.name == "alpaca" else ""
    sampling = Sampling(max_tokens=settings["max_tokens"], temperature=settings["temperature"],
                        top_p=settings["top_p"], stop=v.stop, presence_penalty=v.presence_penalty,
                        ban_eos=v.ban_eos)
    st, records = open_state(out, settings)
    machine = [r["instruction"] for r in records]
    pool = NoveltyPool([s.instruction for s in seeds] + machine)
    blacklist = blacklist_regex(v.blacklist)
    batch = settings["batch"]
    if records or st.requests:
        log(f"[self-instruct] continuing {out}: {len(records)} tasks kept, {st.requests} requests done")
    bar = Progress(total=cfg.n, initial=min(st.kept, cfg.n), desc="self-instruct", unit="task",
                   postfix=_postfix(st), enabled=progress)
    with bar, open(out, "a", encoding="utf-8") as f:
        while st.kept < cfg.n and (cfg.max_requests is None or st.requests < cfg.max_requests):
            r0 = st.requests
            prompts = [build_prompt(v, request_rng(cfg.seed, r0 + i), seeds, header, machine) for i in range(batch)]
            completions = teacher.complete(prompts, replace(sampling, seed=cfg.seed * 1_000_003 + r0))
            lines = []
            for c in completions:
                st.finish[c.finish_reason] += 1
                if v.name == "alpaca":
                    tasks, dropped = parse_alpaca(c.text, v.demos, c.finish_reason, chat=teacher.chat)
                else:
                    tasks, dropped = parse_self_instruct(c.text, c.finish_reason)
                st.rejected.update(dropped)
                for t in tasks:
                    st.items += 1
                    reason = filter_reason(t.instruction, blacklist)
                    if reason is None and v.name == "alpaca" and cfg.drop_empty_output and not t.output:
                        reason = "empty_output"
                    verdict = None
                    if reason is None:
                        verdict = pool.check(t.instruction)
                        reason = None if verdict.novel else "similar"
                    if reason:
                        st.rejected[reason] += 1
                        continue
                    pool.add(t.instruction, verdict.tokens)
                    machine.append(t.instruction)
                    rec = t.record() if v.name == "alpaca" else {"instruction": t.instruction, "request_idx": r0}
                    lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
            st.requests += len(prompts)
            st.kept += len(lines)
            st.bytes = os.fstat(f.fileno()).st_size
            _save_state(out, st)
            bar.set_postfix_str(_postfix(st))
            bar.update(max(0, min(st.kept, cfg.n) - bar.n))
    if v.name == "self-instruct":
        st.instances = run_instance_steps(machine, settings, teacher, final, progress=progress, log=log)
    return st


def format_report(st: GenerationState, out: Path | str) -> str:
    """The rejection table: reason, count, share of the tasks that reached the filters (then, for the
    original variant, its classification and instance counts and the instances' drop reasons)."""
    head = out if st.instances is None else step_paths(Path(out))["instructions"]
    lines = [f"self-instruct → {head}",
             f"  requests {st.requests} (finish: " + ", ".join(f"{k} {n}" for k, n in sorted(st.finish.items()))
             + f"); well-formed tasks {st.items}; kept {st.kept}"
             + (f" (incl. {st.adopted} found in the file)" if st.adopted else "")]
    for k in REASONS:
        if st.rejected.get(k):
            share = f"{100 * st.rejected[k] / st.items:5.1f} % of tasks" if st.items and k not in (
                "truncated", "malformed", "response_truncated") else "   (not a task)"
            lines.append(f"  rejected {k:<18} {st.rejected[k]:>7}  {share}")
    if st.instances is not None:
        lines += ["self-instruct instances:"] + format_instance_report(st.instances, out)
    return "\n".join(lines)
