"""``herd derive``: recipe → validated data → stages in order → scorecard → artifact.

Everything that can be wrong (recipe fields, data files, the base) is checked before a model loads.
Each stage's folder is named by a hash of its inputs (parent weights, data, template, stage config),
so re-running a recipe skips finished stages, and ``resume=True`` continues an interrupted one from
its last atomic checkpoint. The workspace ``out`` holds the stage artifacts, ``model`` (a link to
the last one, which carries the scorecard) and ``derive.json`` (:mod:`herd.core.run_record`: written
when the stages start, so a killed run can be found and resumed by what it records).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from herd.artifacts import is_artifact, model_card, read_lineage, write_lineage
from herd.base import BaseRef, resolve_base
from herd.core.errors import ConfigError, HerdError
from herd.core.hashing import sha256_file, sha256_json
from herd.core.machine import cpu_summary
from herd.core.paths import resolve_data_path
from herd.core.phases import PhaseLog, process_peak_mb, record, release_memory
from herd.core.progress import phase
from herd.core.recipe import Recipe, load_recipe
from herd.core.run_record import earlier_legs, read_run_record, run_args, running_record, write_run_record
from herd.data import load_examples
from herd.data.split import dedupe, split, split_dev
from herd.scorecard import evaluate_pair, unavailable_evals, write_scorecard
from herd.templates import get_template


@dataclass
class DeriveResult:
    path: Path
    scorecard: dict | None
    scorecard_md: str | None


def _run_builds(recipe: Recipe, base_spec: str, workspace: Path, progress: bool) -> list:
    """Run the recipe's data builds (cached by their settings); returns DataSources for their files."""
    from herd.core.recipe import DataSource
    from herd.core.registry import BUILDS
    from herd.data.builds import BuildContext

    out = []
    for b in recipe.builds:
        cfg_cls, fn = BUILDS[b["kind"]]
        cfg = cfg_cls.model_validate(b)
        if not cfg.enabled:
            continue
        path = workspace / "builds" / f"{cfg.name}-{sha256_json(b)[:10]}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        from herd.engine.generation import generate_ids

        with phase("derive", f"data build {cfg.name} ({b['kind']})", enabled=progress):
            res = fn(cfg, path, BuildContext(recipe=recipe, base_spec=base_spec, workspace=workspace,
                                             progress=progress, generate_ids=generate_ids))
        out.append(DataSource(name=cfg.name, path=str(res.path), format=res.format))
    return out


def _load_data(recipe: Recipe, data_override: list[str] | None, built: list | None = None,
               base_spec: str | None = None, transform: bool = True, progress: bool = True):
    recipe_dir = Path(recipe.source_file).parent if recipe.source_file else Path.cwd()
    sources = list(recipe.data) + list(built or [])
    if data_override:
        sources = [type(recipe.data[0])(name=Path(p).stem, path=str(Path(p).resolve()),
                                        format=recipe.data[0].format) for p in data_override]
    examples, records = [], []
    for src in sources:
        path = resolve_data_path(src.path, recipe_dir)
        if not path.exists():
            raise ConfigError(f"{recipe.source_file}: data '{src.name}': {path} not found"
                              + (" (set HERD_DATA to the shared datasets folder)" if src.path.startswith("shared:")
                                 else ""))
        exs = load_examples(path, src.format, **({"columns": src.columns} if src.columns else {}), **src.options)
        if src.max_records:
            exs = exs[: src.max_records]
        examples += exs
        records.append({"name": src.name, "path": str(path), "sha256": sha256_file(path), "records": len(exs)})
    if not examples:
        if not any(st.kind == "sft" for st in recipe.stages):
            return [], [], records, 0, None  # pretraining stages read their own documents
        raise ConfigError(f"{recipe.source_file}: no training data (give data: files or builds:)")
    transformed = None  # the transforms' DataReport, for the scorecard and lineage
    if transform and recipe.transforms:
        from herd.data.transforms import apply_transforms
        from herd.engine.generation import model_responder

        examples, transformed = apply_transforms(examples, recipe, base_spec or recipe.base, progress=progress,
                                                 responder=model_responder)
        if not examples:
            raise ConfigError(f"{recipe.source_file}: the transforms dropped every record ({transformed.summary()})")
    examples, n_dup = dedupe(examples)
    try:
        train, evals = split(examples, recipe.eval_size, recipe.split_seed)
    except ValueError as e:  # too few records for the held-out split: name the recipe setting
        low = max(1, len(examples) // 5)
        raise ConfigError(f"{recipe.source_file} (profile '{recipe.profile}'): {e}; give more records, "
                          f"or hold out fewer: --eval-size {low}"
                          + (f" --dev-size {low // 3}" if recipe.dev_size else "")) from None
    if recipe.max_train_records:
        train = train[: recipe.max_train_records]
    return train, evals, records, n_dup, transformed


def add_stage_results(card: dict, stage_runs: list) -> None:
    """Per-stage rows for the scorecard: each pretraining stage's held-out LM loss (its parent vs its
    output, plain text never trained on) and a table of what every stage trained."""
    rows = ["## Stages", "", "| # | stage | kind | steps | tokens | loss first → last | held-out LM loss |",
            "|---|---|---|---:|---:|---|---|"]
    for i, (stage, stage_dir, tr) in enumerate(stage_runs, 1):
        tr = tr or {}
        held = tr.get("heldout") or {}
        if held.get("parent") and held.get("derived"):
            n = held["parent"]["records"]
            card["metrics"].append({
                "task": f"held-out LM loss, stage {stage.name} (its input model vs its output)", "name": "lm_loss",
                "dataset": f"{n} held-out rows of the stage's documents ({held['parent']['tokens']} tokens)",
                "parent": held["parent"]["loss"], "derived": held["derived"]["loss"], "better": "lower",
                **(held.get("paired") or {})})
        first, last = tr.get("first_loss"), tr.get("final_loss")
        loss = f"{first:.4f} → {last:.4f}" if first is not None and last is not None else "–"
        hl = (f"{held['parent']['loss']:.4f} → {held['derived']['loss']:.4f}"
              if held.get("parent") and held.get("derived") else "–")
        rows.append(f"| {i} | {stage.name} | {stage.kind} | {tr.get('steps', '–')} | {tr.get('tokens', 0):,} | "
                    f"{loss} | {hl} |")
        data = tr.get("data") or tr.get("data_report") or {}
        card["extra"].setdefault("stages", []).append(
            {"name": stage.name, "kind": stage.kind, "dir": Path(stage_dir).name,
             **{k: tr.get(k) for k in ("steps", "tokens", "seconds", "first_loss", "final_loss", "heldout")},
             **({"fim": data["fim"]} if isinstance(data, dict) and data.get("fim") else {}),
             **({"mixture": data["mixture"]} if isinstance(data, dict) and data.get("mixture") else {})})
    for stage, _, tr in stage_runs:
        data = (tr or {}).get("data") or (tr or {}).get("data_report") or {}
        mix = data.get("mixture") if isinstance(data, dict) else None
        if mix:
            rows += ["", f"Stage `{stage.name}` mixture (token shares; the published recipe's sources are "
                     "listed in the deviations):", "", "| source | target share | realised share | tokens | epochs |",
                     "|---|---:|---:|---:|---:|"]
            rows += [f"| {m['name']} | {m['target_share']:.4f} | {m['realised_share']:.4f} | {m['tokens']:,} | "
                     f"{m['epochs']} |" for m in mix["sources"]]
        if isinstance(data, dict) and data.get("decontamination"):
            dc = data["decontamination"]
            rows += ["", f"Stage `{stage.name}` decontamination: {dc['train_docs']} documents checked against "
                     f"{dc['test_texts']} texts of {', '.join(dc['test_sets'])} ({dc['test_ids']} ids); largest "
                     f"{dc['ngram']}-gram overlap {dc['max_overlap']} (a leak is ≥ {dc['threshold']} and stops the run)."]
    card["sections"].insert(0, "\n".join(rows))


@dataclass
class Inputs:
    """The derivation's validated inputs: SFT records (train / held-out), their files, what changed them."""

    train: list
    evals: list
    data_records: list[dict]
    transformed: object  # the transforms' DataReport, or None
    recipe_dir: Path
    splits: dict | None = None  # held-out sizes when the recipe has a dev split: held_out, dev, test, scored


def derive(recipe_name: str, *, base: str | None = None, profile: str = "tiny", data: list[str] | None = None,
           out: str | Path | None = None, resume: bool = False, max_steps: int | None = None,
           overrides: dict | None = None, progress: bool = True,
           report_to: str | list[str] | None = None) -> DeriveResult:
    """``report_to`` (``"tensorboard,mlflow"``) replaces the recipe's ``report_to:`` list."""
    from herd.engine.reporting import parse_targets, reporting
    from herd.engine.training import dist_env

    recipe = _load(recipe_name, profile, overrides, max_steps, data)
    template = get_template(recipe.template)
    base_spec = base or recipe.base
    rank, _ = dist_env()
    targets = parse_targets(report_to if report_to is not None else recipe.report_to) if rank == 0 else []
    workspace = Path(out or Path("runs") / f"{recipe.name}-{Path(base_spec).stem}-{profile}")
    t0, started = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    params = {"recipe": recipe.name, "profile": profile, "base": base_spec, "max_steps": max_steps,
              "stages": {st.name: st.model_dump(mode="json") for st in recipe.stages}}
    command = reproduce_command(recipe_name, base, profile, data, out, max_steps, overrides)
    with PhaseLog() as phases, reporting(targets, workspace, f"{recipe.name}-{Path(base_spec).stem}-{profile}",
                                         params) as tracker:
        # 1. everything validated before a model loads (data builds may load a teacher: they run first)
        inputs = _inputs(recipe, data, base_spec, workspace, progress, rank)
        with record("base: resolve"):
            ref = resolve_base(base_spec)
        _preflight(recipe, ref, workspace, progress and rank == 0)
        workspace.mkdir(parents=True, exist_ok=True)
        recipe_rec = {"name": recipe.name, "file": recipe.source_file, "profile": profile,
                      "sha256": sha256_file(recipe.source_file) if recipe.source_file else None}
        run_rec = running_record(run_args(recipe_name, base=base, profile=profile, data=data, out=workspace,
                                          max_steps=max_steps, report_to=report_to, overrides=overrides,
                                          recipe_file=recipe.source_file),
                                 command, recipe_rec["sha256"], started)
        legs = earlier_legs(read_run_record(workspace)) if resume else []
        if legs:
            run_rec["earlier_legs"] = legs
        if rank == 0:  # from here a killed run is found, and resumed, by what derive.json says
            write_run_record(workspace, run_rec)
        try:
            # 2. stages in order, each from the previous policy artifact
            stage_runs, final, stage_recs = _run_stages(recipe, ref, template, inputs, workspace, recipe_rec,
                                            name=f"{recipe.name}-{ref.name}-{profile}", resume=resume,
                                            progress=progress)
            if rank != 0:
                return DeriveResult(stage_runs[-1][1], None, None)
            _link_model(workspace, final)
            # 3. scorecard: derived vs the recipe's parent, same inputs
            run = {"command": command, "started": started, "machine": cpu_summary(),
                   "stages": stage_recs}
            if legs:  # wall_seconds is this leg's; the stages finished before it ran in the earlier ones
                run["earlier_legs"] = legs
            card, md = _scorecard(recipe, template, ref, final, inputs, stage_runs, progress, run=run, t0=t0)
            if tracker is not None:
                tracker.log_scorecard(card, read_lineage(final))
        except BaseException as e:
            if rank == 0:
                write_run_record(workspace, {**run_rec, "state": "failed", "pid": None,
                                             "error": f"{type(e).__name__}: {e}"[:2000]})
            raise
    _record_phases(final, phases, progress)
    write_run_record(workspace, {**run_rec, "state": "done", "pid": None,
                                 "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 "recipe": recipe_rec, "base": ref.describe(), "model": final.name,
                                 "phases": phases.as_list(), "peak_rss_mb": round(phases.peak_rss_mb)})
    return DeriveResult(final, card, md)


def _preflight(recipe: Recipe, ref: BaseRef, workspace: Path, progress: bool) -> None:
    """Before any model loads: every training stage's kernels are available here (attention, QLoRA, 8-bit
    AdamW), and its predicted peak memory fits the device (engine/memory_plan.py; printed and written to
    ``memory_plan.json``). HERD_NO_MEMORY_CHECK=1 (``--no-memory-check``) prints the plan and runs anyway."""
    from herd.core.recipe import TrainStage
    from herd.engine import attention, memory_plan, quantized
    from herd.engine.training import device, resolve_precision

    dev = device().type
    stages = [st for st in recipe.stages if isinstance(st, TrainStage)]
    for st in stages:
        try:
            attention.choose(st.attention, dev)
        except ValueError as e:
            raise ConfigError(f"{recipe.source_file}: stages.{st.name}.{e}") from None
        if (st.method == "qlora" or st.optimizer_state == "8bit") and (why := quantized.missing()):
            what = "method qlora" if st.method == "qlora" else "optimizer_state 8bit"
            raise ConfigError(f"{recipe.source_file}: stages.{st.name}: {what} needs {why}")
    config = Path(ref.path) / "config.json"
    if not stages or not config.is_file():
        return
    shape = memory_plan.Shape.from_config(config)
    plans = [memory_plan.plan_train(shape, st, device=dev, bf16=resolve_precision(st.precision) is not None)
             for st in stages]
    if progress:
        for p in plans:
            print(f"[memory] {p.line()}", flush=True)
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "memory_plan.json").write_text(json.dumps([p.as_dict() for p in plans], indent=1) + "\n")
    if (found := memory_plan.check(plans, dev)) is not None:
        level, msg = found
        if level == "error" and os.environ.get("HERD_NO_MEMORY_CHECK") != "1":
            raise HerdError(msg)
        print(f"[memory] warning: {msg}", flush=True)


def _record_phases(final: Path, phases: PhaseLog, progress: bool) -> None:
    """The phase table into the derived artifact's lineage (``phases``), and on stderr."""
    lineage = read_lineage(final)
    lineage["phases"] = {"rows": phases.as_list(), "peak_rss_mb": round(phases.peak_rss_mb)}
    write_lineage(final, lineage, rehash=False)  # the scorecard just hashed these weights
    if progress:
        print("[derive] where the time and memory went:\n" + phases.table(), file=sys.stderr, flush=True)


def _load(recipe_name: str, profile: str, overrides: dict | None, max_steps: int | None,
          data: list[str] | None) -> Recipe:
    """The recipe with the command line's changes applied, each listed as a deviation."""
    recipe = load_recipe(recipe_name, profile, overrides)
    if max_steps:
        for st in recipe.stages:
            for target in (st, getattr(st, "sft", None)):  # rejection sampling trains through its sft settings
                if target is not None and "max_steps" in type(target).model_fields:
                    target.max_steps = max_steps
        recipe.deviations.append(f"setting stages.*.max_steps: {max_steps} (command line)")
    if data:
        recipe.deviations.append("data: the recipe's files replaced on the command line by "
                                 + ", ".join(Path(p).name for p in data))
    return recipe


def _inputs(recipe: Recipe, data: list[str] | None, base_spec: str, workspace: Path, progress: bool,
            rank: int) -> Inputs:
    """Data builds, records read/transformed/split, every stage's own sources checked: before any model."""
    from herd.core.registry import STAGE_CHECKS
    from herd.engine.distributed import barrier

    if rank == 0:
        for name, why in unavailable_evals(recipe).items():
            print(f"[eval] warning: evals.{name} will be skipped: {why} (listed in the scorecard's deviations)")
    if recipe.data and recipe.builds:
        _load_data(recipe, data, transform=False)  # the given files are checked before a build spends time
    built = []
    if recipe.builds:  # rank 0 builds; the others then read the cached files (builds are keyed by settings)
        if rank == 0:
            built = _run_builds(recipe, base_spec, workspace, progress)
        barrier()
        if rank != 0:
            built = _run_builds(recipe, base_spec, workspace, progress=False)
    what = "data: read" + (", transform" if recipe.transforms else "") + ", split"
    with phase("derive", what, enabled=progress and rank == 0):
        train, evals, data_records, n_dup, transformed = _load_data(recipe, data, built, base_spec,
                                                                    progress=progress and rank == 0)
    splits = None
    if recipe.dev_size:
        dev, test = split_dev(evals, recipe.dev_size, recipe.split_seed)
        splits = {"held_out": len(evals), "dev": len(dev), "test": len(test), "scored": recipe.eval_split}
        evals = dev if recipe.eval_split == "dev" else test
    recipe_dir = Path(recipe.source_file).parent if recipe.source_file else Path.cwd()
    for st in recipe.stages:
        if st.kind in STAGE_CHECKS:
            STAGE_CHECKS[st.kind](st, recipe_dir)
    if rank == 0:
        if transformed:
            print(f"[data] transforms: {transformed.summary()}")
        held = (f"{splits['held_out']} held-out records (dev {splits['dev']}, test {splits['test']}; "
                f"the evals score {splits['scored']})" if splits else f"{len(evals)} held-out records")
        print(f"[data] {len(train)} train / {held} from {len(data_records)} file(s)"
              + (f"; {n_dup} exact duplicates dropped" if n_dup else ""))
    return Inputs(train, evals, data_records, transformed, recipe_dir, splits)


def _run_stages(recipe: Recipe, ref: BaseRef, template, inputs: Inputs, workspace: Path, recipe_rec: dict, *,
                name: str, resume: bool, progress: bool) -> tuple[list, Path | None, list[dict]]:
    """Each stage from the previous policy artifact, through the stage registry (one signature); a
    finished stage (same inputs hash) is skipped. Returns [(stage, folder, summary)], the last policy, and
    the scorecard's ``run.stages`` (each stage's folder, the arithmetic it trained in, reused or trained)."""
    from herd.core.recipe import POLICY_KINDS
    from herd.core.registry import STAGES
    from herd.engine.distributed import barrier
    from herd.engine.reporting import set_stage
    from herd.engine.training import arithmetic_record, dist_env
    from herd.stages import StageContext

    rank, _ = dist_env()
    parent: BaseRef = ref
    stage_runs: list = []
    final = None
    records: list[dict] = []
    for i, stage in enumerate(recipe.stages, 1):
        key = _stage_key(recipe, stage, parent, template, inputs, stage_runs)
        stage_dir = workspace / f"{i:02d}-{stage.name}-{key[:10]}"
        with phase("derive", f"stage {i}/{len(recipe.stages)} {stage.name} ({stage.kind})",
                   enabled=progress and rank == 0):
            if is_artifact(stage_dir):
                lineage = read_lineage(stage_dir)
                was = {k: v for k, v in (lineage.get("stage") or {}).items() if k.endswith("arithmetic")}
                if rank == 0:
                    print(f"[{stage.name}] done already: {stage_dir}")
                    note = _arithmetic_note(stage, was.get("arithmetic"))
                    if note:
                        print(f"[{stage.name}] {note}")
                training = lineage.get("metrics")
                records.append({"name": stage.name, "folder": stage_dir.name, "arithmetic": None, **was,
                                "reused": True})
            else:
                set_stage(stage.name)
                ctx = StageContext(parent=parent, template=template, out=stage_dir, name=name, recipe=recipe_rec,
                                   resume=resume, progress=progress, workspace=workspace,
                                   recipe_dir=inputs.recipe_dir, train=inputs.train, data=inputs.data_records,
                                   earlier={st.name: d for st, d, _ in stage_runs})
                _, training = STAGES[stage.kind](stage, ctx)
                release_memory()  # the stage's model and optimizer are garbage now
                records.append({"name": stage.name, "folder": stage_dir.name, "arithmetic": None,
                                **arithmetic_record(stage), "reused": False})
        stage_runs.append((stage, stage_dir, training))
        barrier()  # rank 0 published the stage: every rank starts the next one from it
        if stage.kind in POLICY_KINDS:  # a reward model is used by later stages, not trained on
            parent = resolve_base(stage_dir)
            final = stage_dir
    return stage_runs, final, records


def _arithmetic_note(stage, was: str | None) -> str | None:
    """A finished stage reused where its ``precision`` would compute otherwise (``auto``: bf16 on a CPU
    with native bf16, fp32 elsewhere), said aloud: the folder's hash names the settings, not the
    arithmetic, so a workspace moved between machines reuses what the other machine trained."""
    from herd.engine.training import arithmetic_record

    here = arithmetic_record(stage).get("arithmetic")
    if was and here and was != here:
        return (f"trained in {was} (precision: {stage.precision}) on the machine that made it; this machine "
                f"computes {here}. Kept as it is; delete the folder to train it here")
    return None


def _stage_key(recipe: Recipe, stage, parent: BaseRef, template, inputs: Inputs, stage_runs: list) -> str:
    """The hash that names a stage's folder: everything its result depends on."""
    from herd.core.recipe import hash_dump

    return sha256_json({"parent": parent.sha256, "data": [d["sha256"] for d in inputs.data_records],
                        "train": len(inputs.train), "template": template.jinja,
                        "stage": hash_dump(stage),  # settings at their hash_neutral value left out
                        "split": [recipe.eval_size, recipe.split_seed, recipe.max_train_records],
                        **({"transforms": recipe.transforms} if recipe.transforms else {}),
                        # later stages may use earlier non-policy outputs (a reward model): chain them
                        **({"after": [d.name for _, d, _ in stage_runs]} if stage_runs else {})})


def _link_model(workspace: Path, final: Path) -> None:
    """``workspace/model``: the link every artifact command follows."""
    link = workspace / "model"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(final.name, link)


def reproduce_command(recipe: str, base: str | None, profile: str, data: list[str] | None, out, max_steps,
                      overrides: dict | None) -> str:
    """The ``herd derive`` command line that reproduces a run (API overrides have no flag: they are
    written out so the command is never silently incomplete)."""
    parts = ["herd", "derive", recipe, "--profile", profile]
    if base:
        parts += ["--base", str(base)]
    for d in data or []:
        parts += ["--data", str(d)]
    if out:
        parts += ["--out", str(out)]
    if max_steps:
        parts += ["--max-steps", str(max_steps)]
    overrides = dict(overrides or {})
    if overrides.get("eval_split") == "dev":  # the CLI's --eval-split
        parts += ["--eval-split", overrides.pop("eval_split")]
    for key in ("eval_size", "dev_size"):  # the CLI's --eval-size / --dev-size
        if isinstance(overrides.get(key), int):
            parts += [f"--{key.replace('_', '-')}", str(overrides.pop(key))]
    cmd = shlex.join(parts)
    return cmd + (f"  # with API overrides {json.dumps(overrides, sort_keys=True)}" if overrides else "")


def _scorecard(recipe: Recipe, template, ref: BaseRef, final: Path, inputs: Inputs, stage_runs: list,
               progress: bool, *, run: dict | None = None, t0: float | None = None) -> tuple[dict, str]:
    """Evaluate parent vs derived, add the stage rows, and write scorecard, lineage and model card.
    ``run`` (the command, start time, machine) goes into the scorecard with the wall time and peak RSS up to it."""
    from herd.engine.distributed import single_rank

    # the other ranks are done: evaluation helpers must not wait for them
    with single_rank(), phase("derive", "scorecard", enabled=progress):
        card = evaluate_pair(recipe, template, ref.path, final, inputs.evals, progress=progress,
                             stages=[(st, d) for st, d, _ in stage_runs], splits=inputs.splits)
    add_stage_results(card, stage_runs)
    transformed = inputs.transformed
    if transformed:
        from herd.data.transforms import report_markdown

        card["extra"]["data_transforms"] = transformed.as_dict()
        card["sections"].append(report_markdown(transformed))
    if run is not None:
        # the process's high-water mark up to the card (VmHWM; rank 0's), so a memory claim is traceable like a time
        card["run"] = {**run, "wall_seconds": round(time.perf_counter() - t0, 1) if t0 else None,
                       "peak_rss_mb": round(process_peak_mb())}
    md = write_scorecard(final, card, stage_runs[-1][2])
    lineage = read_lineage(final)
    if transformed:
        lineage["data_transforms"] = {"transforms": recipe.transforms, "report": transformed.as_dict()}
    lineage["scorecard"] = {"headline": card["headline"], "metrics": card["metrics"],
                            "deviations": len(card["deviations"]), "file": "scorecard.json"}
    lineage = write_lineage(final, lineage)
    (final / "README.md").write_text(model_card(lineage, extra_md=md))
    return card, md
