"""Many machines: a 2-node x 1-process derive on loopback (two torchrun agents that meet through a c10d
rendezvous, gloo on CPU) matches the single-process run of the same toy recipe, as the 2-process
``--standalone`` run does in test_resume_and_distributed.py."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from herd.core.paths import repo_root
from tests.test_resume_and_distributed import _final, _recipe, _run

AGENTS_TIMEOUT_S = 600  # both agents together; the whole test takes ~25 s on 2 cores
TERM_GRACE_S = 30  # after SIGTERM an agent stops its workers (their own sessions), then exits


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the agent (it then kills its workers), SIGKILL its process group if it does not exit."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _run_two_agents(args: list[str], logs: Path) -> list[str]:
    """One torchrun agent per "node", both on this machine; returns each agent's output (stdout + stderr).
    Fails, with both agents stopped, when either exits non-zero or they run past AGENTS_TIMEOUT_S."""
    endpoint, rdzv_id = f"127.0.0.1:{_free_port()}", f"herd-test-{uuid.uuid4().hex[:12]}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", LOGLEVEL="INFO")  # INFO: the agents log their rendezvous result
    procs, outs = [], []
    try:
        for agent in (0, 1):
            out = (logs / f"agent{agent}.log").open("w")
            outs.append(out)
            # no --node_rank: c10d hands out the node ranks itself (torchrun warns that it ignores one)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                   "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", rdzv_id,
                   "--local_addr", "127.0.0.1", "-m", "herd.cli", *args]
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=repo_root(),
                                          start_new_session=True))
        deadline = time.monotonic() + AGENTS_TIMEOUT_S
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        for p in procs:
            _stop(p)
        for out in outs:
            out.close()
    texts = [(logs / f"agent{i}.log").read_text() for i in range(len(procs))]
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], f"agents exited {codes}:\n" + "\n".join(
        f"--- agent {i} ---\n{t[-3000:]}" for i, t in enumerate(texts))
    return texts


def _world_size(out: Path) -> int:
    return json.loads(((out / "model").resolve() / "lineage.json").read_text())["metrics"]["world_size"]


@pytest.mark.slow
def test_two_nodes_one_process_each_match_single(tmp_path):
    recipe = _recipe(tmp_path, "full", micro_batch_rows=2, checkpoint_every=0)
    args = ["derive", str(recipe), "--base", "tiny", "--profile", "test", "--max-steps", "4"]
    _run(args + ["--out", str(tmp_path / "one")])
    texts = _run_two_agents(args + ["--out", str(tmp_path / "nodes")], tmp_path)
    (l1, w1), (l2, w2) = _final(tmp_path / "one"), _final(tmp_path / "nodes")
    # both agents took part: the trained model saw a world of 2, one rank from each node
    assert _world_size(tmp_path / "one") == 1 and _world_size(tmp_path / "nodes") == 2
    # and each agent's rendezvous made it one of the two nodes (c10d picks which is node 0)
    tails = [t[-3000:] for t in texts]
    assert sorted(int(m) for t in texts for m in re.findall(r"group_rank=(\d+)", t)) == [0, 1], tails
    assert all(re.findall(r"group_world_size=(\d+)", t) == ["2"] for t in texts), tails
    assert len(l1) == len(l2) == 4
    assert all(abs(a - b) < 1e-4 for a, b in zip(l1, l2)), (l1, l2)
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
