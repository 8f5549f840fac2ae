"""Recipe evals for code derivations (Code Llama, dossier §3.7): HumanEval, HumanEval infilling, MBPP.

Parent and derived see identical problems, prompts and seeds; each is tokenized with its OWN tokenizer
(a Code Llama derivation adds the FIM sentinels, the parent has none). Generated programs run in
:mod:`herd.engine.sandbox`; every sample's completion and verdict is written to ``code_eval/*.jsonl``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from herd.core.paired import with_paired
from herd.evals import humaneval as he
from herd.evals.registry import EvalConfig, EvalContext, EvalOutput, register_eval

ROLES = ("parent", "derived")


class _ExecConfig(EvalConfig):
    data: str
    n_problems: int | None = Field(default=None, gt=0)  # the first N problems (None: all)
    max_new_tokens: int = Field(default=512, gt=0)
    timeout: float = Field(default=3.0, gt=0)  # seconds per program (human-eval's default)
    memory_mb: int = Field(default=1024, ge=64)
    batch_size: int = Field(default=8, gt=0)
    workers: int = Field(default=2, ge=1, le=2)  # programs executed at once

    def unavailable(self, recipe_dir: Path) -> str | None:
        from herd.core.paths import resolve_data_path

        path = resolve_data_path(self.data, recipe_dir)
        return None if path.is_file() else f"data file {path} not found"


class _PassAtKConfig(_ExecConfig):
    k: list[int] = Field(default_factory=lambda: [1, 10])  # pass@1 greedy; larger k from samples
    n_samples: int = Field(default=20, gt=0)  # sampled completions per problem for k > 1
    temperature: float = Field(default=0.8, gt=0)  # Code Llama §3: T=0.8, top-p 0.95 for pass@10/100
    top_p: float = Field(default=0.95, gt=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _k_fits(self):
        if not self.k or any(k < 1 for k in self.k):
            raise ValueError("k: give one or more values >= 1")
        big = [k for k in self.k if k > 1]
        if big and self.n_samples < max(big):
            raise ValueError(f"n_samples ({self.n_samples}) must be >= the largest k ({max(big)})")
        return self


class HumanEvalConfig(_PassAtKConfig):
    data: str = he.HUMANEVAL


class HumanEvalInfillingConfig(_ExecConfig):
    data: str = he.HUMANEVAL_INFILLING
    modes: list[Literal["psm", "spm"]] = Field(default_factory=lambda: ["psm", "spm"], min_length=1)
    single_line: bool | None = None  # stop at a newline; None: when the file is the single-line benchmark
    max_new_tokens: int = Field(default=128, gt=0)
    middle_nll: bool = True  # also score the true middle's likelihood (a graded infilling measure)
    # modes whose prompt drops the prefix's last token, which the model writes again (humaneval.healed_prompt:
    # the paper's SentencePiece ends the prefix at a token boundary, a byte-level BPE that merges newline +
    # indentation does not); the middle NLL of the paper's prompt is reported beside. true: both; false: none
    token_healing: list[Literal["psm", "spm"]] = Field(default_factory=lambda: ["psm", "spm"])
    # "all": every task in file order. "dev"/"test": tasks split BY HumanEval problem (``dev_problems`` of
    # the 164, chosen with ``split_seed``), in a seeded random order so that n_problems samples them;
    # settings are chosen on dev, and a final run scores test once
    split: Literal["all", "dev", "test"] = "all"
    dev_problems: int = Field(default=40, gt=0, lt=164)
    split_seed: int = 0

    @field_validator("token_healing", mode="before")
    @classmethod
    def _all_or_none(cls, v):
        return (["psm", "spm"] if v else []) if isinstance(v, bool) else v


class MBPPConfig(_PassAtKConfig):
    data: str = he.MBPP
    k: list[int] = Field(default_factory=lambda: [1])
    shots: list[int] = Field(default_factory=lambda: list(he.MBPP_SHOTS))  # task_ids quoted as examples
    task_ids: tuple[int, int] = he.MBPP_TEST_IDS  # inclusive range scored (the test split)


# ---- shared plumbing ---------------------------------------------------------------------------------

def _data_path(ctx: EvalContext, spec: str) -> Path:
    from herd.core.errors import ConfigError
    from herd.core.paths import resolve_data_path

    recipe = ctx.recipe
    recipe_dir = Path(recipe.source_file).parent if recipe is not None and recipe.source_file else Path.cwd()
    path = resolve_data_path(spec, recipe_dir)
    if not path.is_file():
        raise ConfigError(f"code eval data {path} not found")
    return path


def _role_path(ctx: EvalContext, role: str) -> Path:
    return ctx.parent_path if role == "parent" else ctx.derived_path


def _tokenizer(ctx: EvalContext, role: str):
    from herd.base import load_tokenizer

    return load_tokenizer(_role_path(ctx, role))


def _execute(ctx: EvalContext, cfg: _ExecConfig, jobs: list[dict], what: str) -> None:
    """Run every job's ``program`` in the sandbox; adds status/passed/detail/seconds to each job."""
    import gc

    from herd.engine.sandbox import run_programs

    ctx._cache.clear()  # free the model first: each sandbox start forks this process
    gc.collect()
    ctx.log(f"{what}: executing {len(jobs)} programs (timeout {cfg.timeout:g} s, {cfg.workers} workers)")
    results = run_programs([j.pop("program") for j in jobs], timeout=cfg.timeout, memory_mb=cfg.memory_mb,
                           workers=cfg.workers, progress=ctx.progress, desc=f"eval {what} execute")
    for j, r in zip(jobs, results, strict=True):
        j.update(r.as_dict())


def _write(ctx: EvalContext, name: str, jobs: list[dict]) -> str:
    out_dir = Path(ctx.out_dir) / "code_eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text("".join(json.dumps(j, ensure_ascii=False) + "\n" for j in jobs))
    return str(path)


def _statuses(jobs: list[dict]) -> dict:
    return {role: dict(Counter(j["status"] for j in jobs if j["role"] == role)) for role in ROLES}


def _pct(x: float) -> float:
    return round(100 * x, 2)


def _markdown(title: str, metrics: list[dict], statuses: dict) -> str:
    from herd.engine.sandbox import isolation

    iso = isolation().describe()
    lines = [f"### {title}", "", "| metric | parent | derived |", "|---|---:|---:|"]
    lines += [f"| {m['task']} | {m['parent']} | {m['derived']} |" for m in metrics]
    lines += ["", "Program outcomes: " + "; ".join(
        f"{role} " + ", ".join(f"{k} {v}" for k, v in sorted(statuses[role].items())) for role in ROLES),
        f"Sandbox: {iso['run_as']}, namespaces {iso['namespaces']}, rlimits, audit hook."]
    return "\n".join(lines) + "\n"


def _pass_at_k(ctx: EvalContext, cfg: _PassAtKConfig, *, bench: str, prompts: list[str], ids: list,
               program: Callable[[int, str], str], stops: Sequence[str], dataset: str, task_label: str,
               file_stem: str) -> EvalOutput:
    """Greedy pass@1 and sampled pass@k for parent and derived (HumanEval and MBPP share this)."""
    greedy = 1 in cfg.k
    big = sorted(k for k in cfg.k if k > 1)
    jobs: list[dict] = []
    for role in ROLES:
        tok, model = _tokenizer(ctx, role), ctx.model(role)
        if greedy:
            ctx.log(f"{bench} greedy completions, {role} ({len(prompts)} problems)")
            outs = he.complete(model, tok, prompts, stops=stops, max_new_tokens=cfg.max_new_tokens,
                               batch_size=cfg.batch_size, progress=ctx.progress, desc=f"eval {bench} {role} greedy")
            jobs += [{"task_id": i, "role": role, "kind": "greedy", "sample": 0, "completion": o[0],
                      "program": program(idx, o[0])} for idx, (i, o) in enumerate(zip(ids, outs))]
        if big:
            ctx.log(f"{bench} sampled completions, {role} ({len(prompts)} problems x {cfg.n_samples})")
            outs = he.complete(model, tok, prompts, stops=stops, max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.temperature, top_p=cfg.top_p, n=cfg.n_samples,
                               batch_size=cfg.batch_size, seed=cfg.seed, progress=ctx.progress,
                               desc=f"eval {bench} {role} sampled")
            jobs += [{"task_id": i, "role": role, "kind": "sample", "sample": s, "completion": c,
                      "program": program(idx, c)}
                     for idx, (i, o) in enumerate(zip(ids, outs)) for s, c in enumerate(o)]
        del tok, model  # so that _execute can free it
    _execute(ctx, cfg, jobs, bench)
    files = [_write(ctx, f"{file_stem}-{role}.jsonl", [j for j in jobs if j["role"] == role]) for role in ROLES]
    per_problem: dict[str, dict[int, list[float]]] = {role: {} for role in ROLES}  # for the paired CIs
    for role in ROLES:
        if greedy:
            per_problem[role][1] = [float(j["passed"]) for j in jobs if j["role"] == role and j["kind"] == "greedy"]
        for k in big:
            n_c = {}
            for j in jobs:
                if j["role"] == role and j["kind"] == "sample":
                    n, c = n_c.get(j["task_id"], (0, 0))
                    n_c[j["task_id"]] = (n + 1, c + int(j["passed"]))
            per_problem[role][k] = [float(x) for x in he.estimate_pass_at_k(*zip(*[n_c[i] for i in ids]), k)] \
                if n_c else []
    scores = {role: {k: he.mean(v) for k, v in per_problem[role].items()} for role in ROLES}
    metrics = []
    for k in sorted(cfg.k):
        how = "greedy" if k == 1 else f"T={cfg.temperature:g}, top-p {cfg.top_p:g}, n={cfg.n_samples}"
        metrics.append(with_paired({"task": f"{task_label} pass@{k} % ({how})", "name": f"pass@{k}", "dataset": dataset,
                                    "parent": _pct(scores["parent"][k]), "derived": _pct(scores["derived"][k]),
                                    "better": "higher"}, per_problem["parent"][k], per_problem["derived"][k],
                                   scale=100, digits=2))
    statuses = _statuses(jobs)
    extra = {bench: {"problems": len(prompts), "k": sorted(cfg.k), "n_samples": cfg.n_samples if big else 0,
                     "statuses": statuses, "files": files}}
    return EvalOutput(metrics=metrics, extra=extra, markdown=_markdown(task_label, metrics, statuses), files=files)


# ---- the evals ---------------------------------------------------------------------------------------

@register_eval("humaneval", HumanEvalConfig)
def run_humaneval(ctx: EvalContext, cfg: HumanEvalConfig) -> EvalOutput:
    """HumanEval 0-shot (Code Llama Table 2): pass@1 greedy, pass@k sampled at T=0.8, top-p 0.95."""
    path = _data_path(ctx, cfg.data)
    problems = he.load_humaneval(path)[: cfg.n_problems]
    return _pass_at_k(ctx, cfg, bench="humaneval", prompts=[p["prompt"] for p in problems],
                      ids=[p["task_id"] for p in problems],
                      program=lambda i, c: he.check_program(problems[i], c), stops=he.STOP_SEQUENCES,
                      dataset=f"{path.name} ({len(problems)} problems, openai/human-eval)",
                      task_label="HumanEval", file_stem="humaneval")


@register_eval("mbpp", MBPPConfig)
def run_mbpp(ctx: EvalContext, cfg: MBPPConfig) -> EvalOutput:
    """MBPP 3-shot (Code Llama Table 2), Austin et al.'s prompt; generation stops at ``[DONE]``."""
    from herd.core.errors import ConfigError

    path = _data_path(ctx, cfg.data)
    rows = he.load_mbpp(path)
    by_id = {r["task_id"]: r for r in rows}
    missing = [i for i in cfg.shots if i not in by_id]
    if missing:
        raise ConfigError(f"evals.mbpp.shots: task_ids {missing} not in {path}")
    shots = [by_id[i] for i in cfg.shots]
    problems = he.mbpp_split(rows, cfg.task_ids)[: cfg.n_problems]
    lo, hi = cfg.task_ids
    return _pass_at_k(ctx, cfg, bench="mbpp", prompts=[he.mbpp_prompt(p, shots) for p in problems],
                      ids=[p["task_id"] for p in problems],
                      program=lambda i, c: he.mbpp_program(problems[i], c), stops=he.MBPP_STOP,
                      dataset=f"{path.name} task_ids {lo}-{hi} ({len(problems)} problems, "
                              f"{len(shots)}-shot)", task_label=f"MBPP {len(shots)}-shot", file_stem="mbpp")


@register_eval("humaneval_infilling", HumanEvalInfillingConfig)
def run_humaneval_infilling(ctx: EvalContext, cfg: HumanEvalInfillingConfig) -> EvalOutput:
    """HumanEval infilling (Bavarian et al. 2022; Code Llama §3.2), greedy, PSM and SPM prompts.

    Two scores per mode: exact match of the generated middle (stripped lines) and pass@1 of
    prefix + middle + suffix under the problem's tests."""
    path = _data_path(ctx, cfg.data)
    every = he.load_infilling(path)
    pool = he.infilling_split(every, cfg.split, dev_problems=cfg.dev_problems, seed=cfg.split_seed)
    problems = pool[: cfg.n_problems]
    single = cfg.single_line if cfg.single_line is not None else "SingleLine" in path.name
    jobs: list[dict] = []
    for role in ROLES:
        tok, model = _tokenizer(ctx, role), ctx.model(role)
        for mode in cfg.modes:
            ctx.log(f"HumanEval infilling ({mode.upper()}), {role} ({len(problems)} tasks)")
            desc = f"eval humaneval_infilling {role} {mode}"
            heal = mode in cfg.token_healing
            middles = he.infill(model, tok, problems, mode, single_line=single, max_new_tokens=cfg.max_new_tokens,
                                batch_size=cfg.batch_size, heal=heal, progress=ctx.progress, desc=desc)
            nll = he.middle_nll(model, tok, problems, mode, heal=heal, progress=ctx.progress,
                                desc=f"{desc} middle NLL") if cfg.middle_nll else [None] * len(problems)
            raw = he.middle_nll(model, tok, problems, mode, progress=ctx.progress,
                                desc=f"{desc} middle NLL, paper's prompt") if cfg.middle_nll and heal \
                else [None] * len(problems)
            jobs += [{"task_id": p["task_id"], "role": role, "mode": mode, "middle": m,
                      "exact_match": he.exact_match(m, p["canonical_solution"]), "middle_nll": x,
                      "middle_nll_unhealed": r, "program": he.infilling_program(p, m)}
                     for p, m, x, r in zip(problems, middles, nll, raw)]
        del tok, model  # so that _execute can free it
    _execute(ctx, cfg, jobs, "humaneval_infilling")
    files = [_write(ctx, f"humaneval-infilling-{role}.jsonl", [j for j in jobs if j["role"] == role])
             for role in ROLES]
    bench = "single-line" if single else path.name
    dataset = f"{path.name} ({len(problems)} tasks, openai/human-eval-infilling)"
    split_note = None
    if cfg.split != "all":
        other_name = "test" if cfg.split == "dev" else "dev"
        other = he.infilling_split(every, other_name, dev_problems=cfg.dev_problems, seed=cfg.split_seed)
        sizes = {cfg.split: len(pool), other_name: len(other)}
        n_prob = len({he.task_problem(t["task_id"]) for t in every})
        split_note = (f"Split by HumanEval problem (seed {cfg.split_seed}): dev {sizes['dev']} tasks of "
                      f"{cfg.dev_problems} problems, test {sizes['test']} tasks of {n_prob - cfg.dev_problems}; "
                      + (f"this run scores {len(problems)} test tasks; settings were chosen on dev, the test "
                         "split was not used for any choice" if cfg.split == "test"
                         else f"this run scores {len(problems)} DEV tasks, for choosing settings"))
        dataset = (f"{path.name}, {cfg.split} split: {len(problems)} of its {len(pool)} tasks ({other_name} split: "
                   f"{len(other)} tasks{'; settings chosen on dev only' if cfg.split == 'test' else ''}; "
                   "openai/human-eval-infilling)")
    metrics, nll_rows = [], []
    for mode in cfg.modes:
        for name, key in (("exact_match", "exact_match"), ("pass@1", "passed")):
            items = {role: [float(j[key]) for j in jobs if j["role"] == role and j["mode"] == mode] for role in ROLES}
            label = "exact match" if name == "exact_match" else "pass@1"
            how = ", token-healed prompt" if mode in cfg.token_healing else ""
            metrics.append(with_paired({"task": f"HumanEval {bench} infilling {label} % ({mode.upper()}{how}, greedy)",
                                        "name": f"{name}_{mode}", "dataset": dataset,
                                        "parent": _pct(he.mean(items["parent"])),
                                        "derived": _pct(he.mean(items["derived"])), "better": "higher"},
                                       items["parent"], items["derived"], scale=100, digits=2))
        if cfg.middle_nll:
            healed = mode in cfg.token_healing
            rows = [("middle_nll", f"middle_nll_{mode}", ", token-healed prompt" if healed else "")]
            if healed:
                rows.append(("middle_nll_unhealed", f"middle_nll_{mode}_unhealed", ", the paper's prompt"))
            for key, name, how in rows:
                nll = {role: [j[key] for j in jobs if j["role"] == role and j["mode"] == mode] for role in ROLES}
                pairs = [(q, d) for q, d in zip(nll["parent"], nll["derived"]) if q is not None and d is not None]
                wins = he.mean([float(d < q) for q, d in pairs])
                nll_rows.append(with_paired(
                    {"task": f"HumanEval {bench} infilling: NLL of the true middle, nats/token ({mode.upper()}{how}, "
                             f"teacher-forced; derived lower on {_pct(wins)}% of tasks)",
                     "name": name, "dataset": dataset, "parent": round(he.mean([q for q, _ in pairs]), 4),
                     "derived": round(he.mean([d for _, d in pairs]), 4), "better": "lower"},
                    [q for q, _ in pairs], [d for _, d in pairs]))
    metrics = nll_rows + metrics  # the graded measure first: exact match of a 135M model stays near 0
    statuses = _statuses(jobs)
    extra = {"humaneval_infilling": {"tasks": len(problems), "modes": list(cfg.modes), "single_line": single,
                                     "split": cfg.split, "split_note": split_note,
                                     "statuses": statuses, "files": files}}
    markdown = _markdown("HumanEval infilling", metrics, statuses) + (f"\n{split_note}\n" if split_note else "")
    return EvalOutput(metrics=metrics, extra=extra, markdown=markdown, files=files)
