"""The benchmark runs end to end (at a tiny scale); its figures are not judged here.

It starts its own engines (raw vLLM and a worker, resident together with half the default
memory each, working in turn); this folder sorts before ``tests/e2e`` so they are gone before
the end-to-end stack starts its worker.
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


def _vllm_processes() -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if "(VLLM::" in stat.read_text():
                found.add(int(stat.parent.name))
        except OSError:
            continue
    return found


def test_benchmark_runs_and_writes_its_figures(tmp_path: Path):
    before = _vllm_processes()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--scale",
            "0.01",
            "--wrk-seconds",
            "1",
            "--results",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert not _vllm_processes() - before, "the benchmark left vLLM engine processes running"
    assert "Burst throughput" in run.stdout and "Gateway alone" in run.stdout
    assert "Queue ceiling" in run.stdout
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
    } <= latest.keys()
    for name in ("text_8", "choice", "json_small", "text_8_single"):
        row = latest["ceiling"][name]
        assert row["structq"]["succeeded"] == row["structq"]["jobs"] > 0, row["structq"]
        assert row["baseline"]["jobs_per_s"] > 0
    assert set(latest["burst"]) == {"text_256x64", "json_schema_128", "mixed_128"}
    for row in latest["burst"].values():
        assert row["structq"]["tokens"] > 0 and row["baseline"]["tokens"] > 0
    ratios = _ratio_keys(latest)
    assert ratios and all(key.endswith("_ratio") for key in ratios), ratios
