"""Activation patching, path patching, circuits and cross-model activation patching (CMAP), after
Prakash et al. (2024), on TransformerLens `HookedTransformer`s (`hooked.load_hooked_model`).

- `tasks`: the tasks (mined from held-out text or templated) as clean and counterfactual prompts;
- `components`: components and units, their hooks (featureflow_dagster.hooks), running with hooks;
- `circuits`: within one model, activation and path patching, circuits and their faithfulness;
- `cmap`: across the two models of an edge, component by component and SAE feature set by set;
- `report`: one node's circuits and one edge's CMAP over every task, as the assets write them.

Components are block 0's:

  embed   `blocks.0.hook_resid_pre`  the token embeddings (rotary models add no position embedding)
  attn    `blocks.0.hook_attn_out`   the attention block's output
  head.h  head h's output: `blocks.0.attn.hook_z[:, :, h]` within one model (the same W_O on both
          sides); across models its contribution to the residual stream (`hook_result[:, :, h]`,
          z_h W_O_h), because the two models' W_O differ
  mlp     `blocks.0.hook_mlp_out`    the MLP's output
"""

from featureflow_dagster.hooks import HEAD_RESULT, HEAD_Z, MLP_POST
from featureflow_dagster.patching.circuits import (
    Faithfulness, ablated_logits, ablation_means, activation_patching, circuit_from_effects, circuit_universe,
    faithfulness, path_patching
)
from featureflow_dagster.patching.cmap import (
    cmap, cross_cache, cross_hooks, edge_gap, feature_cmap, feature_contribution, feature_sets, feature_summary,
    head_results
)
from featureflow_dagster.patching.components import (
    HOOKS, Unit, cache_names, component_names, final_logits, hook_of, mean_ld, model_metrics, patch_hooks, run_cache
)

__all__ = [
    "HEAD_RESULT", "HEAD_Z", "HOOKS", "MLP_POST", "Faithfulness", "Unit", "ablated_logits", "ablation_means",
    "activation_patching", "cache_names", "circuit_from_effects", "circuit_universe", "cmap", "component_names",
    "cross_cache", "cross_hooks", "edge_gap", "faithfulness", "feature_cmap", "feature_contribution", "feature_sets",
    "feature_summary", "final_logits", "head_results", "hook_of", "mean_ld", "model_metrics", "patch_hooks",
    "path_patching", "run_cache",
]
