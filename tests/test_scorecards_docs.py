"""The committed scorecards (docs/scorecards/) and the README's family table that quotes them.

Every number the table shows for a run must be in the scorecard file that row cites, and every
committed scorecard must carry what makes it reproducible (its command, wall time, machine) and the
paired headline the issue promises (parent, derived, delta, 95% CI, n)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted((ROOT / "docs" / "scorecards").glob("*.json"))
LINK = re.compile(r"\(docs/scorecards/([\w.\-]+\.json)\)")


def _numbers(node) -> list[float]:
    if isinstance(node, bool):
        return []
    if isinstance(node, (int, float)):
        return [float(node)]
    if isinstance(node, dict):
        return [x for v in node.values() for x in _numbers(v)]
    if isinstance(node, list):
        return [x for v in node for x in _numbers(v)]
    if isinstance(node, str):  # numbers inside task names and datasets ("250 records")
        return [float(t) for t in re.findall(r"-?\d+(?:\.\d+)?", node)]
    return []


def _quoted(token: str, values: list[float]) -> bool:
    """``token`` (as printed: 0.5085, -0.12, 90.6) is one of ``values`` rounded to the token's decimals."""
    decimals = len(token.split(".")[1]) if "." in token else 0
    x = float(token)
    return any(abs(round(v, decimals) - x) < 10 ** -(decimals + 3) for v in values)


def _family_rows() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The family"):]
    section = section[: section.index("\n## ", 5)]
    return [line for line in section.splitlines() if line.startswith("| ") and "docs/scorecards/" in line]


def test_committed_scorecards_carry_the_paired_headline_and_their_command():
    assert CARDS, "docs/scorecards/ holds the scorecards the README quotes"
    for path in CARDS:
        card = json.loads(path.read_text())
        h = card["headline"]
        assert {"name", "parent", "derived", "better", "delta", "ci95", "n"} <= set(h), path.name
        assert h["ci95"][0] <= h["delta"] <= h["ci95"][1] and h["n"] > 0, path.name
        run = card["run"]
        assert run["command"].startswith(f"herd derive {card['recipe']} ") and run["wall_seconds"] > 0, path.name
        assert run["machine"], path.name
        recipe, _, profile = path.stem.partition("-")[0], None, path.stem.rsplit("-", 1)[1]
        assert card["recipe"] == recipe and card["profile"] == profile, f"{path.name}: named <recipe>-<base>-<profile>"


def test_every_number_in_the_family_table_is_in_the_scorecard_it_cites():
    rows = _family_rows()
    assert rows, "the README's family table cites docs/scorecards/"
    cited = set()
    for row in rows:
        cells = [c.strip() for c in row.replace("\u2212", "-").strip("|").split("|")]  # typographic minus
        result = next(c for c in cells if "docs/scorecards/" in c)
        names = LINK.findall(result)
        assert names, row
        values: list[float] = []
        walls: list[float] = []
        for name in names:
            path = ROOT / "docs" / "scorecards" / name
            assert path.is_file(), f"README cites {name}, which is not committed"
            card = json.loads(path.read_text())
            values += _numbers(card) + [v * 100 for v in _numbers(card["headline"])]
            walls.append(card["run"]["wall_seconds"])
            cited.add(name)
        for m, s in re.findall(r"(\d+):(\d\d) wall", result):  # a row citing two runs gives each one's wall
            assert any(abs(int(m) * 60 + int(s) - w) < 60 for w in walls), f"{names}: wall {m}:{s} vs {walls} s"
        text = LINK.sub("", result)
        text = re.sub(r"\d+:\d\d wall", "", text)
        for token in re.findall(r"(?<![\w.])-?\d+\.\d+", text):
            assert _quoted(token, values), f"README family table: {token} is not in {names}"
    assert cited == {p.name for p in CARDS}, "every committed scorecard is quoted by the table"


@pytest.mark.parametrize("token, ok", [("0.5087", True), ("0.509", True), ("0.51", True), ("0.5", True),
                                       ("0.6", False), ("0.508", False), ("50.87", False)])
def test_quoted_rounds_like_the_table(token, ok):
    assert _quoted(token, [0.5087]) is ok
