"""The demo's figures the README quotes (models, SLERP balance, SAEs, feature flow with its seed null), printed from
a materialized home's files as Markdown; nothing is recomputed.

    python docs/demo_tables.py .featureflow/demo [--lineage demo]

Reads `reports/model/<node>/metrics.json`, `slerp_sweep/<node>/balance.json`, `sae/<node>/checks.json`,
`feature_flow/{headline_counts.json,edge_counts,null_counts,seed_null,agreement}.parquet` (what the assets write).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from featureflow_dagster.lineage import load_lineage
from featureflow_dagster.serve import REPORTS_DIR


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def models(lineage, home: Path) -> list[str]:
    out = ["| node | validation accuracy (next token) |", "|---|---|"]
    for name in lineage.node_names:
        metrics = _json(home / REPORTS_DIR / "model" / name / "metrics.json")
        acc = ", ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in metrics.items() if k.startswith("val_accuracy/"))
        out.append(f"| {name} | {acc or '–'} |")
    for name in lineage.node_names:
        balance = _json(home / "slerp_sweep" / name / "balance.json")
        if balance:
            at = ", ".join(f"{d} {a:.3f}" for d, a in balance["accuracy_at_t"].items())
            anc = ", ".join(f"{d} {a:.3f}" for d, a in balance["ancestor_accuracy"].items())
            out.append(f"\nSLERP sweep of `{name}`: {balance['note']} (step {balance['grid']['step']}, "
                       f"{balance['grid']['eval_tokens']:,} tokens per domain); at t: {at}; the ancestor "
                       f"`{balance['ancestor']}`: {anc}")
    return out


def saes(lineage, home: Path) -> list[str]:
    cols = (("L0", "l0_in_range"), ("explained variance", "explained_variance_above"),
            ("loss recovered", "loss_recovered_above"), ("dead", "dead_fraction_below"),
            ("top-token share margin over random", "features_beat_random"), ("decoder cosine to init", "decoder_left_init"))
    out = ["| node | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in lineage.node_names:
        checks = _json(home / "sae" / name / "checks.json")
        cells = [f"{checks[c]['value']:.3f}" if c in checks else "–" for _, c in cols]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def flow(home: Path) -> list[str]:
    ff = home / "feature_flow"
    out = []
    head = _json(ff / "headline_counts.json")
    if head:
        out.append(f"base features persisting into any child: {head['base_features_persisting_into_any_child']}")
        for merge, m in head.get("merges", {}).items():
            per = "; ".join(f"{p}: {v['traceable']} ({v['emerged_in_finetuning']} emerged in its fine-tuning, "
                            f"{v['persisted_from_ancestor']} persisted from the ancestor)" for p, v in m["per_parent"].items())
            out.append(f"`{merge}`: {m['traceable_to_any_parent']} features traceable to a parent; {per}")
    counts = ff / "edge_counts.parquet"
    if counts.is_file():
        e = pd.read_parquet(counts)
        null = pd.read_parquet(ff / "null_counts.parquet").set_index("edge") if (ff / "null_counts.parquet").is_file() else None
        out += ["", "| edge | parent persisting | disappearing | child emerged | persisting among reproducible | "
                "null expects | dead (parent / child) |", "|---|---|---|---|---|---|---|"]
        for _, r in e.iterrows():
            rep = exp = "–"
            if null is not None and r["edge"] in null.index:
                rep, exp = int(null.loc[r["edge"], "parent_persisting_reproducible"]), int(null.loc[r["edge"], "null_expected_persisting"])
            out.append(f"| {r['edge']} | {r['parent_persisting']} | {r['parent_disappearing']} | {r['child_emerged']} | "
                       f"{rep} | {exp} | {r['parent_dead']} / {r['child_dead']} |")
    seeds = ff / "seed_null.parquet"
    if seeds.is_file():
        s = pd.read_parquet(seeds)
        live = s[~s["dead"]]
        rep = ", ".join(f"{n} {g['reproducible'].mean():.3f}" for n, g in live.groupby("node", sort=False))
        out.append(f"\nseed reproducibility (share of live features with a partner r > 0.8 in the other seed's SAE): {rep}")
    agree = ff / "agreement.parquet"
    if agree.is_file():
        a = pd.read_parquet(agree)
        out.append(f"decoder-cosine matching picks the same best partner as activation correlation for "
                   f"{a['agreement'].min():.0%}–{a['agreement'].max():.0%} of live features "
                   f"({a['agreement_when_matched'].min():.0%}–{a['agreement_when_matched'].max():.0%} of the persisting ones)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("home", type=Path)
    ap.add_argument("--lineage", default="demo")
    args = ap.parse_args()
    lineage = load_lineage(args.lineage)
    for title, lines in (("Models", models(lineage, args.home)), ("SAEs", saes(lineage, args.home)),
                         ("Feature flow", flow(args.home))):
        print(f"## {title}\n")
        print("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
