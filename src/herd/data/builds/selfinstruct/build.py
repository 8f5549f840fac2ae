"""The ``self_instruct`` data build: generate Alpaca-format tasks with a teacher, then train on them.

The teacher defaults to the derivation's own base. The output file is named by the build's settings
and the teacher, so changing either starts a new file, and re-running a derivation continues an
interrupted generation instead of starting over.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from herd.core.errors import HerdError
from herd.core.hashing import sha256_json
from herd.data.builds import BuildConfig, BuildContext, BuildResult, register_build
from herd.data.builds.selfinstruct.generate import GenerationSettings, format_report, generate_self_instruct
from herd.data.builds.selfinstruct.teachers import make_teacher


class SelfInstructBuild(BuildConfig, GenerationSettings):
    """Alpaca's Self-Instruct generation (recipes.md §1.2). Sampling fields left out take the published
    values (3 seeds, 5 requests a batch, temperature 1.0, top_p 1.0, 3072 tokens). ``variant:
    self-instruct`` runs the original pipeline (``n`` instructions, then up to 5 instances each)."""

    kind: Literal["self_instruct"] = "self_instruct"
    variant: Literal["alpaca", "self-instruct"] = "alpaca"
    teacher: str | None = None                  # default: the base being derived
    model: str | None = None                    # endpoint teachers: served model id
    api: Literal["completions", "chat"] = "completions"
    api_key_env: str = "OPENAI_API_KEY"
    rate_limit: float | None = Field(default=None, gt=0)
    retries: int = Field(default=6, ge=0)


@register_build("self_instruct", SelfInstructBuild)
def build_self_instruct(cfg: SelfInstructBuild, out_path: Path, ctx: BuildContext) -> BuildResult:
    spec = cfg.teacher or ctx.base_spec
    teacher = make_teacher(spec, api_key=os.environ.get(cfg.api_key_env), model=cfg.model, api=cfg.api,
                           rate_limit=cfg.rate_limit, retries=cfg.retries,
                           batch_size=cfg.request_batch_size or 5, generate_ids=ctx.generate_ids)
    out = out_path.with_name(f"{out_path.stem}-{sha256_json(teacher.key)[:8]}.jsonl")
    settings = GenerationSettings.model_validate(cfg.model_dump(include=set(GenerationSettings.model_fields)))
    print(f"[build {cfg.name}] self-instruct with teacher {teacher.name} → {out}")
    st = generate_self_instruct(settings, teacher, out, progress=ctx.progress)
    report = format_report(st, out)
    print(report)
    del teacher
    gc.collect()
    if st.kept == 0 or (st.instances is not None and not st.instances["records"]):
        # an empty file is not a dataset: stop here with the report's reasons
        what = "task" if st.instances is None else "instance"
        raise HerdError(f"build {cfg.name}: the teacher {spec} produced no {what} that passed the filters in "
                        f"{st.requests} requests (see the report above); use a stronger teacher or raise "
                        "max_requests / max_tokens")
    return BuildResult(path=out, format="alpaca", report=st.to_dict())
