"""The family catalogue: valid against its schema, honest about recipes, and true to the dossier."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from herd.cli import main
from herd.core.errors import ConfigError
from herd.core.paths import repo_root
from herd.family.catalogue import CATALOGUE_FILE, load_catalogue, recipes_root

EXPECTED = {"llama", "llama2", "alpaca", "vicuna", "codellama", "codellama-python", "codellama-instruct",
            "meditron", "llama2-chat", "llama-guard", "dolly", "gorilla"}
DOSSIER = repo_root().parent / "shared" / "reference" / "recipes.md"


def test_catalogue_validates_against_its_schema():
    cat = load_catalogue()
    assert cat.schema_ == "herd.family/1"
    assert {m.id for m in cat.members} == EXPECTED
    for m in cat.members:
        assert m.sizes and m.purpose and m.data and m.methods and m.section
        if m.role == "derivative":
            assert m.scores, f"{m.id}: a derivative has published numbers"
            assert m.sources, f"{m.id}: a derivative cites its sources"


def test_every_member_names_an_existing_or_planned_recipe():
    cat = load_catalogue()
    for m in cat.members:
        if m.role == "parent":
            assert m.recipe is None
            continue
        assert m.recipe is not None, m.id
        if m.recipe.status == "available":
            assert m.recipe.path().is_file(), f"{m.id}: 'available' but {m.recipe.path()} is missing"
        else:
            assert m.recipe.status == "planned"
    assert cat.by_id["alpaca"].recipe.status == "available"
    # no stale status: 'planned' exactly when the recipe file is not there yet
    for m in cat.members:
        if m.recipe:
            assert (m.recipe.status == "planned") == (not m.recipe.path().is_file()), m.id
    assert recipes_root() == repo_root() / "recipes"


def test_dolly_is_shown_as_not_built_on_llama():
    dolly = load_catalogue().by_id["dolly"]
    assert dolly.llama_based is False and dolly.parents == []
    assert "Pythia" in dolly.base and "GPT-J" in dolly.base
    assert "Not built on Llama" in dolly.note


def _dossier_sections(text: str) -> dict[str, str]:
    """``'§2.5' → text of that section`` (a section includes its subsections)."""
    heads = [(m.start(), m.group(1)) for m in re.finditer(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", text, re.M)]
    out = {}
    for i, (start, num) in enumerate(heads):
        depth = num.count(".")
        end = next((s for s, n in heads[i + 1:] if n.count(".") <= depth), len(text))
        out[f"§{num}"] = text[start:end]
    return out


@pytest.mark.skipif(not DOSSIER.is_file(), reason="the recipe dossier is not next to this checkout")
def test_every_published_number_appears_in_the_section_it_cites():
    sections = _dossier_sections(DOSSIER.read_text())
    for m in load_catalogue().members:
        cited = [m.section, *m.cites.values(), *(s.cite for s in m.scores)]
        cited += [m.license.cite] if m.license.cite else []
        for c in cited:
            assert c in sections, f"{m.id}: cites {c}, which the dossier does not have"
        for s in m.scores:
            digits = f"{s.value:g}"
            zeros = "0*" if "." in digits else r"(?:\.0+)?"  # 6.00 is written 6.00, 78.0 as 78.0
            pattern = r"(?<![\d.])" + re.escape(digits) + zeros + r"(?!\d)"
            assert re.search(pattern, sections[s.cite]), f"{m.id}: {s.value} not found in {s.cite}"


def test_bad_catalogue_error_names_member_and_field(tmp_path):
    raw = yaml.safe_load(CATALOGUE_FILE.read_text())
    alpaca = next(m for m in raw["members"] if m["id"] == "alpaca")
    alpaca["scores"][0]["value"] = "ninety"
    alpaca["recipe"]["status"] = "done"
    bad = tmp_path / "catalogue.yaml"
    bad.write_text(yaml.safe_dump(raw, allow_unicode=True))
    with pytest.raises(ConfigError) as err:
        load_catalogue(bad)
    text = str(err.value)
    assert str(bad) in text
    assert "members[alpaca].scores[0].value" in text
    assert "members[alpaca].recipe.status" in text


def test_unknown_parent_is_rejected(tmp_path):
    raw = yaml.safe_load(CATALOGUE_FILE.read_text())
    next(m for m in raw["members"] if m["id"] == "gorilla")["parents"] = ["llama3"]
    bad = tmp_path / "catalogue.yaml"
    bad.write_text(yaml.safe_dump(raw, allow_unicode=True))
    with pytest.raises(ConfigError, match="unknown parent"):
        load_catalogue(bad)


def test_family_command_prints_table_json_and_one_member(capsys):
    assert main(["family"]) == 0
    table = capsys.readouterr().out
    for name in ("Alpaca", "Vicuna", "Code Llama - Python", "Meditron", "Llama Guard", "Dolly", "Gorilla"):
        assert name in table
    assert "not Llama" in table and "planned" in table

    assert main(["family", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {m["id"] for m in data["members"]} == EXPECTED
    gorilla = next(m for m in data["members"] if m["id"] == "gorilla")
    assert gorilla["headline"]["value"] == 59.13 and gorilla["headline"]["cite"] == "§8.4"
    # a recipe whose gain needs more than the tiny budget names its small profile; others do not invent one
    by_id = {m["id"]: m for m in data["members"]}
    assert by_id["llama-guard"]["derive"]["small"] == "herd derive llamaguard --base smollm2 --profile small"
    assert "small" not in gorilla["derive"] and gorilla["derive"]["tiny"].endswith("--profile tiny")

    assert main(["family", "Llama-2-Chat"]) == 0
    full = capsys.readouterr().out
    assert "herd derive llama2chat --base smollm2 --profile tiny" in full
    assert "herd derive llama2chat --base smollm2 --profile small" in full  # the run that shows its gain
    assert "herd derive llama2chat --base /path/to/llama-2-7b --profile full" in full
    assert "PPO" in full and "(§5.3)" in full and "arxiv.org/abs/2307.09288" in full

    assert main(["family", "no-such-model"]) == 2
    assert "known:" in capsys.readouterr().err
