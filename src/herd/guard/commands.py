"""``herd classify ARTIFACT (--text T | --file F)`` and ``herd eval guard ARTIFACT --data FILE``."""

from __future__ import annotations

import json
from pathlib import Path

from herd.core.errors import HerdError


def _guard_args(p) -> None:
    p.add_argument("--taxonomy", help="taxonomy YAML/JSON (default: the artifact's guard.json, else Llama Guard v1)")
    p.add_argument("--per-category", choices=["codes", "one_vs_all", "none"],
                   help="per-category scores: P(' unsafe\\n<code>') in one pass (codes) or one prompt per "
                        "category (one_vs_all, the paper's 1-vs-all)")


def add_commands(sub) -> None:
    c = sub.add_parser("classify", help="safety verdict, categories and probabilities from a guard artifact")
    c.add_argument("artifact", help="a guard artifact (or any base spec: it is prompted zero-shot)")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a user message to classify (repeatable)")
    src.add_argument("--file", help=".jsonl/.json of records ({prompt[, response]} or {messages}); any other "
                                    "file: one text per non-empty line")
    c.add_argument("--response", help="with one --text: classify this agent response to it instead")
    c.add_argument("--threshold", type=float, help="P(unsafe) threshold (default: the artifact's, chosen on dev)")
    _guard_args(c)
    c.add_argument("--json", action="store_true", help="one JSON object per input")
    c.set_defaults(func=_cmd_classify)


def add_eval_commands(evals) -> None:
    e = evals.add_parser("guard", help="precision/recall/F1/AUPRC of a guard on a moderation-format file")
    e.add_argument("artifact")
    e.add_argument("--data", required=True, help="moderation-format file ({prompt, S, H, …} per record)")
    e.add_argument("--parent", help="also score this model (base spec or artifact) with the same prompts")
    e.add_argument("--label-map", help="JSON object: label key → category name (or null)")
    e.add_argument("--dev-size", type=int, default=0,
                   help="choose thresholds on this many records of the file (default: the artifact's thresholds)")
    e.add_argument("--max-len", type=int, default=4096, help="skip prompts longer than this many tokens")
    e.add_argument("--out", help="folder for report.json and the PR-curve PNG (default guard-eval-<file>)")
    _guard_args(e)
    e.set_defaults(func=_cmd_eval_guard)


def read_inputs(path: str) -> list:
    """Items to classify from a file (see ``herd classify --file``)."""
    from herd.core.errors import DataError
    from herd.data.records import read_json_records, read_text_file

    p = Path(path)
    if p.suffix not in (".jsonl", ".json") and not p.name.endswith(".jsonl.gz"):
        return [line for line in read_text_file(p).splitlines() if line.strip()]
    items = []
    for i, (line, rec) in enumerate(read_json_records(p)):
        if isinstance(rec, str):
            items.append(rec)
        elif isinstance(rec, dict) and isinstance(rec.get("messages"), list):
            items.append(rec["messages"])
        elif isinstance(rec, dict) and isinstance(rec.get("prompt"), str):
            items.append((rec["prompt"], rec["response"]) if isinstance(rec.get("response"), str) else rec["prompt"])
        else:
            raise DataError(str(p), "expected a string, {prompt[, response]} or {messages}", record=i, line=line)
    return items


def _cmd_classify(args) -> int:
    from herd.guard.classifier import Guard

    if args.response and (not args.text or len(args.text) != 1):
        raise HerdError("--response goes with exactly one --text (the prompt it answers)")
    items = read_inputs(args.file) if args.file else \
        ([(args.text[0], args.response)] if args.response else list(args.text))
    guard = Guard(args.artifact, taxonomy=args.taxonomy, threshold=args.threshold, per_category=args.per_category)
    for item, res in zip(items, guard.classify_many(items, progress=len(items) > 1)):
        if args.json:
            print(json.dumps(res.as_dict(), ensure_ascii=False))
            continue
        text = item if isinstance(item, str) else (item[-1] if isinstance(item, tuple) else item[-1]["content"])
        text = " ".join(str(text).split())
        print(f"{res.verdict.upper():<7} P(unsafe)={res.p_unsafe:.4g} (threshold {res.threshold:.4g}, "
              f"{res.agent_type}) {text[:70] + ('…' if len(text) > 70 else '')}")
        if res.category_scores:
            cats = ", ".join(f"{n}{'*' if res.categories[n] else ''}={s:.3g}" for n, s in res.category_scores.items())
            print(f"        categories: {', '.join(res.violated) or 'none'}  [{cats}]")
    return 0


def _cmd_eval_guard(args) -> int:
    from herd.base import load_model, load_tokenizer, resolve_base
    from herd.evals.guard import GuardEvalConfig, evaluate_guard, load_guard_data, markdown, pr_png
    from herd.guard.classifier import Guard, GuardSettings

    label_map = None
    if args.label_map:
        try:
            label_map = json.loads(args.label_map)
        except json.JSONDecodeError as e:
            raise HerdError(f"--label-map: not JSON ({e})") from None
    guard = Guard(args.artifact, taxonomy=args.taxonomy, per_category=args.per_category)
    cfg = GuardEvalConfig(max_len=args.max_len, per_category=guard.settings.per_category)
    options = {"taxonomy": guard.taxonomy.to_dict(), "label_map": label_map, "dev_size": args.dev_size}
    data = load_guard_data(args.data, options, guard.tokenizer, cfg, whole_file=True)
    reports = {}
    if args.parent:
        ref = resolve_base(args.parent)
        parent = Guard(model=load_model(ref), tokenizer=load_tokenizer(ref), name="parent",
                       settings=GuardSettings(taxonomy=guard.taxonomy, per_category=guard.settings.per_category))
        reports["parent"] = evaluate_guard(parent, data, choose_on_dev=bool(data.dev))
    reports[guard.name] = evaluate_guard(guard, data, choose_on_dev=bool(data.dev))
    out = Path(args.out or f"guard-eval-{Path(args.data).name.split('.')[0]}")
    out.mkdir(parents=True, exist_ok=True)
    png = pr_png(reports, out / "guard_pr_curve.png")
    md = markdown(reports, data, guard.settings.per_category, png.name)
    (out / "report.md").write_text(md)
    (out / "report.json").write_text(json.dumps(
        {"data": data.description, "models": {k: {"overall": r.overall, "per_category": r.per_category}
                                              for k, r in reports.items()}}, indent=2) + "\n")
    print(md)
    print(f"written: {out}/report.md, report.json, {png.name}")
    return 0
