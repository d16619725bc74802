"""Circuits and CMAP on a tiny 4-layer lineage, end to end through Dagster, and the tables they report.

A 4-layer Llama (4 heads, 2 key-value heads, d_model 32; weights drawn with std 0.5 so that attention is not
uniform) and a fine-tune of it by 8 AdamW steps on the json package's source, both made outside featureflow
and saved as folders; the lineage reads them as pretrained nodes, with a close-bracket task mined from
standard-library source and a head group `late` = [[2, 0], [3, 1]]. Prints, for the fine-tune, the circuit
found on half the prompts and its faithfulness on the other half beside random circuits from the same
(layer, position) cells, the strongest paths (sender -> receiver, input), the head group's effect; for the
edge, the CMAP gap and the strongest components both ways with the group's shares.

    python bench/deep_patching.py [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import dagster as dg
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny_models import finetune_outside, pretrained_lineage, save, stdlib_texts, tiny_model, tiny_tokenizer  # noqa: E402

from featureflow_dagster.definitions import build_definitions  # noqa: E402
from featureflow_dagster.lineage import parse_lineage  # noqa: E402
from featureflow_dagster.runner import materialize_lineage, select  # noqa: E402


def lineage_dict(base: Path, ft: Path) -> dict:
    """The tests' two-model pretrained lineage (`tiny_models.pretrained_lineage`) at layer 2, without the merge,
    with more held-out base text (more mined prompts), 20 random circuits and the head group."""
    raw = pretrained_lineage("deep", base, ft, "blocks.2.hook_resid_post")
    raw["nodes"] = raw["nodes"][:2]
    raw["nodes"][0]["data"]["validation_tokens"] = 4096
    raw["nodes"][0]["data"]["sources"][0]["validation_fraction"] = 0.3
    raw["tasks"] = [{"name": "brackets", "kind": "close_bracket", "examples": 64, "length": 12}]
    raw["patching"] = {"random_circuits": 20, "feature_null_draws": 4, "positions": 4, "head_groups": {"late": [[2, 0], [3, 1]]}}
    return raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default=None, help="where to write (default: a temporary folder)")
    args = ap.parse_args()
    root = Path(args.home or tempfile.mkdtemp(prefix="ff-deep-"))
    tok = tiny_tokenizer()
    base = save(tiny_model("llama", tok, seed=5, layers=4, init_range=0.5), tok, root / "weights" / "base")
    ft = save(finetune_outside(tiny_model("llama", tok, seed=5, layers=4, init_range=0.5), tok, stdlib_texts("json/*.py", 4),
                               steps=8, lr=3e-3), tok, root / "weights" / "ft")
    defs = build_definitions(parse_lineage(lineage_dict(base, ft)), home=str(root / "home"), device="cpu")
    materialize_lineage(defs, dg.DagsterInstance.ephemeral(), echo=lambda *_: None,
                        chosen=select(defs, ["corpus", "tokenizer", "tokens", "model", "activation_store", "sae",
                                             "feature_activations", "feature_correlation", "tasks", "task_performance",
                                             "circuits", "cmap"]))
    home = root / "home"
    pd.set_option("display.width", 160)
    for node in ("base", "ft"):
        s = json.loads((home / "circuits" / node / "circuits.json").read_text())["brackets"]
        print(f"\n## circuits[{node}], brackets: found on {s['found_on']} prompts, scored on {s['examples']} others")
        print(f"circuit ({s['size']} units): {', '.join(f'{c}@{p}' for c, p in s['units']) or '(none)'}")
        print(f"accuracy {s['full_accuracy']:.3f}; with everything else mean-ablated {s['accuracy']:.3f}; faithfulness "
              f"{s['faithfulness']:.3f} (LD {s['ld_faithfulness']:.3f}); random circuits from the same {s['pool']} units: "
              f"{s['random_faithfulness']:.3f} ± {s['random_std']:.3f} (LD {s['random_ld_faithfulness']:.3f}), "
              f"share at least as faithful {s['random_at_least']:.2f}; head group late (all positions): {s['groups']['late']:.3f}")
        e = pd.read_parquet(home / "circuits" / node / "patching.parquet")
        whole = e[e["position"].isna()].sort_values("effect", ascending=False)
        print("strongest components (all positions):", ", ".join(f"{r.component} {r.effect:.3f}" for r in whole.head(6).itertuples()))
        p = pd.read_parquet(home / "circuits" / node / "paths.parquet").sort_values("effect", key=abs, ascending=False)
        print("strongest paths:", ", ".join(f"{r.sender}->{r.receiver}[{r.input}] {r.effect:.3f}" for r in p.head(6).itertuples()))
    c = json.loads((home / "cmap" / "base__ft" / "summary.json").read_text())["brackets"]
    print(f"\n## cmap[base__ft], brackets: gap {c['gap']:+.3f} ± {c['gap_se']:.3f} logits over {c['examples']} prompts "
          f"({'resolved' if c['gap_resolved'] else 'within 2 se of zero: no shares'})")
    u = pd.read_parquet(home / "cmap" / "base__ft" / "cmap.parquet")
    whole = u[u["position"].isna()]
    for d in ("child_into_parent", "parent_into_child"):
        top = whole[whole["direction"] == d].sort_values("share", ascending=False).head(5)
        print(f"{d}: " + ", ".join(f"{r.component} {r.share:.3f}" for r in top.itertuples())
              + f"; group.late {c['groups'][d]['late']:.3f}")
    print(f"\nwritten under {root}")


if __name__ == "__main__":
    main()
