"""Screenshot of the MLflow UI view a sweep's end prints (docs/mlflow_ui.png in the README).

Starts `mlflow ui` on 127.0.0.1 for the project's store, opens the link `conclude_sweep` prints for the newest
sweep parent of an experiment (its children, sorted by test Dice) in headless Chromium, writes the PNG and stops
the server.

    .venv/bin/python tools/ui_screenshot.py                                  # phantom_xray -> docs/mlflow_ui.png
    .venv/bin/python tools/ui_screenshot.py --experiment phantom_cardiac --out /tmp/ui.png
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def newest_parent(uri: str, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"ui_screenshot: no experiment {experiment!r} in {uri} (run `make sweep` first)")
    parents = client.search_runs([exp.experiment_id], "tags.`segsweep.parent` = 'true'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise SystemExit(f"ui_screenshot: experiment {experiment!r} has no sweep parent run (run `make sweep` first)")
    return exp, parents[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uri", default=f"sqlite:///{ROOT}/mlruns/mlflow.db")
    parser.add_argument("--experiment", default="phantom_xray")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "mlflow_ui.png")
    parser.add_argument("--size", default="1600,900", help="browser window W,H")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("ui_screenshot: chromium not found (apt-get install chromium)")
    from seg.tracking import UI_ORDER_BY, ui_url

    exp, parent = newest_parent(args.uri, args.experiment)
    port = free_port()
    url = ui_url(args.uri, exp.experiment_id, f"tags.mlflow.parentRunId = '{parent.info.run_id}'", port=port,
                 order_by=UI_ORDER_BY)
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", args.uri,
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit(f"ui_screenshot: mlflow ui did not answer on 127.0.0.1:{port}")
                time.sleep(1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={args.size}",
                        "--virtual-time-budget=30000", f"--screenshot={args.out}", url],
                       check=True, capture_output=True, timeout=180)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{args.out}: {url} (sweep parent {parent.info.run_name!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
