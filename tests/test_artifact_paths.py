"""Every artifact command accepts what ``herd derive`` printed or wrote: the run folder, its ``model``
link, or a stage folder, through one resolver with one error message."""

from __future__ import annotations

import os

import pytest

from herd.artifacts import locate_artifact, read_lineage
from herd.base import resolve_base
from herd.cli import main
from herd.core.errors import HerdError
from tests.artifact_helpers import make_tiny_artifact


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder laid out as ``herd derive`` leaves it: one stage artifact and the ``model`` link."""
    run = tmp_path_factory.mktemp("runs") / "alpaca-tiny-tiny"
    stage = make_tiny_artifact(run / "01-sft-0123abcd", "alpaca-tiny-tiny", template="alpaca",
                               recipe={"name": "alpaca", "profile": "tiny"})
    os.symlink(stage.name, run / "model")
    return run


def test_run_folder_link_and_stage_folder_name_the_same_artifact(run):
    stage = run / "01-sft-0123abcd"
    assert locate_artifact(run) == locate_artifact(run / "model") == locate_artifact(stage) == stage.resolve()
    assert resolve_base(run).path == stage.resolve()  # as a base (--base, --teacher, --guard) too


def test_one_error_says_what_was_looked_for(tmp_path, run):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HerdError) as e:
        locate_artifact(empty)
    msg = str(e.value)
    assert f"{empty}: not a herd artifact" in msg
    assert str(empty / "lineage.json") in msg and str(empty / "model" / "lineage.json") in msg
    with pytest.raises(HerdError, match="no such file or folder"):
        locate_artifact(tmp_path / "missing")
    # a run folder whose model link is gone still points at its finished stages
    broken = tmp_path / "broken"
    broken.mkdir()
    os.symlink(run / "01-sft-0123abcd", broken / "01-sft-0123abcd")
    with pytest.raises(HerdError, match="its finished stages: 01-sft-0123abcd"):
        locate_artifact(broken)
    assert locate_artifact(empty, strict=False) == empty  # plain folders pass through where bases are allowed


@pytest.mark.parametrize("command", [
    ["info"],
    ["export", "--to", "hf"],
])
def test_artifact_commands_accept_the_run_folder(run, command, capsys):
    name, *rest = command
    assert main([name, str(run), *rest]) == 0
    out = capsys.readouterr().out
    if name == "info":
        assert "alpaca-tiny-tiny" in out and str((run / "model").resolve()) in out
    else:
        hf = run / "01-sft-0123abcd" / "export" / "hf"
        assert f"hf: {hf.resolve()}" in out or f"hf: {hf}" in out
        assert read_lineage(hf)["id"] == read_lineage(run / "model")["id"]


def test_serving_loads_the_run_folder(run):
    from herd.serve import load_served

    served = load_served(run, "transformers", max_batch=1)
    try:
        assert served.id == "alpaca-tiny-tiny"
    finally:
        served.backend.close()


def test_cli_error_for_a_non_artifact_lists_what_it_looked_for(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert "not a herd artifact; looked for" in err and "'model' link" in err
