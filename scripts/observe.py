"""``make observe``: the local stack (Redis, a worker, the webhook worker, the gateway) with
Debian's Prometheus scraping all three structq processes and evaluating structq's alert rules,
a steady trickle of jobs, and the URLs to look at. Runs until Ctrl-C.

``--screenshot FILE`` instead runs the jobs for ``--seconds``, saves a headless-Chromium
screenshot of Prometheus' graphs of them, and stops (it made docs/img/prometheus.png).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import httpx

from scripts.stack import Stack, start_prometheus

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "rules.yml"

# What the graphs show: (PromQL, range).
GRAPHS = [
    ("sum by (model) (structq_queue_jobs)", "5m"),
    ("sum(rate(structq_generation_tokens_total[30s]))", "5m"),
    (
        "histogram_quantile(0.95, sum by (le) (rate(structq_job_duration_seconds_bucket[30s])))",
        "5m",
    ),
    ("sum by (status) (rate(structq_worker_jobs_finished_total[30s]))", "5m"),
]

_BODIES = [
    {"prompt": "Say hello.", "sampling": {"max_tokens": 12}},
    {
        "messages": [{"role": "user", "content": "Is the sky blue? Answer yes or no."}],
        "output_type": {"type": "choice", "choices": ["yes", "no"]},
    },
    {"prompt": "Pick a number from 1 to 9:", "output_type": {"type": "int"}},
    # Fails on purpose (2 tokens cannot hold the object): the failure panels are not empty.
    {
        "prompt": "JSON:",
        "output_type": {"type": "json_schema", "schema": {"type": "object"}},
        "sampling": {"max_tokens": 2},
    },
]


def _trickle(api_url: str, stop: threading.Event) -> None:
    """A few jobs a second, every kind, until ``stop``."""
    with httpx.Client(base_url=api_url, timeout=30) as client:
        turn = 0
        while not stop.is_set():
            client.post("/v1/jobs", json=_BODIES[turn % len(_BODIES)])
            turn += 1
            if turn % 20 == 0:  # now and then a burst of text jobs, so the queue is seen to move
                for _ in range(16):
                    client.post("/v1/jobs", json=_BODIES[0])
            stop.wait(0.3)


def graph_url(base: str) -> str:
    params: dict[str, str] = {}
    for i, (expr, span) in enumerate(GRAPHS):
        params.update({f"g{i}.expr": expr, f"g{i}.tab": "0", f"g{i}.range_input": span})
    return f"{base}/graph?{urllib.parse.urlencode(params)}"


def screenshot(base: str, path: Path) -> None:
    """Prometheus' graph page for each of GRAPHS in headless Chromium, stacked into one PNG."""
    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium is missing: apt-get install chromium")
    shots = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, (expr, span) in enumerate(GRAPHS):
            query = urllib.parse.urlencode({"g0.expr": expr, "g0.tab": "0", "g0.range_input": span})
            shot = Path(scratch) / f"{i}.png"
            subprocess.run(
                [
                    browser,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    f"--user-data-dir={Path(scratch) / 'profile'}",
                    "--window-size=1400,900",
                    "--virtual-time-budget=8000",  # lets the page fetch and draw its graph
                    f"--screenshot={shot}",
                    f"{base}/graph?{query}",
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            with Image.open(shot) as image:
                # The query box, the graph and its legend (below the navigation bar).
                shots.append(image.crop((0, 105, 1400, 800)))
    sheet = Image.new("RGB", (1400, sum(s.height for s in shots)), "white")
    top = 0
    for part in shots:
        sheet.paste(part, (0, top))
        top += part.height
    sheet.save(path)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshot", type=Path, help="save the graphs there, and stop")
    parser.add_argument("--seconds", type=float, default=150, help="jobs before the screenshot")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="structq-observe-"))
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    with Stack(workdir, webhooks=True, env={"STRUCTQ_WEBHOOK_SECRET": secret}) as stack:
        server, base = start_prometheus(workdir, stack.metrics_urls(), interval_s=2.0, rules=RULES)
        stop = threading.Event()
        load = threading.Thread(target=_trickle, args=(stack.api_url, stop), daemon=True)
        load.start()
        try:
            print(f"\nPrometheus: {base}   (targets: {base}/targets, alerts: {base}/alerts)")
            print(f"Graphs of the jobs now running: {graph_url(base)}")
            print(f"The gateway: {stack.api_url} (its metrics: {stack.api_url}/metrics)")
            print("Jobs are being submitted a few a second. Ctrl-C stops everything.\n", flush=True)
            if args.screenshot is not None:
                time.sleep(args.seconds)
                screenshot(base, args.screenshot)
                print(f"saved {args.screenshot}")
            else:
                signal.signal(signal.SIGTERM, _interrupt)
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: the cleanup goes on
            stop.set()
            server.stop(30)
            load.join(timeout=35)
    return 0


if __name__ == "__main__":
    sys.exit(main())
