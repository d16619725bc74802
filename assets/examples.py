"""Feature evidence per node (`feature_examples`): top contexts, quantile samples, histograms, density,
top tokens, direct-path logit effects and the LLR of each feature's top-token hypothesis."""

import time

import dagster as dg
import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from featureflow_dagster.blocks import load_blocks
from featureflow_dagster.examples import collect_examples, direct_logit_effects, feature_llr, model_logit_path
from featureflow_dagster.flow import edge_windows
from featureflow_dagster.lineage import Lineage
from featureflow_dagster.model import load_model
from featureflow_dagster.plots import markdown_table
from featureflow_dagster.provenance import versions
from featureflow_dagster.resources import ArtifactStore, DeviceResource
from featureflow_dagster.sae import load_sae
from featureflow_dagster.storage import file_sha256
from featureflow_dagster.tokenizer import load_tokenizer
from featureflow_dagster.assets.guard import locked, require_passing_saes, step_log
from featureflow_dagster.assets.config import CODE_VERSIONS, config_dep
from featureflow_dagster.assets.partitions import ancestry_token_edges, fan_out, node_partitions, per_node_models


def build_examples_assets(lineage: Lineage) -> list[dg.AssetsDefinition]:
    return [_feature_examples(lineage)]


def _feature_examples(lineage: Lineage) -> dg.AssetsDefinition:
    nodes = lineage.node_names
    deps = [dg.AssetDep("sae"), dg.AssetDep("tokens", partition_mapping=fan_out(ancestry_token_edges(lineage))),
            *per_node_models([(n, n) for n in nodes]), config_dep("feature_examples", nodes)]

    @dg.asset(
        partitions_def=node_partitions(lineage),
        deps=deps,
        group_name="features",
        kinds={"pytorch", "safetensors", "parquet"},
        pool="gpu",
        code_version=CODE_VERSIONS["feature_examples"],
        description="Per SAE feature, over held-out windows of the node's data: top contexts, quantile samples, "
        "activation histogram and density, top tokens, direct-path logit effects, LLR of the top-token hypothesis.",
    )
    @locked
    def feature_examples(context: dg.AssetExecutionContext, store: ArtifactStore, device: DeviceResource) -> dg.MaterializeResult:
        node = context.partition_key
        require_passing_saes(store, [node])
        spec = lineage.examples
        dev = device.torch_device()
        sae = load_sae(store.sae_dir(node), dev)
        model = load_model(store.model_dir(node), dev)
        tok = load_tokenizer(store.tokenizer_dir())
        blocks = [b for owner in lineage.data_ancestry(node)
                  for b in load_blocks(store.tokens_path(owner), "validation").values()]
        ctx = sae.cfg.context_size
        available = sum(b.shape[0] for b in blocks) * (blocks[0].shape[1] // ctx) * ctx
        windows, _ = edge_windows(blocks, ctx, min(spec.tokens, available), lineage.seed_of(node))
        started = time.perf_counter()
        ex = collect_examples(model, sae, windows, dev, vocab_size=len(tok), top_k=spec.top_k, samples=spec.samples,
                              batch_windows=spec.batch_windows, seed=lineage.seed_of(node), log=step_log(context))
        seconds = time.perf_counter() - started
        top, top_ids, bottom, bottom_ids = direct_logit_effects(sae.W_dec.detach().cpu(), *(t.cpu() for t in model_logit_path(model)),
                                                                k=spec.logit_k)
        table = _feature_table(ex, tok, top_ids)
        out = store.examples_dir(node)
        with store.write_dir(out) as tmp:
            ex.save(tmp / "examples.safetensors")
            save_file({"top_values": top.contiguous(), "top_ids": top_ids.contiguous(), "bottom_values": bottom.contiguous(),
                       "bottom_ids": bottom_ids.contiguous()}, str(tmp / "logit_effects.safetensors"))
            table.to_parquet(tmp / "features.parquet", index=False)
        live = table[table["density"] > 0]
        summary = live.sort_values("density", ascending=False).head(15)[["feature", "density", "top_token", "top_token_mean", "llr_top_token", "top_logit"]]
        return dg.MaterializeResult(
            data_version=dg.DataVersion(file_sha256(out / "examples.safetensors")),
            metadata={
                "path": dg.MetadataValue.path(str(out)),
                "tokens": ex.tokens,
                "live_features": len(live),
                "median_llr_top_token": float(live["llr_top_token"].median()) if len(live) else float("nan"),
                "top_features_by_density": dg.MetadataValue.md(markdown_table(summary.set_index("feature"))),
                "seconds": round(seconds, 2),
                "tokens_per_second": round(ex.tokens / max(seconds, 1e-9)),
                "device": str(dev),
                "versions": dg.MetadataValue.json(versions()),
            },
        )

    return feature_examples


def _feature_table(ex, tok, top_ids: torch.Tensor) -> pd.DataFrame:
    """One row per feature: density, max activation, top token by mean activation and its LLR, top logit."""
    rows = []
    vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
    for f in range(ex.fired.numel()):
        best = ex.top_tokens(f, n=1, min_count=5) or ex.top_tokens(f, n=1)
        token, mean = (best[0][0], best[0][1]) if best else (-1, float("nan"))
        rows.append({
            "feature": f, "density": float(ex.density[f]), "max_activation": float(ex.top_values[f, 0]),
            "top_token_id": token, "top_token": vocab[token] if token >= 0 else "", "top_token_mean": mean,
            "llr_top_token": feature_llr(ex, f, {token}) if token >= 0 else float("nan"),
            "top_logit": vocab[int(top_ids[f, 0])],
        })
    return pd.DataFrame(rows).astype({"density": np.float64})
