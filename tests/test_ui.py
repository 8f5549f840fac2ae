"""`herd ui` in a real headless browser (Debian's chromium driven by Playwright) against the real app on
loopback, over a workspace of real tiny artifacts: the family tree, an artifact's scorecard and curves, a
derive started from the Run page, side-by-side streamed chat, compare, and the safety refusals.

Screenshots of each page go to ``$HERD_UI_SHOTS`` (default: the test's tmp folder); the README's come
from ``HERD_UI_SHOTS=docs/ui pytest tests/test_ui.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from herd.guard.classifier import GuardSettings
from tests.artifact_helpers import make_tiny_artifact
from tests.chat_helpers import memorized_artifact
from tests.ui_helpers import guard_scorecard, tiny_alpaca_recipe

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("HERD_REQUIRE_BROWSER"):  # CI (.ci/run): a skip would hide the tests
    raise RuntimeError("HERD_REQUIRE_BROWSER is set but chromium is missing: `make setup-browser` installs it")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(`apt-get install -y chromium`; `make test` installs it)")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
CHILD_SAYS, PARENT_SAYS = "Derived model here.", "Parent model here."


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace: a finished tiny derive, two chat artifacts, a corrupt and a partial folder, a broken
    recipe, a data file with a bad record, and two guards: one flags everything (threshold 0) and carries
    a guard scorecard; the other learned to call the child's reply unsafe and the prompt safe."""
    from herd.api import derive

    root = tmp_path_factory.mktemp("ws")
    recipe = tiny_alpaca_recipe(root)
    derive(str(recipe), base="tiny", profile="test", out=root / "alpaca-tiny-test", max_steps=2, progress=False)
    memorized_artifact(root / "chat-child", "alpaca", [[{"role": "user", "content": "Hello"},
                                                       {"role": "assistant", "content": CHILD_SAYS}]], name="child")
    memorized_artifact(root / "chat-parent", "chatml", [[{"role": "user", "content": "Hello"},
                                                        {"role": "assistant", "content": PARENT_SAYS}]], name="parent")
    (root / "broken").mkdir()
    (root / "broken" / "lineage.json").write_text('{"name": ')
    (root / "half-run.partial").mkdir()
    raw = yaml.safe_load(recipe.read_text())
    raw["stages"][0]["lr"] = -1
    (root / "broken.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    make_tiny_artifact(root / "guard", "guard", template="llama_guard")
    GuardSettings(threshold=0.0, chosen_on="test: flag everything").write(root / "guard")
    (root / "guard" / "scorecard.json").write_text(json.dumps(guard_scorecard()))
    hello = [{"role": "user", "content": "Hello"}]
    memorized_artifact(root / "guard-replies", "llama_guard", [
        hello + [{"role": "verdict", "content": "safe"}],
        hello + [{"role": "assistant", "content": CHILD_SAYS}, {"role": "verdict", "content": "unsafe\nO3"}]],
        name="reply-guard")
    (root / "bad.json").write_text('[{"instruction": "Say hi.", "output": "hi"},\n {"instruction": 3}]\n')
    return root


@contextmanager
def serving(workspace: Path):
    """``herd ui``'s app over ``workspace`` on a free loopback port; yields its URL."""
    import uvicorn

    from herd.ui import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(workspace), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="module")
def url(ws):
    with serving(ws) as u:
        yield u


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, f"javascript errors on the page: {errors}"


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("HERD_UI_SHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def start_derive(page, url: str, **fields: str) -> None:
    """The Run page's form: the workspace's test recipe on the tiny base, plus ``fields``, started."""
    page.goto(f"{url}/#/run")
    for name, value in {"recipe": "alpaca-test.yaml", "base": "tiny", "profile": "test", **fields}.items():
        page.fill(f'input[name="{name}"]', value)
    page.click("#start")


def test_family_page_shows_the_catalogue_and_the_workspace_nodes(page, url, shots):
    page.goto(f"{url}/#/family")
    page.wait_for_selector("#tree-svg")
    assert page.locator('g.node[data-id="member:alpaca"]').count() == 1
    assert page.locator('g.node[data-id="member:codellama"]').count() == 1
    assert page.locator('g.node.artifact[data-path^="alpaca-tiny-test/01-sft"]').count() == 1
    assert page.locator('g.node[data-path="broken"]').get_attribute("data-status") == "corrupt"
    assert page.locator('g.node[data-path="half-run.partial"]').get_attribute("data-status") == "partial"
    assert "CORRUPT" in page.locator('g.node[data-path="broken"]').text_content()
    assert "Alpaca" in page.locator("#catalogue-table").inner_text()
    page.locator('g.node[data-id="member:alpaca"]').click()
    assert "§1.5" in page.locator("#node-detail").inner_text()
    page.screenshot(path=str(shots / "family.png"), full_page=False)
    page.click("#show-catalogue")  # the workspace alone
    page.wait_for_function("!document.querySelector('g.node.member')")
    page.wait_for_selector('g.node[data-path="broken"]')  # the tree is redrawn after the old one goes
    assert page.locator('g.node[data-path="broken"]').count() == 1
    page.screenshot(path=str(shots / "family-workspace.png"), full_page=False)


def test_clicking_a_node_opens_its_scorecard_and_curves(page, url, shots):
    page.goto(f"{url}/#/family")
    page.locator('g.node.artifact[data-path^="alpaca-tiny-test/01-sft"]').click()
    page.wait_for_selector("#scorecard")
    assert page.url.split("#")[1].startswith("/artifact?path=alpaca-tiny-test")
    card = page.locator("#scorecard").inner_text()
    assert "held-out response loss" in card and "not comparable" in card
    lineage = page.locator("#lineage").inner_text()
    assert "tiny" in lineage and "stanford_alpaca_tiny" in lineage and "0.1.0" in lineage
    assert page.locator("#curves-loss polyline").count() == 1
    box = page.locator("#curves-loss rect.hit").bounding_box()
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2)  # hover: the value read-out
    assert page.locator("#curves-loss .tip").text_content().startswith("step 2 · loss: ")
    assert page.locator("#samples tr").count() == 3  # header + the 2 side-by-side samples
    page.screenshot(path=str(shots / "artifact.png"), full_page=False)


def test_artifact_page_draws_eval_curves_and_per_category_tables(page, url, shots):
    """The guard eval's precision-recall panels (a series per model, hover read-out) and its per-category
    rows, one table per metric, from the scorecard the eval's own functions wrote."""
    page.goto(f"{url}/#/artifact?path=guard")
    page.wait_for_selector("#scorecard")
    charts = page.locator("#eval-curves .chart")
    assert charts.count() == 3  # binary unsafe, then the two categories
    assert charts.nth(0).locator("polyline").count() == 2
    assert {charts.nth(0).locator("polyline").nth(i).get_attribute("data-series") for i in range(2)} == \
        {"parent", "derived"}
    assert "precision-recall: unsafe (binary)" in charts.nth(0).text_content()
    charts.nth(0).locator("rect.hit").hover()  # scrolled into view, the pointer at its middle
    tip = charts.nth(0).locator(".tip").text_content()
    assert tip.startswith("recall ") and "parent: " in tip and "derived: " in tip
    table = page.locator('table[data-group="guard auprc per category (test split)"]')
    assert table.locator("tr").count() == 3  # header + 2 categories
    assert {"Violence and Hate", "Criminal Planning"} <= set(table.locator("tr td:first-child").all_inner_texts())
    assert page.locator('table[data-group="guard f1 per category (test split)"] tr').count() == 3
    assert "95% CI [" in page.locator("#scorecard .headline").inner_text()
    page.screenshot(path=str(shots / "artifact-guard.png"), full_page=False)


def test_artifact_page_exports_an_hf_folder_as_a_job(page, url, ws):
    page.goto(f"{url}/#/artifact?path=chat-child")
    page.click('#export button:has-text("Export HF folder")')
    page.wait_for_selector('#export .job[data-state="done"]', timeout=120_000)
    assert "herd export" in page.locator("#export .job").inner_text()
    assert list((ws / "chat-child" / "export").rglob("*.safetensors"))


def test_derive_from_the_run_page_streams_progress_and_lands_in_the_tree(page, url, shots):
    start_derive(page, url, max_steps="2", out="from-ui")
    job = page.locator(".job", has_text="/from-ui --base")
    job.locator(".badge.running").wait_for(timeout=60_000)
    job.locator(".badge.done").wait_for(timeout=240_000)
    assert int(job.get_attribute("data-progress")) >= 3  # stage starts and training steps, as they happened
    text = job.inner_text()
    assert "2/2 steps" in text and "stage 1/1 sft" in text
    assert job.locator('a:has-text("open the artifact")').count() == 1
    page.screenshot(path=str(shots / "run.png"), full_page=True)
    page.goto(f"{url}/#/family")
    page.wait_for_selector("#tree-svg")
    node = page.locator('g.node.artifact[data-path^="from-ui/01-sft"]')
    assert node.count() == 1 and node.get_attribute("data-status") == "ok"


def test_chat_streams_two_artifacts_side_by_side(page, url, shots):
    page.goto(f"{url}/#/chat?a=chat-child&b=chat-parent")
    page.wait_for_selector("#prompt")
    page.fill("#prompt", "Hello")
    page.click("#send")
    for pane, says in (("#pane-a", CHILD_SAYS), ("#pane-b", PARENT_SAYS)):
        answer = page.locator(f'{pane} .msg.assistant[data-done="1"]')
        answer.wait_for(timeout=60_000)
        assert says in answer.inner_text()
        assert int(answer.get_attribute("data-chunks")) > 1  # streamed, not sent in one piece
    page.screenshot(path=str(shots / "chat.png"), full_page=False)


def test_chat_with_a_guard_marks_flagged_input(page, url):
    page.goto(f"{url}/#/chat?a=chat-child&guard=guard")  # this guard's threshold 0 flags everything
    page.wait_for_selector("#prompt")
    page.fill("#prompt", "Hello")
    page.click("#send")
    page.locator('#pane-a .msg.assistant[data-done="1"]').wait_for(timeout=60_000)
    assert "flagged input" in page.locator("#pane-a .msg.user.flagged").inner_text()
    assert page.locator("#pane-a .msg.assistant").inner_text() == ""  # nothing generated for flagged input


def _chat_events(url: str, path: str, prompt: str) -> list[dict]:
    import httpx

    with httpx.stream("POST", f"{url}/api/chat", json={"path": path, "messages": [{"role": "user", "content": prompt}],
                                                       "max_tokens": 96}, timeout=120) as r:
        return [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]


def test_chat_with_a_guard_marks_a_flagged_reply(page, url, ws):
    """A guard that passes the prompt and flags the reply: the reply is shown, marked flagged output."""
    from herd.guard import Guard

    reply = "".join(e.get("delta", "") for e in _chat_events(url, "chat-child", "Hello"))
    assert CHILD_SAYS in reply
    g = Guard(ws / "guard-replies")
    asked, answered = g.classify("Hello").p_unsafe, g.classify("Hello", response=reply).p_unsafe
    assert answered - asked > 0.2, (asked, answered)  # it learned the two verdicts
    GuardSettings(threshold=(asked + answered) / 2, chosen_on="test: between the prompt's and the reply's "
                  "P(unsafe)").write(ws / "guard-replies")
    page.goto(f"{url}/#/chat?a=chat-child&guard=guard-replies")
    page.wait_for_selector("#prompt")
    page.fill("#prompt", "Hello")
    page.click("#send")
    out = page.locator('#pane-a .msg.assistant[data-done="1"]')
    out.wait_for(timeout=60_000)
    assert CHILD_SAYS in out.inner_text() and "flagged output" in out.inner_text()
    assert page.locator("#pane-a .msg.assistant.flagged").count() == 1
    assert page.locator("#pane-a .msg.user.flagged").count() == 0  # the prompt passed


def test_run_page_cancels_and_resumes_a_derive(page, url):
    start_derive(page, url, max_steps="400", out="cancel-me")
    job = page.locator(".job", has_text="/cancel-me --base")
    job.locator('.log:has-text("[train] 2/")').wait_for(timeout=120_000)
    job.locator("button.cancel").click()
    page.wait_for_selector('.job[data-state="cancelled"]', timeout=30_000)
    assert "[train] 400/400" not in job.inner_text()
    import httpx

    nodes = {n["path"]: n for n in httpx.get(f"{url}/api/tree").json()["nodes"] if n.get("path")}
    assert any(p.startswith("cancel-me/") and n["status"] == "partial" for p, n in nodes.items())
    listed = page.locator('#interrupted .run[data-out="cancel-me"]')  # the workspace's list has it too
    listed.wait_for(timeout=15_000)
    assert listed.get_attribute("data-resumable") == "1"
    job.locator("button.resume").click()
    resumed = page.locator(".job", has_text="(resumed)")
    resumed.locator(".badge.running").wait_for(timeout=30_000)
    assert "(resumed)" in resumed.inner_text() and "--resume" in resumed.inner_text()
    resumed.locator("button.cancel").click()
    page.wait_for_function("document.querySelector('.job').dataset.state === 'cancelled'", timeout=30_000)
    assert resumed.get_attribute("data-state") == "cancelled"


def test_run_page_resumes_a_derive_killed_on_the_command_line(page, tmp_path, shots):
    """`herd derive` started in a shell and killed (-9) after its step-2 checkpoint: the Run page finds it
    by its derive.json, resumes it from step 3 to done; what it cannot resume it lists with the reason."""
    import httpx

    from herd.core.hashing import sha256_file
    from herd.core.paths import repo_root

    ws2 = tmp_path / "ws"
    recipe = tiny_alpaca_recipe(ws2)
    raw = yaml.safe_load(recipe.read_text())
    raw["profiles"]["test"]["stages"]["sft"]["checkpoint_every"] = 1  # 24 records, batch 8: 3 steps
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    killed = subprocess.run([sys.executable, "-m", "herd.cli", "derive", "alpaca-test.yaml", "--base", "tiny",
                             "--profile", "test", "--out", "cli-run"], cwd=ws2, capture_output=True, text=True,
                            env={**os.environ, "HERD_TEST_KILL_AFTER_STEP": "2", "HF_HUB_OFFLINE": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert json.loads((ws2 / "cli-run" / "derive.json").read_text())["state"] == "running"  # as it was killed
    (ws2 / "no-record" / "01-sft-0123456789.work").mkdir(parents=True)  # a herd older than run records
    shipped = repo_root() / "recipes" / "alpaca.yaml"
    for name, args, extra in (("base-elsewhere", {"base": "/opt/elsewhere/model"}, {"state": "failed"}),
                              ("live", {}, {"state": "running", "pid": os.getpid(), "host": socket.gethostname()}),
                              ("recipe-changed", {}, {"state": "failed", "recipe_sha256": "0" * 64}),
                              ("from-python", {"overrides": {"eval_size": 4}}, {"state": "failed"})):
        (ws2 / name).mkdir()
        (ws2 / name / "derive.json").write_text(json.dumps({
            "command": f"herd derive alpaca --profile tiny --out {name}", "recipe_sha256": sha256_file(shipped),
            "args": {"recipe": "alpaca", "recipe_file": str(shipped), "base": None, "profile": "tiny", "data": [],
                     "out": str(ws2 / name), "max_steps": None, "report_to": None, "overrides": None, **args},
            **extra}))
    with serving(ws2) as url:
        page.goto(f"{url}/#/run")
        row = page.locator('#interrupted .run[data-out="cli-run"]')
        row.wait_for(timeout=15_000)
        assert row.get_attribute("data-resumable") == "1" and row.get_attribute("data-state") == "interrupted"
        assert "checkpoint at step 2" in row.inner_text() and "--out cli-run" in row.inner_text()
        why = {r["out"]: r["why"] for r in httpx.get(f"{url}/api/runs").json()["runs"]}
        assert set(why) == {"cli-run", "no-record", "base-elsewhere", "live", "recipe-changed", "from-python"}
        assert why["cli-run"] is None
        assert "changed since the run started" in why["recipe-changed"] and "overrides" in why["from-python"]
        assert "no derive.json run record" in why["no-record"]
        assert "outside the workspace" in why["base-elsewhere"] and "--resume" in why["base-elsewhere"]
        assert f"still running (pid {os.getpid()}" in why["live"]
        assert "outside the workspace" in page.locator('.run[data-out="base-elsewhere"] .why').inner_text()
        assert not [f for f in httpx.get(f"{url}/api/files").json()["files"] if ".work/" in f]  # not data files
        for out, status in (("no-record", 409), ("live", 409), ("recipe-changed", 409), ("../", 403)):
            r = httpx.post(f"{url}/api/runs/resume", json={"out": out})
            assert r.status_code == status and r.json()["error"], (out, r.text)
        page.screenshot(path=str(shots / "run-interrupted.png"), full_page=True)
        row.locator("button.resume-run").click()
        job = page.locator(".job", has_text="(resumed)")
        job.locator(".badge.done").wait_for(timeout=240_000)
        assert "--resume" in job.inner_text() and "/cli-run --base tiny" in job.inner_text()
        log = job.locator(".log").inner_text()
        assert "[train] 3/3" in log and "[train] 1/3" not in log  # from the checkpoint, not from step 0
        assert json.loads((ws2 / "cli-run" / "derive.json").read_text())["state"] == "done"
        steps = [json.loads(x)["step"] for x in (ws2 / "cli-run" / "model" / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3]
        page.wait_for_function("!document.querySelector('#interrupted .run[data-out=\"cli-run\"]')", timeout=15_000)
        r = httpx.post(f"{url}/api/runs/resume", json={"out": "cli-run"})
        assert r.status_code == 409 and "finished" in r.json()["error"]


def test_compare_page_shows_two_scorecards(page, url, shots):
    page.goto(f"{url}/#/compare?a=alpaca-tiny-test&b=chat-child")
    page.wait_for_selector("#compare #scorecard")
    cols = page.locator("#compare > div")
    assert "held-out response loss" in cols.nth(0).inner_text()
    assert "no scorecard.json" in cols.nth(1).inner_text()
    page.screenshot(path=str(shots / "compare.png"), full_page=True)


def test_outside_paths_and_bad_inputs_get_clear_errors_before_any_job(page, url, ws):
    page.goto(f"{url}/#/run")
    page.wait_for_selector("#run-form")

    def start(recipe: str, data: str = "") -> str:
        page.fill('input[name="recipe"]', recipe)
        page.fill('textarea[name="data"]', data)
        page.click("#start")
        return page.locator("#run-message .error").inner_text()

    jobs_before = page.locator(".job").count()
    assert "outside the workspace" in start("alpaca", "/etc/hostname")
    assert "outside the workspace" in start("../../etc/recipe.yaml")
    assert "unknown recipe 'alpacca'; known: " in start("alpacca")
    err = start("broken.yaml")
    assert "broken.yaml" in err and "stages.0.sft.lr" in err
    err = start("alpaca", "bad.json")
    assert "bad.json record 1 field 'instruction'" in err
    assert page.locator(".job").count() == jobs_before  # nothing was queued
    page.goto(f"{url}/#/artifact?path=../../etc")
    assert "outside the workspace" in page.locator("#page .error").inner_text()


def test_api_refuses_outside_paths_and_needs_the_key_off_loopback(url, ws, tmp_path):
    import httpx

    from herd.cli import main
    from herd.ui import create_app

    r = httpx.get(f"{url}/api/artifact", params={"path": str(ws.parent)})
    assert r.status_code == 403 and "outside the workspace" in r.json()["error"]
    r = httpx.post(f"{url}/api/chat", json={"path": "/etc", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 403
    assert main(["ui", str(ws), "--host", "0.0.0.0"]) == 2  # refused without --api-key

    from fastapi.testclient import TestClient

    with TestClient(create_app(ws, api_key="s3cret")) as client:
        assert client.get("/api/tree").status_code == 401
        assert client.get("/api/tree", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/?key=s3cret").status_code == 200  # sets the cookie, then the page loads
        assert client.get("/api/tree").status_code == 200


def test_pages_fetch_nothing_outside_the_app(page, url):
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    page.goto(f"{url}/#/family")
    page.wait_for_selector("#tree-svg")
    assert asked and all(u.startswith(url) for u in asked)
