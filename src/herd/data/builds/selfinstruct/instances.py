"""The original Self-Instruct after instruction bootstrapping: classification, instances, clean-up.

The steps of yizhongw/self-instruct's README (``scripts/is_clf_or_not.sh``, ``scripts/generate_instances.sh``,
``scripts/prepare_for_finetuning.sh``), with their published settings:

2. ``self_instruct/identify_clf_or_not.py``: each instruction after the few-shot ``template_1``
   (``self_instruct/templates/clf_task_template.py``), ``max_tokens=3``, ``temperature=0``, ``top_p=0``,
   no penalties, ``stop=["\\n", "Task"]``, 5 requests a batch; the answer stripped is a classification
   task iff it is ``Yes``/``yes``/``YES``.
3. ``self_instruct/generate_instances.py``: the output-first template for classification tasks, the
   input-first one otherwise (``self_instruct/templates/instance_gen_template.py``), ``temperature=0``,
   ``top_p=0``, ``presence_penalty=1.5``, ``stop=["Example 6", "Task:"]`` (``--max_instances_to_gen 5``),
   ``max_tokens`` 300 for a batch holding any classification task ("because the clf template is longer")
   and 350 otherwise, 5 requests a batch.
4. ``self_instruct/prepare_for_finetuning.py`` up to its ``all_generated_instances.jsonl``: parse (``parse``),
   drop the last instance of a response cut at the length limit, ``filter_invalid_instances``,
   ``filter_duplicate_instances``, at most 5 instances per instruction (``filters``); one Alpaca record
   (``instruction``, ``input``, ``output``) per instance plus the original's ``is_classification``. Its later
   GPT-3 encoding (random prompt templates, field names stripped half the time) is left to herd's
   templates, and its ``--include_seed_tasks`` applies to that GPT-3 file only, so neither is done here.

Files beside ``OUT`` (named after the original's): ``OUT-stem.machine_generated_instructions.jsonl`` (step 1,
with its ``.state.json``), ``OUT-stem.is_clf_or_not.jsonl`` (step 2) and
``OUT-stem.machine_generated_instances.jsonl`` (step 3), one line per instruction in the order of step 1,
append-only. A restart drops a half-written line, re-checks that line ``i`` belongs to instruction ``i``,
and continues at the next batch; batches always start at multiples of the batch size (a short last batch
is redone when step 1 has grown since), so with an in-process teacher a resumed run writes what an
unbroken one would have. ``OUT`` itself involves no teacher call: it is rewritten from step 3's file at
the end of every run. ``OUT.state.json`` pins the settings of all steps.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

from herd.core.errors import ConfigError, HerdError
from herd.core.hashing import sha256_json
from herd.core.progress import Progress
from herd.data.builds.selfinstruct.filters import (
    INSTANCE_REASONS,
    MAX_INSTANCES_PER_TASK,
    filter_duplicate_instances,
    filter_invalid_instances,
    limit_instances,
)
from herd.data.builds.selfinstruct.original_templates import (
    input_first_template_for_gen,
    output_first_template_for_clf,
    template_1,
)
from herd.data.builds.selfinstruct.parse import (
    Instance,
    parse_classification_instances,
    parse_generation_instances,
)
from herd.data.builds.selfinstruct.prompt import clf_prompt, instance_prompt
from herd.data.builds.selfinstruct.teachers import Sampling

PIPELINE = "self-instruct-original"
CLF_SAMPLING = Sampling(max_tokens=3, temperature=0.0, top_p=0.0, stop=("\n", "Task"), presence_penalty=0.0)
CLF_YES = ("Yes", "yes", "YES")
MAX_INSTANCES_TO_GENERATE = 5           # scripts/generate_instances.sh: --max_instances_to_gen 5
INSTANCE_MAX_TOKENS = {True: 300, False: 350}


def instance_sampling(any_classification: bool) -> Sampling:
    """Step 3's request settings for a batch (its max_tokens depends on whether it holds a clf task)."""
    return Sampling(max_tokens=INSTANCE_MAX_TOKENS[any_classification], temperature=0.0, top_p=0.0,
                    stop=(f"Example {MAX_INSTANCES_TO_GENERATE + 1}", "Task:"), presence_penalty=1.5)


def is_classification_answer(text: str) -> bool:
    """``data["is_classification"].strip() in ["Yes", "yes", "YES"]``."""
    return text.strip() in CLF_YES


def step_paths(out: Path) -> dict[str, Path]:
    """Where the per-step files of ``out`` live."""
    return {step: out.with_name(f"{out.stem}.{name}.jsonl") for step, name in (
        ("instructions", "machine_generated_instructions"), ("clf", "is_clf_or_not"),
        ("raw", "machine_generated_instances"))}


def pipeline_state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state.json")


def pipeline_settings(instruction_settings: dict) -> dict:
    """Everything that fixes steps 2-4 (the templates by hash, so an edit to them is noticed)."""
    templates = {"clf": template_1, "output_first": output_first_template_for_clf,
                 "input_first": input_first_template_for_gen}
    return {"instructions": instruction_settings, "templates_sha256": sha256_json(templates),
            "clf": {"max_tokens": CLF_SAMPLING.max_tokens, "temperature": 0.0, "top_p": 0.0,
                    "stop": list(CLF_SAMPLING.stop)},
            "instances": {"max_tokens": {"clf": INSTANCE_MAX_TOKENS[True], "gen": INSTANCE_MAX_TOKENS[False]},
                          "temperature": 0.0, "top_p": 0.0, "presence_penalty": 1.5,
                          "stop": list(instance_sampling(False).stop)},
            "max_instances_per_instruction": MAX_INSTANCES_PER_TASK}


def check_out(out: Path) -> None:
    """Refuse an ``OUT`` written by something else (Alpaca's variant, or an older herd whose original
    variant wrote its bootstrapped instructions to ``OUT`` itself)."""
    sp = pipeline_state_path(out)
    if not sp.exists():
        return
    d = json.loads(sp.read_text())
    if d.get("pipeline") == PIPELINE:
        return
    variant = (d.get("settings") or {}).get("variant")
    if variant == "self-instruct":
        raise ConfigError(f"{out} holds bootstrapped instructions only (an earlier herd); to continue from them, "
                          f"rename it to {step_paths(out)['instructions'].name} and {sp.name} to "
                          f"{step_paths(out)['instructions'].name}.state.json")
    raise ConfigError(f"{out} was generated with other settings (variant {variant}); use another --out")


def _check_pipeline_state(out: Path, settings: dict) -> None:
    sp = pipeline_state_path(out)
    if sp.exists():
        old = json.loads(sp.read_text()).get("settings", {})
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise ConfigError(f"{out} was generated with other settings ({', '.join(diff)} differ); use another "
                              f"--out, or delete its step files and {sp.name} to start over")
        return
    tmp = sp.with_name(sp.name + ".tmp")
    tmp.write_text(json.dumps({"pipeline": PIPELINE, "settings": settings}, indent=1) + "\n")
    os.replace(tmp, sp)


def _resume(path: Path, instructions: list[str], batch: int) -> list[dict]:
    """The records of ``path`` to keep: whole lines that match ``instructions``, ending on a batch boundary
    unless the step is complete; the rest is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    recs, ends, pos = [], [], 0
    for lineno, line in enumerate(data[:data.rfind(b"\n") + 1].split(b"\n")[:-1], 1):
        pos += len(line) + 1
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HerdError(f"{path}:{lineno}: not JSON; the file was edited, or written by something else") from None
        if lineno > len(instructions) or rec.get("instruction") != instructions[lineno - 1]:
            raise HerdError(f"{path}:{lineno}: not the instruction on line {lineno} of the bootstrapped "
                            "instructions; it belongs to another run: delete it to redo this step")
        recs.append(rec)
        ends.append(pos)
    keep = len(recs)
    if keep < len(instructions):
        keep -= keep % batch
    size = ends[keep - 1] if keep else 0
    if size < len(data):
        with open(path, "r+b") as f:
            f.truncate(size)
    return recs[:keep]


def _run_step(path: Path, instructions: list[str], batch: int, build, teacher, seed: int, *, desc: str,
              progress: bool) -> list[dict]:
    """One teacher step over all instructions; ``build(start, chunk)`` gives the prompts, the sampling and
    the record of each completion."""
    done = _resume(path, instructions, batch)
    bar = Progress(total=len(instructions), initial=len(done), desc=desc, unit="instruction",
                   enabled=progress and len(done) < len(instructions))
    with bar, open(path, "a", encoding="utf-8") as f:
        for start in range(len(done), len(instructions), batch):
            chunk = instructions[start:start + batch]
            prompts, sampling, record = build(start, chunk)
            completions = teacher.complete(prompts, replace(sampling, seed=seed * 1_000_003 + start))
            recs = [record(start + i, c) for i, c in enumerate(completions)]
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
            f.flush()
            os.fsync(f.fileno())
            done += recs
            bar.update(len(recs))
    return done


def prepare_instances(raw: str, instruction: str, is_classification: bool, finish_reason: str,
                      rng: random.Random) -> tuple[list[Instance], Counter]:
    """``prepare_for_finetuning.py`` for one task: parse, drop a truncated last instance, filter, limit."""
    parse = parse_classification_instances if is_classification else parse_generation_instances
    instances, counts = parse(raw, instruction, finish_reason)
    instances = filter_invalid_instances(instances, counts)
    instances = filter_duplicate_instances(instances, counts)
    return limit_instances(instances, rng, counts), counts


def instance_rng(seed: int, index: int) -> random.Random:
    """The instance sample of instruction ``index`` draws from its own stream (reproducible, resumable)."""
    return random.Random(f"herd-self-instruct-instances:{seed}:{index}")


def write_records(raw_records: list[dict], out: Path, seed: int) -> dict:
    """Step 4: ``out`` (rewritten atomically) from step 3's records; returns its counts."""
    counts: Counter = Counter()
    lines, with_records = [], 0
    for idx, rec in enumerate(raw_records):
        insts, c = prepare_instances(rec["raw_instances"], rec["instruction"], rec["is_classification"],
                                     rec["finish_reason"], instance_rng(seed, idx))
        counts.update(c)
        with_records += bool(insts)
        lines += [json.dumps({"instruction": i.instruction, "input": i.input, "output": i.output,
                              "is_classification": rec["is_classification"]}, ensure_ascii=False) + "\n"
                  for i in insts]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, out)
    return {"parsed": counts.pop("parsed", 0), "records": len(lines), "instructions_with_records": with_records,
            "dropped": {k: counts[k] for k in INSTANCE_REASONS if counts.get(k)}}


def run_instance_steps(instructions: list[str], instruction_settings: dict, teacher, out: Path, *,
                       progress: bool = True, log=print) -> dict:
    """Steps 2-4 over the bootstrapped ``instructions``; returns the counts the report shows."""
    out = Path(out)
    paths = step_paths(out)
    _check_pipeline_state(out, pipeline_settings(instruction_settings))
    batch, seed = instruction_settings["batch"], instruction_settings["seed"]

    def clf_batch(start, chunk):
        return ([clf_prompt(x) for x in chunk], CLF_SAMPLING,
                lambda i, c: {"instruction": instructions[i], "is_classification": c.text,
                              "finish_reason": c.finish_reason})

    clf_recs = _run_step(paths["clf"], instructions, batch, clf_batch, teacher, seed, desc="is-clf",
                         progress=progress)
    is_clf = [is_classification_answer(r["is_classification"]) for r in clf_recs]

    def instance_batch(start, chunk):
        flags = is_clf[start:start + len(chunk)]
        return ([instance_prompt(x, f) for x, f in zip(chunk, flags)], instance_sampling(any(flags)),
                lambda i, c: {"instruction": instructions[i], "is_classification": is_clf[i],
                              "raw_instances": c.text, "finish_reason": c.finish_reason})

    raw_recs = _run_step(paths["raw"], instructions, batch, instance_batch, teacher, seed, desc="instances",
                         progress=progress)
    stats = write_records(raw_recs, out, seed)
    stats.update(instructions=len(instructions), classification=sum(is_clf),
                 clf_finish=dict(Counter(r["finish_reason"] for r in clf_recs)),
                 instance_finish=dict(Counter(r["finish_reason"] for r in raw_recs)))
    log(f"[self-instruct] {stats['records']} instances for {stats['instructions_with_records']} of "
        f"{len(instructions)} instructions → {out}")
    return stats


def format_instance_report(stats: dict, out: Path | str) -> list[str]:
    """The lines the report adds for steps 2-4: counts, then each drop reason."""
    def fin(d):
        return ", ".join(f"{k} {n}" for k, n in sorted(d.items()))

    parsed = stats["parsed"]
    lines = [f"  classification tasks {stats['classification']} of {stats['instructions']} (finish: "
             f"{fin(stats['clf_finish'])})",
             f"  instance requests {stats['instructions']} (finish: {fin(stats['instance_finish'])}); instances "
             f"parsed {parsed}; records {stats['records']} for {stats['instructions_with_records']} instructions "
             f"→ {out}"]
    for k in INSTANCE_REASONS:
        n = stats["dropped"].get(k)
        if n:
            share = "   (responses)" if k == "no_instances" else f"{100 * n / parsed:5.1f} % of instances"
            lines.append(f"  dropped {k:<19} {n:>7}  {share}")
    return lines
