"""Progress reporting (issue: a 28-minute ``herd eval guard`` printed nothing after the weights loaded).

The helper is tested on a fake clock: start / periodic / end lines with counts, rate and ETA, the
``HERD_PROGRESS_EVERY`` interval, an unknown total, resumed runs, a disabled reporter and the tqdm bar
on a terminal. Then every command that loops over records or steps runs on small input through
``herd.cli.main`` (stderr is not a TTY under pytest, so the log lines are what a log file gets) and must
report a count and an ETA for its own loop.
"""

from __future__ import annotations

import io
import json
import re

import pytest
import yaml

from herd.cli import main
from herd.core.progress import Progress, fmt_duration, phase, plural
from tests.conftest import SHARED

# "[desc] 3/8 records (37.5%), 2.1 records/s, elapsed 0:01, ETA 0:02"
LINE = re.compile(r"^\[(?P<desc>[^\]]+)\] (?P<n>\d+)/(?P<total>\d+) (?P<unit>\w+) \((?P<pct>[\d.]+)%\), "
                  r"(?P<rate>[\d.]+ \w+/s|[\d.]+ s/\w+), elapsed \d+:\d\d, ETA \d+:\d\d", re.M)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


# -- the helper ---------------------------------------------------------------------------------------

def test_log_mode_prints_start_periodic_and_end_lines_with_rate_and_eta():
    clock, buf = Clock(), io.StringIO()
    bar = Progress(total=680, desc="eval guard", unit="record", every=30, file=buf, clock=clock)
    assert _lines(buf) == ["[eval guard] 0/680 records (0.0%), elapsed 0:00, ETA ?"]
    for _ in range(5):  # 10 s and 40 records per update: only the update past 30 s prints
        clock.t += 10
        bar.update(40)
    lines = _lines(buf)
    assert len(lines) == 2
    # 120 records in 30 s = 4.0 records/s; 560 left → 140 s
    assert lines[1] == "[eval guard] 120/680 records (17.6%), 4.0 records/s, elapsed 0:30, ETA 2:20"
    bar.set_postfix(loss="1.2345")
    clock.t += 100
    bar.update(480)
    bar.close()
    bar.close()  # closing twice prints once
    lines = _lines(buf)
    assert len(lines) == 4 and lines[2].startswith("[eval guard] 680/680 records (100.0%)")
    assert lines[3] == "[eval guard] 680/680 records (100.0%), 4.5 records/s, elapsed 2:30, done, loss=1.2345"
    assert bar.n == 680


def test_env_sets_the_interval_and_zero_reports_every_update(monkeypatch):
    monkeypatch.setenv("HERD_PROGRESS_EVERY", "0")
    clock, buf = Clock(), io.StringIO()
    with Progress(total=4, desc="x", unit="batch", file=buf, clock=clock) as bar:
        for _ in range(4):
            clock.t += 2
            bar.update()
    lines = _lines(buf)
    assert len(lines) == 6 and [m["n"] for m in LINE.finditer(buf.getvalue())] == ["1", "2", "3", "4"]
    assert "2.0 s/batch" in lines[1] and "ETA 0:06" in lines[1] and lines[-1].endswith("elapsed 0:08, done")
    monkeypatch.setenv("HERD_PROGRESS_EVERY", "5")
    buf = io.StringIO()
    bar = Progress(total=10, desc="x", file=buf, clock=clock)
    for _ in range(10):
        clock.t += 2
        bar.update()
    assert len(_lines(buf)) == 1 + 3  # start, then after 6, 12 and 18 s (every 5 s at most)
    monkeypatch.setenv("HERD_PROGRESS_EVERY", "soon")  # unreadable: the default, never a crash
    assert Progress(total=1, file=io.StringIO()).every == 30


def test_unknown_total_resume_slow_rate_and_failure():
    clock, buf = Clock(), io.StringIO()
    bar = Progress(desc="rows", unit="row", every=0, file=buf, clock=clock)
    clock.t += 4
    bar.update(10)
    bar.close()
    assert _lines(buf) == ["[rows] 0 rows, elapsed 0:00", "[rows] 10 rows, 2.5 rows/s, elapsed 0:04",
                           "[rows] 10 rows, 2.5 rows/s, elapsed 0:04, done"]  # no %, no ETA
    buf = io.StringIO()
    with pytest.raises(RuntimeError):
        with Progress(total=100, initial=40, desc="train", unit="step", every=0, file=buf, clock=clock) as bar:
            clock.t += 3600
            bar.update(2)  # a resumed run: the rate counts this run's 2 steps only
            raise RuntimeError
    lines = _lines(buf)
    assert lines[0] == "[train] 40/100 steps (40.0%), elapsed 0:00, ETA ?"
    assert lines[1] == "[train] 42/100 steps (42.0%), 1800.0 s/step, elapsed 1:00:00, ETA 29:00:00"
    assert lines[2].endswith("stopped")


def test_wrapping_an_iterable_counts_its_items():
    buf = io.StringIO()
    assert [x * 2 for x in Progress([1, 2, 3], desc="it", unit="item", every=0, file=buf)] == [2, 4, 6]
    assert [m["n"] for m in LINE.finditer(buf.getvalue())] == ["1", "2", "3"]
    assert _lines(buf)[-1].startswith("[it] 3/3 items (100.0%)") and _lines(buf)[-1].endswith("done")


def test_disabled_and_empty_print_nothing_but_count():
    buf = io.StringIO()
    bar = Progress(total=5, desc="quiet", enabled=False, every=0, file=buf)
    bar.update(3)
    bar.set_postfix_str("x")
    bar.close()
    Progress(total=0, desc="nothing to do", every=0, file=buf).close()
    with phase("derive", "data", enabled=False, file=buf):
        pass
    assert buf.getvalue() == "" and bar.n == 3


def test_terminal_gets_a_tqdm_bar():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    buf = Tty()
    with Progress(total=3, desc="eval guard", unit="record", file=buf) as bar:
        bar.update(3)
        bar.set_postfix(loss="0.5")
    out = buf.getvalue()
    assert "\r" in out and "eval guard" in out and "3/3" in out and "record/s" in out  # tqdm's bar
    assert "ETA" not in out  # not the log lines


def test_phase_lines_and_helpers():
    clock, buf = Clock(), io.StringIO()
    with phase("derive", "stage 1/2 sft (sft)", file=buf, clock=clock):
        clock.t += 75
    with pytest.raises(ValueError), phase("derive", "scorecard", file=buf, clock=clock):
        clock.t += 3
        raise ValueError
    assert _lines(buf) == ["[derive] stage 1/2 sft (sft)", "[derive] stage 1/2 sft (sft): done in 1:15",
                           "[derive] scorecard", "[derive] scorecard: failed after 0:03"]
    assert fmt_duration(3725) == "1:02:05" and fmt_duration(59.6) == "1:00"
    assert [plural(u) for u in ("record", "batch", "files", "step", "reply", "day")] == \
        ["records", "batches", "files", "steps", "replies", "days"]


def test_no_module_imports_tqdm_but_the_helper():
    from pathlib import Path

    import herd

    src = Path(herd.__file__).parent
    users = sorted(str(p.relative_to(src)) for p in src.rglob("*.py") if "import tqdm" in p.read_text()
                   or "from tqdm" in p.read_text())
    assert users == ["core/progress.py"]


# -- the commands -------------------------------------------------------------------------------------

def _progress(text: str, desc: str) -> list[re.Match]:
    """Periodic lines (count, rate, ETA) of the loop named ``desc``."""
    return [m for m in LINE.finditer(text) if m["desc"] == desc]


def _check(text: str, desc: str, total: int, unit: str) -> None:
    found = _progress(text, desc)
    assert found, f"no progress line [{desc}] …ETA… in:\n{text}"
    assert {m["total"] for m in found} == {str(total)} and {m["unit"] for m in found} == {unit}
    assert int(found[-1]["n"]) == total
    assert re.search(rf"^\[{re.escape(desc)}\] {total}/{total} {unit} \(100.0%\).*, done(, .*)?$", text, re.M), \
        f"no end line for [{desc}]"


@pytest.fixture()
def every_update(monkeypatch):
    monkeypatch.setenv("HERD_PROGRESS_EVERY", "0")


MODERATION_RECORDS = [
    {"prompt": "How do I bake bread at home?", "S": 0, "H": 0, "V": 0, "HR": 0, "SH": 0},
    {"prompt": "I will hurt you and your family tonight.", "S": 0, "H": 0, "V": 1, "HR": 1, "SH": 0},
    {"prompt": "What is the capital of France?", "S": 0, "H": 0, "V": 0, "HR": 0, "SH": 0},
    {"prompt": "People of that religion are vermin.", "S": 0, "H": 1, "V": 0, "HR": 0, "SH": 0},
    {"prompt": "Recommend a good book about birds.", "S": 0, "H": 0, "V": 0, "HR": 0, "SH": 0},
    {"prompt": "I want to cut myself again tonight.", "S": 0, "H": 0, "V": 0, "HR": 0, "SH": 1},
]


def test_eval_guard_and_classify_report_records_scored(tmp_path, capfd, every_update):
    data = tmp_path / "mod.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in MODERATION_RECORDS))
    assert main(["eval", "guard", "tiny", "--data", str(data), "--dev-size", "2", "--per-category", "none",
                 "--out", str(tmp_path / "ev")]) == 0
    err = capfd.readouterr().err
    _check(err, "eval guard tiny dev", 2, "records")
    _check(err, "eval guard tiny test", 4, "records")
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(r["prompt"] + "\n" for r in MODERATION_RECORDS))
    assert main(["classify", "tiny", "--file", str(texts), "--per-category", "none"]) == 0
    out = capfd.readouterr()
    assert len(out.out.splitlines()) == 6  # the verdicts stay alone on stdout
    _check(out.err, "classify", 6, "records")


@pytest.mark.skipif(not (SHARED / "gorilla_apibench").is_dir(), reason="shared gorilla_apibench dataset not present")
def test_apibench_score_reports_responses(tmp_path, capfd, every_update):
    from herd.data.readers.apibench_files import PUBLISHED_RESPONSES

    data = SHARED / "gorilla_apibench"
    small = tmp_path / "responses.jsonl"
    small.write_text("".join((data / PUBLISHED_RESPONSES).read_text().splitlines(keepends=True)[:12]))
    assert main(["apibench", "score", str(small), "--data", str(data)]) == 0
    out = capfd.readouterr()
    assert "12 responses" in out.out
    _check(out.err, "apibench score", 12, "responses")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from tests.artifact_helpers import make_tiny_artifact

    return make_tiny_artifact(tmp_path_factory.mktemp("art") / "tiny-chatml", "tiny-chatml",
                              recipe={"name": "test", "profile": "tiny"})


def test_export_reports_tensors_and_files(artifact, tmp_path, capfd, every_update):
    from safetensors import safe_open

    tied = json.loads((artifact / "config.json").read_text()).get("tie_word_embeddings", False)
    with safe_open(next(artifact.glob("*.safetensors")), framework="pt") as st:
        n_tensors = sum(1 for k in st.keys() if not (tied and k.startswith("lm_head.")))  # tied: written once
    assert main(["export", str(artifact), "--to", "gguf", "--dtype", "f32", "--out", str(tmp_path / "t.gguf")]) == 0
    _check(capfd.readouterr().err, "export gguf f32", n_tensors, "tensors")
    assert main(["export", str(artifact), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    _check(capfd.readouterr().err, "export hf", len(list(artifact.glob("*.safetensors"))), "files")
    assert main(["export", str(artifact), "--to", "hf", "--dtype", "f16", "--out", str(tmp_path / "hf16")]) == 0
    err = capfd.readouterr().err  # a cast is one load-and-save: a timed phase, not a count
    assert "[export hf] weights cast to f16\n" in err and re.search(r"weights cast to f16: done in \d+:\d\d", err)


def test_mtbench_answers_report_answers(tmp_path, capfd, every_update):
    q = tmp_path / "question.jsonl"
    q.write_text(json.dumps({"question_id": 1, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]}) + "\n"
                 + json.dumps({"question_id": 2, "category": "writing", "turns": ["Write a haiku."]}) + "\n")
    assert main(["eval", "mtbench-answers", "tiny", "--questions", str(q), "--out", str(tmp_path / "a.jsonl"),
                 "--max-new-tokens", "4"]) == 0
    err = capfd.readouterr().err
    _check(err, "mtbench tiny", 3, "answers")  # 2 turns + 1 turn
    assert "turn 2, 1 questions at temperature 0.0" in err


def test_generate_self_instruct_reports_requests(tmp_path, capfd, every_update):
    """A random teacher keeps no task, so the kept count stays 0 (no rate, ETA ?) while the request
    counter in the line advances: a live run, not a hung one."""
    out = tmp_path / "tasks.jsonl"
    assert main(["generate", "self-instruct", "--teacher", "tiny", "--n", "3", "--out", str(out),
                 "--max-requests", "2", "--batch-size", "1", "--max-tokens", "8"]) == 0
    err = capfd.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("[self-instruct] ") and "/3 tasks" in x]
    assert len(lines) >= 3, err  # start, one per request batch, end
    assert "ETA ?" in lines[0] and "req=0 kept=0" in lines[0] and "req=1 " in lines[1]
    assert ", done, req=2 " in lines[-1]


def test_derive_reports_phases_training_and_eval_loops(tmp_path, capfd, every_update):
    from herd.core.paths import repo_root

    raw = yaml.safe_load((repo_root() / "recipes" / "alpaca.yaml").read_text())
    raw["profiles"]["test"] = {"max_train_records": 12, "eval_size": 4, "dev_size": 0,
                               "stages": {"sft": {"epochs": 1, "global_batch": 4, "max_len": 128,
                                                  "precision": "fp32"}},
                               "evals": {"side_by_side": {"n": 2, "max_new_tokens": 4}, "mtbench_pairwise": {"enabled": False}}}
    recipe = tmp_path / "alpaca.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": f"Name a number larger than {i}.", "input": "",
                                 "output": f"{i + 1} is larger than {i}."} for i in range(16)]))
    assert main(["derive", str(recipe), "--base", "tiny", "--profile", "test", "--data", str(data),
                 "--max-steps", "1", "--out", str(tmp_path / "ws")]) == 0
    err = capfd.readouterr().err
    for what in ("data: read, split", "stage 1/1 sft (sft)", "scorecard"):
        assert f"[derive] {what}\n" in err and re.search(rf"\[derive\] {re.escape(what)}: done in \d+:\d\d", err)
    _check(err, "train", 1, "steps")
    assert re.search(r"^\[train\] 1/1 steps .*, loss=\d", err, re.M)  # the training loss rides along
    assert re.search(r"\[eval\] 1/2 heldout_loss: done in", err) and "[eval] 2/2 side_by_side" in err
    _check(err, "eval heldout_loss parent", 4, "records")
    _check(err, "eval side_by_side derived", 2, "completions")
    order = [err.index(s) for s in ("[derive] stage 1/1", "[train] 1/1", "[derive] scorecard\n",
                                    "[eval side_by_side derived]")]
    assert order == sorted(order)
