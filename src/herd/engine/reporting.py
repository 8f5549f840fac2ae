"""``--report-to tensorboard,mlflow,wandb``: training metrics where people already look.

``metrics.jsonl`` stays the source of truth: the training loop writes each step's row there first and
then hands the same row to :func:`log_step`, which forwards it to the trackers of the active
:class:`Reporting` (none outside a derive, or when nothing was asked for). A derive opens one Reporting
over its workspace: TensorBoard event files under ``WORKSPACE/tensorboard``, one MLflow run in a local
file store (``WORKSPACE/mlruns``, or ``$MLFLOW_TRACKING_URI``), one W&B run (offline mode when
``WANDB_MODE`` is unset and there is no API key). Step metrics are named ``STAGE/loss``, ``STAGE/lr``,
``STAGE/tokens_per_s``, ...; the scorecard's metrics ``eval/TASK/NAME/{parent,derived}``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from herd.core.errors import ConfigError

TARGETS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # target -> module it needs
STEP_KEYS = ("loss", "lr", "grad_norm", "tokens_per_s", "epoch", "rss_mb", "peak_rss_mb", "cuda_peak_mb")
_ACTIVE: Reporting | None = None


def parse_targets(spec: str | list[str] | None) -> list[str]:
    """``"tensorboard,mlflow"`` or a list → checked target names; unknown or uninstalled ones fail here,
    before any model loads."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [s.strip().lower() for s in items if s and s.strip() and s.strip().lower() != "none"]
    for n in names:
        if n not in TARGETS:
            raise ConfigError(f"report_to: unknown target '{n}' (known: {', '.join(TARGETS)})")
        if importlib.util.find_spec(TARGETS[n]) is None:
            extra = "" if n == "wandb" else " (`make setup` installs it: the 'track' extra)"
            raise ConfigError(f"report_to: {n} needs the '{TARGETS[n]}' package: pip install {TARGETS[n]}{extra}")
    return list(dict.fromkeys(names))


def _tag(text: str) -> str:
    """A metric name every tracker accepts (MLflow allows letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]+", "_", text).strip() or "metric"


class Reporting:
    """The trackers of one derive; ``stage`` names the stage whose steps are being logged."""

    def __init__(self, targets: list[str], root: Path, run_name: str, params: dict):
        self.targets, self.root, self.stage = targets, Path(root), "train"
        self.tb = self.mlflow = self.mlflow_run = self.wandb = None
        self.global_step = 0
        if "tensorboard" in targets:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.root / "tensorboard"))
            self.tb.add_text("params", "```\n" + json.dumps(params, indent=2, default=str) + "\n```")
        if "mlflow" in targets:
            self._start_mlflow(run_name, params)
        if "wandb" in targets:
            import wandb

            if "WANDB_MODE" not in os.environ and not os.environ.get("WANDB_API_KEY"):
                os.environ["WANDB_MODE"] = "offline"  # no key, no network: a local run `wandb sync` can upload
            self.wandb = wandb.init(project="herd", name=run_name, dir=str(self.root), config=params,
                                    reinit=True)

    def _start_mlflow(self, run_name: str, params: dict) -> None:
        # MLflow 3 keeps the file store behind an opt-in; a local folder needs no server or database
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (self.root / "mlruns").resolve().as_uri()
        self.mlflow = MlflowClient(uri)
        exp = self.mlflow.get_experiment_by_name("herd")
        exp_id = exp.experiment_id if exp is not None else self.mlflow.create_experiment("herd")
        self.mlflow_run = self.mlflow.create_run(exp_id, run_name=run_name).info.run_id
        for k, v in _flatten(params).items():
            self.mlflow.log_param(self.mlflow_run, k[:250], str(v)[:6000])

    def log_step(self, row: dict) -> None:
        """One ``metrics.jsonl`` row of the current stage."""
        step = int(row.get("step", 0))
        self.global_step += 1
        values = {f"{self.stage}/{k}": float(row[k]) for k in STEP_KEYS if isinstance(row.get(k), (int, float))}
        self._log(values, step)

    def log_scorecard(self, card: dict, lineage: dict) -> None:
        """The scorecard's parent/derived numbers as metrics, the scorecard and lineage as files."""
        values = {}
        for m in card.get("metrics") or []:
            for side in ("parent", "derived"):
                if isinstance(m.get(side), (int, float)):
                    values[_tag(f"eval/{m.get('task')}/{m.get('name')}/{side}")] = float(m[side])
        self._log(values, self.global_step)
        if self.mlflow is not None:
            self.mlflow.log_dict(self.mlflow_run, card, "scorecard.json")
            self.mlflow.log_dict(self.mlflow_run, lineage, "lineage.json")
        if self.wandb is not None:
            self.wandb.summary.update(values)

    def _log(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            if self.tb is not None:
                self.tb.add_scalar(k, v, step)
            if self.mlflow is not None:
                self.mlflow.log_metric(self.mlflow_run, k, v, step=step)
        if self.wandb is not None and values:
            self.wandb.log(values)

    def close(self, ok: bool = True) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.set_terminated(self.mlflow_run, "FINISHED" if ok else "FAILED")
        if self.wandb is not None:
            self.wandb.finish(exit_code=0 if ok else 1)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


@contextmanager
def reporting(targets: list[str], root: Path, run_name: str, params: dict) -> Iterator[Reporting | None]:
    """Make a Reporting active for the ``with`` body (nothing when ``targets`` is empty)."""
    global _ACTIVE
    if not targets:
        yield None
        return
    rep = _ACTIVE = Reporting(targets, root, run_name, params)
    ok = False
    try:
        yield rep
        ok = True
    finally:
        _ACTIVE = None
        rep.close(ok)


def set_stage(name: str) -> None:
    if _ACTIVE is not None:
        _ACTIVE.stage = name


def log_step(row: dict) -> None:
    """Called by the training loop right after it appends ``row`` to metrics.jsonl."""
    if _ACTIVE is not None:
        _ACTIVE.log_step(row)
