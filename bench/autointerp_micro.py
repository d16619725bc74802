"""The auto-interp run on `micro` the README quotes, reproducible with one command: the tests' deterministic
OpenAI-compatible server (tests/llm_server.py) on 127.0.0.1, micro with an `autointerp:` section (6 features per
node, 4 explain and 4 score records, all three scorers, USD 10 / 30 per million tokens) materialized from an empty
home through `featureflow materialize`, then forced again (every answer from the cache), then refused over a
cap; per node the requests, cache hits and the mean simulation score against the true activations (Bills et al.)
and against the quantised ones the explainer saw.

  python bench/autointerp_micro.py [--keep DIR]

The server simulates from the explanation's quoted token exactly, so the scores measure the plumbing, not an LLM.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from llm_server import MODEL, FakeLLM  # noqa: E402

KEY = "sk-bench-key"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", default=None, help="keep the home and logs under this folder")
    args = ap.parse_args()
    import pandas as pd

    from featureflow_dagster.lineage import resolve_lineage_path

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="featureflow-autointerp-"))
    base.mkdir(parents=True, exist_ok=True)
    with FakeLLM(api_key=KEY) as server:
        raw = yaml.safe_load(resolve_lineage_path("micro").read_text())
        raw["name"] = "micro"
        settings = {"enabled": True, "base_url": server.base_url, "model": MODEL, "api_key_env": "FF_BENCH_LLM_KEY",
                    "features_per_node": 6, "explain_records": 4, "score_records": 4, "prompt_usd_per_mtok": 10.0,
                    "completion_usd_per_mtok": 30.0, "max_usd": 1.0, "scorers": ["simulation", "detection", "fuzzing"]}
        env = {**os.environ, "FEATUREFLOW_HOME": str(base / "home"), "DAGSTER_HOME": str(base / "dagster"),
               "FF_BENCH_LLM_KEY": KEY, "FEATUREFLOW_DEVICE": "cpu"}

        def run(name: str, autointerp: dict, *extra: str) -> subprocess.CompletedProcess:
            path = base / f"{name}.yaml"
            path.write_text(yaml.safe_dump({**raw, "autointerp": autointerp}))
            before = server.requests
            proc = subprocess.run([sys.executable, "-m", "featureflow_dagster.cli", "materialize", "--lineage", str(path), *extra],
                                  env=env, capture_output=True, text=True)
            (base / f"{name}.log").write_text(proc.stdout + proc.stderr)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("done     autointerp[")]
            print(f"{name}: exit {proc.returncode}, the server received {server.requests - before} requests")
            for line in lines:
                print("  " + " ".join(line.split()))
            return proc

        run("whole lineage from an empty home", settings)
        home = base / "home"
        rows = []
        for node in raw_nodes(raw):
            table = pd.read_parquet(home / "autointerp" / node / "scores.parquet")
            usage = json.loads((home / "autointerp" / node / "usage.json").read_text())
            rows.append({"node": node, "features": len(table), "requests": usage["requests"], "cache_hits": usage["cache_hits"],
                         "score (true activations)": round(float(table["score"].mean()), 4),
                         "score (quantised)": round(float(table["score_quantised"].mean()), 4)})
        print(pd.DataFrame(rows).set_index("node").to_string())
        run("forced again: from the cache", settings, "--asset", "autointerp", "--force")
        over = run("over the cap", {**settings, "features_per_node": 12, "max_usd": 0.001}, "--asset", "autointerp", "--force")
        refusal = next((line for line in (over.stdout + over.stderr).splitlines() if "above the cap" in line), "")
        print(f"  refusal: {refusal.strip()[:400]}")
    if not args.keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return 0


def raw_nodes(raw: dict) -> list[str]:
    return [n["name"] for n in raw["nodes"]]


if __name__ == "__main__":
    sys.exit(main())
