"""The benchmark runs end to end (at a tiny scale); its figures are not judged here.

It starts its own engines (raw vLLM and a worker, resident together with half the default
memory each, working in turn; in the several-pools section two workers on two near-free models
at once); this folder sorts before ``tests/e2e`` so they are gone before the end-to-end stack
starts its worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _ratio_keys(node: object, path: str = "") -> list[str]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if "ratio" in key:
                found.append(key)
            found += _ratio_keys(value, f"{path}.{key}")
    return found


def _vllm_processes(session: int) -> set[int]:
    """Live vLLM engine processes in ``session``: the benchmark's own (raw vLLM's engines stay
    in it), not those of anyone else working on the machine at the same time. A stack's
    children run in sessions of their own, which the stack checks itself when it stops (it
    raises if a process is left: the run then fails)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): state ppid pgrp session ...
        fields = text.rsplit(")", 1)[1].split()
        if "(VLLM::" in text and int(fields[3]) == session and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def test_benchmark_runs_and_writes_its_figures(tmp_path: Path):
    bench = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench",
            "--scale",
            "0.01",
            "--wrk-seconds",
            "1",
            # Two near-free models in the several-pools section (the bundled pair is minutes).
            "--pools-models",
            "near-free",
            "--results",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = bench.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        bench.kill()
        bench.communicate()
        raise
    assert bench.returncode == 0, stderr[-3000:]
    left = _vllm_processes(bench.pid)
    assert not left, f"the benchmark left vLLM engine processes running: {left}"
    assert "Burst throughput" in stdout and "Gateway alone" in stdout
    assert "Queue ceiling" in stdout and "Several pools" in stdout
    latest = json.loads((tmp_path / "latest.json").read_text())
    dated = [p for p in tmp_path.glob("*.json") if p.name != "latest.json"]
    assert len(dated) == 1 and json.loads(dated[0].read_text()) == latest
    assert {
        "machine",
        "versions",
        "settings",
        "cold_start",
        "burst",
        "latency",
        "gateway",
        "schema",
        "ceiling",
        "pools",
    } <= latest.keys()
    for name in ("text_8", "choice", "json_small", "text_8_single"):
        row = latest["ceiling"][name]
        assert row["structq"]["succeeded"] == row["structq"]["jobs"] > 0, row["structq"]
        assert row["baseline"]["jobs_per_s"] > 0
    assert set(latest["burst"]) == {"text_256x64", "json_schema_128", "mixed_128"}
    for row in latest["burst"].values():
        assert row["structq"]["tokens"] > 0 and row["baseline"]["tokens"] > 0
    # Both models' jobs went through the one gateway, each model's to its own worker only.
    pools = latest["pools"]["models"]
    assert set(pools) == {"tiny-1-layer", "tiny-2-layers"}
    workers = []
    for row in pools.values():
        ours = row["structq"]
        assert ours["succeeded"] == ours["jobs"] > 0 and ours["wrong_model"] == 0, ours
        assert ours["tokens"] > 0 and row["baseline"]["tokens"] > 0
        assert len(ours["workers"]) == 1 and ours["queue_samples"] > 0
        workers += list(ours["workers"])
    assert len(set(workers)) == 2, workers
    ratios = _ratio_keys(latest)
    assert ratios and all(key.endswith("_ratio") for key in ratios), ratios
