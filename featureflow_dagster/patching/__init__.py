"""Activation patching, path patching, circuits and cross-model activation patching (CMAP), after
Prakash et al. (2024), on TransformerLens `HookedTransformer`s (`hooked.load_hooked_model`), at every layer.

- `tasks`: the tasks (mined from held-out text or templated) as clean and counterfactual prompts;
- `components`: components and units (embed, L<l>.attn, L<l>.H<h>, L<l>.mlp, group.<g>), their hooks, running with hooks;
- `circuits`: within one model, activation and path patching, circuits and their faithfulness;
- `cmap`: across the two models of an edge, component by component and SAE feature set by set;
- `report`: one node's circuits and one edge's CMAP over every task, as the assets write them.
"""

from featureflow_dagster.hooks import HEAD_Z, MLP_POST
from featureflow_dagster.patching.circuits import (
    Faithfulness, ablated_logits, ablation_means, activation_patching, circuit_from_effects, circuit_universe,
    faithfulness, path_patching, random_circuit
)
from featureflow_dagster.patching.cmap import (
    cmap, cross_cache, cross_hooks, edge_gap, feature_cmap, feature_contribution, feature_sets, feature_summary,
    w_o_name
)
from featureflow_dagster.patching.components import (
    KINDS, Unit, cache_names, check_components, component_names, expand, final_logits, head_name, hook_of, mean_ld,
    model_metrics, parse_component, patch_hooks, positions, run_cache, split_qkv_inputs
)

__all__ = [
    "HEAD_Z", "KINDS", "MLP_POST", "Faithfulness", "Unit", "ablated_logits", "ablation_means",
    "activation_patching", "cache_names", "check_components", "circuit_from_effects", "circuit_universe", "cmap",
    "component_names", "cross_cache", "cross_hooks", "edge_gap", "expand", "faithfulness", "feature_cmap",
    "feature_contribution", "feature_sets", "feature_summary", "final_logits", "head_name", "hook_of",
    "mean_ld", "model_metrics", "parse_component", "patch_hooks", "path_patching", "positions", "random_circuit",
    "w_o_name", "run_cache", "split_qkv_inputs",
]
