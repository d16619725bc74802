"""Fitting one lineage node's SAE: a fresh dictionary of the node's recipe (`SAESpec`), its input
normalisation from the activation store, training with resumable checkpoints, the evaluations on
the store's held-out windows, the comparison against a random dictionary at the same L0 (the null),
and the quality bars the lineage sets. `checks.json` beside the saved SAE records the bars' outcome;
everything computed from an SAE reads it back (`require_passing`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from featureflow_dagster.activations import ActivationStore
from featureflow_dagster.sae import SAE_REGISTRY, SAEConfig
from featureflow_dagster.sae.base import SAE
from featureflow_dagster.sae.evaluate import SAEEvaluation, CheckOutcome, check_evaluation, evaluate_sae, quality_against_null
from featureflow_dagster.sae.train import SAETrainResult, train_sae
from featureflow_dagster.hooks import MLP_POST

CHECKS_FILE = "checks.json"
DENSITY_FILE = "feature_density.safetensors"


class FailedQualityChecks(RuntimeError):
    """An SAE that failed a quality bar of its lineage, asked to feed something computed from it."""


def new_sae(spec, d_in: int, context: int, model_name: str, seed: int, hook_name: str = MLP_POST) -> SAE:
    """An untrained SAE of the recipe `spec` (`SAESpec`) on `d_in`-dimensional activations at `hook_name`."""
    cfg = SAEConfig(architecture=spec.architecture, d_in=d_in, d_sae=spec.expansion * d_in, k=spec.k,
                    hook_name=hook_name, context_size=context, model_name=model_name)
    if spec.architecture == "relu":
        extra = {"l1_coefficient": spec.l1_coefficient, "decoder_constraint": spec.decoder_constraint}
    else:
        extra = {"aux_k_coefficient": spec.aux_k_coefficient}
    return SAE_REGISTRY[spec.architecture](cfg, seed=seed, **extra)


def eval_windows(acts: ActivationStore) -> torch.Tensor:
    """The token windows [n, context] of the store's eval split."""
    return torch.cat([s["tokens"] for s in acts.iter_shards("eval", ("tokens",))])


@dataclass
class FittedSAE:
    sae: SAE
    training: SAETrainResult
    evaluation: SAEEvaluation
    values: dict[str, float]  # the evaluation's scalars and the null comparison: what the bars judge
    checks: dict[str, CheckOutcome]  # the configured bars, by name


def training_form(sae: SAE, unit_norm_decoder: bool) -> dict[str, torch.Tensor]:
    """The state of `sae` as training holds it: decoder rows at unit norm, the input scale s beside them.

    A saved and loaded SAE has its scale and data mean folded in (W_enc·s, W_dec/s, b_dec/s + mean;
    `SAE.saelens_state`), so its rows have norm 1/s: training from it as is would renormalise every row to 1
    and scale every reconstruction by s. Unfolded with data_mean 0 and input_scale s, where s is read off
    the rows (1 for a free decoder, whose rows carry no scale): the same function, in training's units."""
    state = {k: v.detach().to("cpu").clone() for k, v in sae.state_dict().items()}
    folded = float(state["input_scale"]) == 1.0 and not bool(state["data_mean"].any())
    if not (folded and unit_norm_decoder):
        return state
    s = float(1.0 / state["W_dec"].norm(dim=1).median())
    state["W_enc"], state["W_dec"], state["b_dec"] = state["W_enc"] / s, state["W_dec"] * s, state["b_dec"] * s
    state["input_scale"] = torch.tensor(s, dtype=state["input_scale"].dtype)
    return state


def fit_sae(spec, acts: ActivationStore, model, seed: int, device: torch.device, model_name: str,
            checkpoint_path: Path | None = None, log: Callable[[str], None] | None = None, init: SAE | None = None) -> FittedSAE:
    """Train an SAE of recipe `spec` on the store's train split (resuming from `checkpoint_path` when it
    holds this very configuration), evaluate it through `model` on the eval windows, and judge it
    against the random-dictionary null and the recipe's bars.

    With `init` (a trained SAE of the same architecture and size, e.g. the parent's) training starts from its
    weights as saved (its centring and scale folded in) instead of a random dictionary: a warm start. Its
    `decoder_init_cosine` then measures how far the rows turned from `init`'s, so that bar is not applied."""
    autoencoder = new_sae(spec, acts.d_in, acts.context, model_name, seed, acts.hook_name)
    if init is not None:
        if (init.cfg.architecture, init.cfg.d_in, init.cfg.d_sae) != (autoencoder.cfg.architecture, acts.d_in, autoencoder.cfg.d_sae):
            raise ValueError(f"{model_name}: a warm start needs an SAE of the same architecture and size; got "
                             f"{init.cfg.architecture} {init.cfg.d_in}x{init.cfg.d_sae}, the recipe makes "
                             f"{autoencoder.cfg.architecture} {acts.d_in}x{autoencoder.cfg.d_sae}")
        autoencoder.load_state_dict(training_form(init, autoencoder.unit_norm_decoder))
        spec = spec.model_copy(update={"checks": spec.checks.model_copy(update={"decoder_init_cosine_max": None})})
    else:
        if spec.subtract_data_mean:
            autoencoder.data_mean.copy_(acts.mean("train"))
        if spec.normalize_activations == "expected_average_only_in":
            autoencoder.input_scale.fill_(acts.d_in**0.5 / acts.mean_norm("train", autoencoder.data_mean))
    w_dec_init = autoencoder.W_dec.detach().clone()
    steps = acts.steps("train", spec.batch_windows, spec.epochs)
    if steps == 0:
        raise ValueError(f"{model_name}: the store holds fewer windows than one batch of {spec.batch_windows}; "
                         "lower sae.batch_windows or raise sae.tokens")
    fingerprint = f"{json.dumps(spec.model_dump(), sort_keys=True)}|{acts.manifest['splits']['train']['shards'][0]['sha256']}|{seed}"
    if init is not None:
        fingerprint += f"|warm:{float(w_dec_init.double().sum()):.17g}|{float(autoencoder.input_scale):.17g}"  # the start as trained from
    result = train_sae(
        autoencoder, lambda start: acts.batches("train", spec.batch_windows, seed, spec.epochs, start), steps,
        spec.lr, (spec.beta1, spec.beta2), device, seed=seed, dead_window_tokens=spec.dead_window_tokens,
        resample_dead_every=spec.resample_dead_every, checkpoint_path=checkpoint_path,
        checkpoint_every=spec.checkpoint_every, fingerprint=fingerprint, log=log,
        lr_warmup_steps=round(spec.lr_warmup_fraction * steps), lr_decay_steps=round(spec.lr_decay_fraction * steps),
        sparsity_warmup_steps=round(spec.l1_warmup_fraction * steps),
    )
    autoencoder.eval()
    ev = evaluate_sae(autoencoder, model, eval_windows(acts), device, ultra_low_density=spec.ultra_low_density)
    values = {**ev.scalars(), **quality_against_null(autoencoder, w_dec_init, acts, ev.l0, seed, device)}
    return FittedSAE(autoencoder, result, ev, values, {c.name: c for c in check_evaluation(values, spec.checks)})


def judge_published(autoencoder: SAE, spec, acts: ActivationStore, model, seed: int, device: torch.device) -> FittedSAE:
    """A published SAE (`sae.published`) through what a trained one passes: the evaluations through `model` on the
    store's held-out windows, the random-dictionary null at its L0, and the recipe's bars (all but the decoder's
    turn from its random start, which a published SAE does not have)."""
    autoencoder = autoencoder.to(device).eval()
    spec = spec.model_copy(update={"checks": spec.checks.model_copy(update={"decoder_init_cosine_max": None})})
    ev = evaluate_sae(autoencoder, model, eval_windows(acts), device, ultra_low_density=spec.ultra_low_density)
    values = {**ev.scalars(), **quality_against_null(autoencoder, autoencoder.W_dec.detach().clone(), acts, ev.l0, seed, device)}
    values.pop("decoder_init_cosine", None)  # against itself: 1 by construction, not a measurement
    return FittedSAE(autoencoder, SAETrainResult(0, 0, 0.0), ev, values, {c.name: c for c in check_evaluation(values, spec.checks)})


def save_fitted(fitted: FittedSAE, folder: Path) -> None:
    """The SAE in the SAELens layout, its feature densities and its bars' outcomes (`checks.json`)."""
    fitted.sae.to("cpu").save(folder)
    save_file({"density": fitted.evaluation.density}, str(folder / DENSITY_FILE))
    (folder / CHECKS_FILE).write_text(json.dumps({c.name: {"passed": c.passed, "value": c.value, "bound": c.bound}
                                                  for c in fitted.checks.values()}, indent=1))


def failed_checks(folder: Path) -> dict[str, dict]:
    """The bars the SAE saved in `folder` failed ({} when it passed them all). A missing or unreadable
    `checks.json` is an error: every SAE featureflow writes has one."""
    path = Path(folder) / CHECKS_FILE
    try:
        checks = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing, so whether this SAE passed its quality checks is unknown; "
                                "materialize its sae partition again") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({e}); materialize its sae partition again") from None
    return {k: v for k, v in checks.items() if not v["passed"]}


def require_passing(folders: dict[str, Path]) -> None:
    """Raise FailedQualityChecks (naming the node and the failed bars) when an SAE of `folders`
    ({node: SAE folder}) failed a quality check: a failing SAE feeds no transfer, correlation or flow."""
    for node, folder in folders.items():
        failed = failed_checks(folder)
        if failed:
            detail = ", ".join(f"{k} (value {v['value']:.4g}, bound {v['bound']})" for k, v in failed.items())
            raise FailedQualityChecks(
                f"the SAE of node '{node}' failed its quality checks: {detail}; fix its `sae:` settings "
                f"and materialize sae[{node}] again before anything is computed from it")
