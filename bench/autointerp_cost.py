"""What automated interpretability of a materialized lineage would cost, per the estimator the
`autointerp` asset uses to cap a run (no request is sent).

    .venv/bin/python bench/autointerp_cost.py [--lineage demo] [--home PATH] [--prompt-usd 10] [--completion-usd 30]

Prints, per node, the requests, tokens and USD for the lineage's `autointerp:` choice of features
(`features_per_node`) and for every live feature, at the given prices (default: GPT-4 Turbo's list
price, USD 10 / 30 per million prompt / completion tokens, the model Horn & Elliott used)."""

from __future__ import annotations

import argparse
import warnings

import numpy as np


def main() -> None:
    warnings.simplefilter("ignore")
    from featureflow_dagster.examples import load_evidence
    from featureflow_dagster.autointerp import (Estimate, Price, choose_features, estimate, feature_requests, inactive_records,
                                                records_from_evidence)
    from featureflow_dagster.assets.data import TOKENIZER
    from featureflow_dagster.assets.examples import FEATURE_EXAMPLES
    from featureflow_dagster.assets.models import MODEL
    from featureflow_dagster.assets.sae import SAE
    from featureflow_dagster.instance import featureflow_home
    from materialized import open_home
    from featureflow_dagster.lineage import load_lineage
    from featureflow_dagster.model import load_model
    from featureflow_dagster.sae import load_sae
    from featureflow_dagster.tokenizer import load_tokenizer, token_strings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lineage", default="demo")
    ap.add_argument("--home", default=None)
    ap.add_argument("--prompt-usd", type=float, default=10.0)
    ap.add_argument("--completion-usd", type=float, default=30.0)
    ap.add_argument("--scorers", default=None, help="comma-separated (default: the lineage's autointerp.scorers)")
    args = ap.parse_args()
    lineage, home = open_home(args.lineage, args.home or str(featureflow_home(load_lineage(args.lineage).name)))
    spec, price = lineage.autointerp, Price(args.prompt_usd, args.completion_usd)
    scorers = args.scorers.split(",") if args.scorers else spec.scorers
    print(f"scorers: {', '.join(scorers)}; USD {price.prompt} / {price.completion} per million prompt / completion tokens")
    vocab = None
    totals = {"chosen": [], "all": []}
    print(f"{'node':12} {'features':>9} {'requests':>9} {'prompt tok':>11} {'compl. tok':>11} {'USD':>9}   (all live features: USD)")
    for node in lineage.node_names:
        ev = load_evidence(node, FEATURE_EXAMPLES.at(home, node), load_model(MODEL.at(home, node), "cpu"),
                           load_sae(SAE.at(home, node), "cpu"), "cpu")
        if vocab is None:
            vocab = token_strings(load_tokenizer(TOKENIZER.at(home)))
        live = ev.table["density"].to_numpy() > 0
        keep, others = choose_features(live, np.zeros_like(live), spec.features_per_node, lineage.seed_of(node))
        per = {}
        for name, feats in (("chosen", keep + others), ("all", np.flatnonzero(live).tolist())):
            reqs = []
            for f in feats:
                explain, score = records_from_evidence(ev, f, vocab, spec.explain_records, spec.score_records, lineage.seed_of(node))
                off = inactive_records(ev, f, vocab, spec.score_records) if "detection" in scorers else []
                reqs += feature_requests(explain, score, float(ev.examples.top_values[f, 0]), off, scorers, lineage.seed_of(node))
            per[name] = estimate(reqs, price)
            totals[name].append((len(feats), per[name]))
        e = per["chosen"]
        print(f"{node:12} {len(keep + others):9,} {e.requests:9,} {e.prompt_tokens:11,} {e.completion_tokens:11,} {e.usd:9.2f}"
              f"   ({int(live.sum()):,} features: {per['all'].usd:,.2f})")
    for name in ("chosen", "all"):
        n = sum(k for k, _ in totals[name])
        e = Estimate(*(sum(getattr(x, a) for _, x in totals[name]) for a in ("requests", "prompt_tokens", "completion_tokens", "usd")))
        print(f"{'total ' + name:12} {n:9,} {e.requests:9,} {e.prompt_tokens:11,} {e.completion_tokens:11,} {e.usd:9.2f}"
              f"   (USD {e.usd / max(1, n):.4f} per feature)")


if __name__ == "__main__":
    main()
