"""``--report-to tensorboard,mlflow``: a tiny derive's loss series read back by each library's own reader,
equal to metrics.jsonl (the source of truth)."""

from __future__ import annotations

import json

import pytest

from herd.core.errors import ConfigError
from tests.ui_helpers import tiny_alpaca_recipe


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    from herd.api import derive

    tmp = tmp_path_factory.mktemp("report")
    recipe = tiny_alpaca_recipe(tmp, report_to=["tensorboard"])  # the recipe's list; the call replaces it
    res = derive(str(recipe), base="tiny", profile="test", out=tmp / "ws", max_steps=2, progress=False,
                 report_to="tensorboard,mlflow")
    rows = [json.loads(x) for x in (res.path / "metrics.jsonl").read_text().splitlines()]
    return tmp / "ws", rows, res.scorecard


def test_tensorboard_event_reader_reads_back_the_loss_series(reported):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ws, rows, _ = reported
    acc = EventAccumulator(str(ws / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    loss = acc.Scalars("sft/loss")
    assert [e.step for e in loss] == [r["step"] for r in rows] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert {"sft/lr", "sft/tokens_per_s"} <= set(scalars)
    assert {"sft/rss_mb", "sft/peak_rss_mb"} <= set(scalars)  # where a run's memory went, step by step
    assert any(t.startswith("eval/") and t.endswith("/derived") for t in scalars)


def test_metrics_rows_carry_memory_per_step(reported):
    _, rows, _ = reported
    peaks = [r["peak_rss_mb"] for r in rows]
    # the process's high-water mark: above the base model's size, at least the RSS, and never falling
    assert all(r["rss_mb"] > 50 and r["peak_rss_mb"] >= r["rss_mb"] - 16 for r in rows)
    assert peaks == sorted(peaks)


def test_mlflow_client_reads_back_loss_params_and_artifacts(reported):
    from mlflow.tracking import MlflowClient

    ws, rows, card = reported
    client = MlflowClient((ws / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("herd")
    (run,) = client.search_runs([exp.experiment_id])
    hist = client.get_metric_history(run.info.run_id, "sft/loss")
    assert [(m.step, m.value) for m in hist] == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows]
    assert run.info.status == "FINISHED"
    assert run.data.params["recipe"] == "alpaca" and run.data.params["stages.sft.lr"] == "0.001"
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"scorecard.json", "lineage.json"} <= files
    saved = json.loads((ws / "mlruns").joinpath(exp.experiment_id, run.info.run_id, "artifacts",
                                                "scorecard.json").read_text())
    assert saved["headline"] == card["headline"]


def test_tracker_copies_do_not_show_up_as_artifacts_in_the_tree(reported):
    from herd.family.tree import scan_workspace

    ws, _, _ = reported
    assert all("mlruns" not in f.path.parts for f in scan_workspace(ws))


def test_unknown_target_fails_before_anything_loads():
    from herd.engine.reporting import parse_targets

    with pytest.raises(ConfigError, match="unknown target 'tensorbored'"):
        parse_targets("tensorboard,tensorbored")
    assert parse_targets("none") == [] and parse_targets(["mlflow", "mlflow"]) == ["mlflow"]
