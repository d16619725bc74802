"""The lineage file: a YAML declaration of models (a base, its fine-tunes, merges of those).

A lineage is validated completely before any compute: the schema by pydantic, the graph by
`validate_graph` (cycles, unknown or duplicate nodes, parent counts per kind, common ancestors of
merge parents, architecture agreement along edges, local paths that exist). Every problem raises
`LineageError` naming the file, the node and the field, and saying what would fix it.

Shipped lineages live in `featureflow_dagster/lineages/<name>.yaml`; `resolve_lineage_path` turns
`FEATUREFLOW_LINEAGE` (a shipped name or a path) into a file.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import zlib
from functools import cached_property
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

DEFAULT_LINEAGE = "demo"
# entity tracking's default objects and box labels (featureflow_dagster.tasks); here so that reading a lineage needs no torch
ENTITY_OBJECTS = ["apple", "book", "bottle", "car", "cat", "chair", "clock", "coat", "cup", "dog", "door",
                  "egg", "fish", "flower", "glass", "hat", "key", "lamp", "letter", "map", "milk", "paper", "pen",
                  "phone", "plate", "ring", "shoe", "stone", "table", "toy", "watch"]
ENTITY_BOXES = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
SHIPPED_LINEAGES = ("micro", "demo", "paper", "paper-small")


class LineageError(ValueError):
    """A lineage file that cannot be run, with the file, node and field at fault."""

    def __init__(self, file: str | Path, node: str | None, field: str | None, problem: str):
        self.file, self.node, self.field, self.problem = str(file), node, field, problem
        where = [f"{file}"]
        if node is not None:
            where.append(f"node '{node}'")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join(where)}: {problem}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Data sources
# ---------------------------------------------------------------------------------------------


class _SourceBase(_Strict):
    name: str = Field(description="Domain label (e.g. 'python', 'lua'): the key of this source's validation metrics.")
    tokens: int | None = Field(
        default=None, gt=0, description="Training-token budget for this source (absolute)."
    )
    weight: float | None = Field(
        default=None,
        gt=0,
        description="Share of the node's `data.tokens` budget left after absolute budgets (relative).",
    )
    validation_fraction: float = Field(
        default=0.05, gt=0, lt=0.5, description="Fraction of documents held out, chosen by content hash."
    )
    max_documents: int | None = Field(default=None, gt=0, description="Read at most this many documents.")
    expected_tokens: int | None = Field(
        default=None, gt=0, description="Planning only (`featureflow plan`): the training tokens this source "
        "holds, for sources the planner cannot read (a hub data set); changes nothing that is computed.")

    @model_validator(mode="after")
    def _budget_or_weight(self):
        if self.tokens is not None and self.weight is not None:
            raise ValueError("give either 'tokens' (an absolute budget) or 'weight' (a share), not both")
        return self


class HFSource(_SourceBase):
    """A Hugging Face data set, read with `datasets.load_dataset` (a hub name or a local folder)."""

    kind: Literal["hf"]
    path: str = Field(description="Hub data set name (e.g. 'nilq/small-lua-stack') or a local folder.")
    subset: str | None = Field(default=None, description="The data set's configuration name.")
    split: str = "train"
    text_column: str = "text"
    streaming: bool = False

    def local_path(self) -> Path | None:
        """The folder this source names when it is local, else None (a hub name)."""
        p = Path(os.path.expanduser(self.path))
        if p.is_absolute() or self.path.startswith((".", "~")):
            return p
        return None


class FilesSource(_SourceBase):
    """Local text or code files, by glob (`**` recurses). Each file is a document."""

    kind: Literal["files"]
    paths: list[str] = Field(min_length=1)
    encoding: str = "utf-8"

    def matched_files(self) -> list[Path]:
        found: set[str] = set()
        for pattern in self.paths:
            found.update(
                f for f in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(f)
            )
        return [Path(f) for f in sorted(found)]


class StdlibSource(_SourceBase):
    """Text every Python installation carries.

    what: 'source' (standard-library `.py` files), 'docs' (the interpreter's English
    documentation in `pydoc_data/topics.py`, one document per topic) or 'docstrings'
    (module, class and function docstrings of the standard library, one document each).
    include/exclude: globs relative to the standard-library folder, for 'source' and 'docstrings'.
    """

    kind: Literal["stdlib"]
    what: Literal["source", "docs", "docstrings"]
    include: list[str] = Field(default_factory=lambda: ["**/*.py"])
    exclude: list[str] = Field(default_factory=list)


Source = Annotated[Union[HFSource, FilesSource, StdlibSource], Field(discriminator="kind")]


class DataSpec(_Strict):
    tokens: int | None = Field(
        default=None, gt=0, description="Total training tokens shared by the sources that give a 'weight'."
    )
    validation_tokens: int = Field(default=32768, gt=0, description="Validation tokens kept per source.")
    sources: list[Source] = Field(min_length=1)

    @model_validator(mode="after")
    def _budgets(self):
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique within a node; repeated: {dupes}")
        if any(s.weight is not None for s in self.sources) and self.tokens is None:
            raise ValueError("sources with a 'weight' need the node's 'data.tokens' total to share")
        return self

    def source_budgets(self) -> dict[str, int | None]:
        """Training-token budget per source name; None means 'all the source has'."""
        absolute = sum(s.tokens for s in self.sources if s.tokens is not None)
        weighted = [s for s in self.sources if s.weight is not None]
        total_weight = sum(s.weight for s in weighted)
        remaining = (self.tokens or 0) - absolute
        budgets: dict[str, int | None] = {}
        for s in self.sources:
            if s.tokens is not None:
                budgets[s.name] = s.tokens
            elif s.weight is not None:
                budgets[s.name] = max(1, int(remaining * s.weight / total_weight))
            else:
                budgets[s.name] = None
        return budgets


# ---------------------------------------------------------------------------------------------
# Tokenizer, model and training configuration
# ---------------------------------------------------------------------------------------------


class TokenizerSpec(_Strict):
    """'bpe': a byte-level BPE trained on the base node's training documents.
    'mistral': the Mistral-7B v0.1 SentencePiece model shipped in the mistral-common wheel.
    'pretrained': a Hugging Face tokenizer folder on local disk."""

    kind: Literal["bpe", "mistral", "pretrained"] = "bpe"
    vocab_size: int = Field(default=4096, ge=260)
    max_training_chars: int = Field(default=20_000_000, gt=0)
    path: str | None = None

    @model_validator(mode="after")
    def _path_for_pretrained(self):
        if self.kind == "pretrained" and not self.path:
            raise ValueError("tokenizer kind 'pretrained' needs 'path' (a Hugging Face tokenizer folder)")
        return self


class ModelSpec(_Strict):
    """A Mistral-like decoder (RMSNorm, rotary positions, gated SiLU MLP).

    Dimension names follow TransformerLens: d_model, d_mlp, n_heads, n_ctx."""

    d_model: int = Field(gt=0)
    d_mlp: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_kv_heads: int | None = Field(default=None, gt=0)
    n_layers: int = Field(default=1, gt=0)
    n_ctx: int = Field(gt=1, description="Context length and training block length in tokens.")
    rope_theta: float = Field(default=10000.0, gt=0)
    rms_norm_eps: float = Field(default=1e-6, gt=0)
    tie_word_embeddings: bool = False

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % (self.n_kv_heads or self.n_heads):
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        return self


class TrainingSpec(_Strict):
    """AdamW with linear warm-up and cosine decay to `min_lr_ratio * lr`."""

    batch_size: int = Field(default=16, gt=0, description="Blocks per optimizer step.")
    lr: float = Field(default=6e-4, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=10, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, gt=0, lt=1)
    beta2: float = Field(default=0.95, gt=0, lt=1)
    grad_clip: float = Field(default=1.0, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    checkpoint_every: int = Field(default=100, gt=0, description="Steps between resumable checkpoints.")
    dtype: Literal["float32", "bfloat16"] = "float32"
    eval_batch_size: int = Field(default=32, gt=0)


class SweepSpec(_Strict):
    """The grid of a SLERP `t: auto` sweep and how much validation data each point is scored on."""

    start: float = Field(default=0.0, ge=0, le=1)
    stop: float = Field(default=1.0, ge=0, le=1)
    step: float = Field(default=0.02, gt=0, le=1)
    eval_tokens: int = Field(default=16384, gt=0, description="Validation tokens per domain at every t.")

    @model_validator(mode="after")
    def _ordered(self):
        if self.stop <= self.start:
            raise ValueError(f"sweep stop ({self.stop}) must be above start ({self.start})")
        return self

    def grid(self) -> list[float]:
        n = int(round((self.stop - self.start) / self.step))
        points = [round(self.start + i * self.step, 10) for i in range(n + 1)]
        return [p for p in points if p <= self.stop + 1e-12]


class MergeSpec(_Strict):
    """How a merge node combines its parents (mergekit's methods and parameter names).

    slerp: exactly two parents; t = 0 gives the first parent, t = 1 the second; `t: auto` sweeps
    `sweep` and keeps the t where the parents' own-domain accuracies balance.
    linear: weighted average of the parents (`weights`, default equal; `normalize`).
    task_arithmetic / ties / dare_ties / dare_linear: base + sum_i weight_i (parent_i - base), with
    TIES sign consensus and `density` trimming, or DARE random drops (seeded by the node's seed).
    `base` (default: the parents' nearest common ancestor) is the task-arithmetic base and, for
    slerp, the ancestor whose accuracies the sweep shows as baselines."""

    method: Literal["slerp", "linear", "task_arithmetic", "ties", "dare_ties", "dare_linear"] = "slerp"
    t: float | Literal["auto"] | None = None
    weights: list[float] | None = None
    density: float | None = Field(default=None, gt=0, le=1)
    normalize: bool | None = None
    base: str | None = None
    sweep: SweepSpec = Field(default_factory=SweepSpec)

    @model_validator(mode="after")
    def _parameters_per_method(self):
        if self.method == "slerp":
            if self.weights is not None or self.density is not None:
                raise ValueError("slerp takes 't' (a number in [0, 1] or 'auto'), not weights or density")
            if isinstance(self.t, float) and not 0 <= self.t <= 1:
                raise ValueError(f"slerp t must lie in [0, 1]; got {self.t}")
        elif self.t is not None:
            raise ValueError(f"'t' belongs to slerp; {self.method} takes 'weights'")
        if self.density is not None and self.method not in ("ties", "dare_ties", "dare_linear"):
            raise ValueError(f"'density' belongs to ties and dare merges, not {self.method}")
        if self.base is not None and self.method == "linear":
            raise ValueError("a linear merge has no base")
        return self

    @property
    def slerp_t(self) -> float | Literal["auto"]:
        return "auto" if self.t is None else self.t


class SAEChecks(_Strict):
    """Quality bars for a node's SAE, run as Dagster asset checks (paper: 25 <= L0 <= 35,
    MSE < 0.0067, explained variance > 0.88)."""

    l0_min: float | None = Field(default=None, ge=0)
    l0_max: float | None = Field(default=None, gt=0)
    mse_max: float | None = Field(default=None, gt=0)
    explained_variance_min: float | None = Field(default=None, le=1)
    dead_fraction_max: float | None = Field(default=None, ge=0, le=1)
    loss_recovered_min: float | None = Field(default=None, le=1)
    decoder_init_cosine_max: float | None = Field(
        default=None, ge=-1, le=1, description="Median cosine of trained decoder rows to their random initialisation.")
    top_token_share_margin_min: float | None = Field(
        default=None, ge=-1, le=1,
        description="Median share of a feature's top-20 held-out activations on its most common token, minus the same "
        "for a random dictionary encoded at the SAE's L0 (features, not random directions).")


class SAESpec(_Strict):
    """Activation store and sparse autoencoder of a node (Horn & Elliott 2024, Bricken et al. 2023).

    The store holds `blocks.0.mlp.hook_post` over `context`-token windows sampled uniformly from the
    training data of the node and all its ancestors: `tokens` for training, `eval_tokens` (from
    validation data) for the evaluations."""

    architecture: Literal["relu", "topk", "batchtopk"] = "relu"
    expansion: int = Field(default=16, gt=0, description="d_sae = expansion * d_mlp")
    k: int | None = Field(default=None, gt=0, description="topk/batchtopk: active features per token")
    l1_coefficient: float = Field(default=3e-4, ge=0, description="relu: λ, in the units of the (normalised) activations.")
    decoder_constraint: Literal["unit_norm", "free"] = Field(
        default="unit_norm",
        description="relu: 'unit_norm' (the paper's: decoder rows held at norm 1) or 'free' (Anthropic's April 2024 "
        "update, SAELens's standard trainer: rows start at norm 0.1, move freely, L1 weighted by row norm).")
    aux_k_coefficient: float = Field(default=1 / 32, ge=0, description="topk/batchtopk: weight of the AuxK dead-latent loss (Gao et al. 2024).")
    normalize_activations: Literal["none", "expected_average_only_in"] = Field(
        default="none",
        description="'expected_average_only_in': scale the centred activations to mean norm sqrt(d_in) (SAELens's "
        "name), so that λ means the same for every model; folded into the saved weights.")
    lr: float = Field(default=1e-4, gt=0)
    lr_warmup_fraction: float = Field(default=0.0, ge=0, lt=1, description="Linear lr warm-up over this share of the steps.")
    lr_decay_fraction: float = Field(default=0.0, ge=0, le=1, description="Linear lr decay to 0 over this final share of the steps.")
    l1_warmup_fraction: float = Field(default=0.0, ge=0, le=1, description="relu: λ rises linearly from 0 over this share of the steps.")
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.9999, ge=0, lt=1)
    batch_windows: int = Field(default=128, gt=0, description="Shuffled context-token windows per step.")
    context: int = Field(default=24, gt=1)
    tokens: int = Field(default=15_000_000, gt=0, description="Training tokens in the store.")
    eval_tokens: int = Field(default=98_304, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    store_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    shard_tokens: int = Field(default=262_144, gt=0)
    subtract_data_mean: bool = True
    resample_dead_every: int | None = Field(default=None, gt=0, description="Steps between dead-feature resamplings.")
    dead_window_tokens: int = Field(default=1_000_000, gt=0, description="Unfired for this many tokens = dead.")
    ultra_low_density: float = Field(default=1e-5, gt=0, lt=1)
    checkpoint_every: int = Field(default=500, gt=0)
    checks: SAEChecks = Field(default_factory=SAEChecks)
    init: Literal["independent", "shared"] = Field(
        default="independent",
        description="'independent': the node's name is mixed into its seed, so every SAE starts from its own random "
        "dictionary (and batch order); 'shared': the node's seed alone, so nodes with the same seed start from the "
        "same dictionary, which lines features up by index across models and flatters matching.",
    )

    @model_validator(mode="after")
    def _k_for_topk(self):
        if self.architecture in ("topk", "batchtopk") and self.k is None:
            raise ValueError(f"a {self.architecture} SAE needs 'k' (active features per token)")
        if self.architecture != "relu" and self.decoder_constraint != "unit_norm":
            raise ValueError(f"decoder_constraint '{self.decoder_constraint}' is a relu setting; a {self.architecture} SAE keeps unit-norm decoder rows")
        if self.lr_warmup_fraction + self.lr_decay_fraction > 1:
            raise ValueError("lr_warmup_fraction + lr_decay_fraction must not exceed 1")
        return self


class ExamplesSpec(_Strict):
    """Evidence per SAE feature (`feature_examples`): one pass over held-out windows of the node's data
    ancestry, in the SAE's context length."""

    tokens: int = Field(default=200_000, gt=0, description="Held-out tokens encoded per node (fewer if the data holds fewer).")
    top_k: int = Field(default=20, gt=0, description="Top activating contexts kept per feature.")
    samples: int = Field(default=64, gt=0, description="Random non-zero activations kept per feature, for quantile groups.")
    batch_windows: int = Field(default=64, gt=0, description="Windows per forward pass.")
    logit_k: int = Field(default=10, gt=0, description="Top and bottom direct-path logit effects kept per feature.")
    case_min_fired: int = Field(default=20, gt=0, description="Case studies: a disappearing feature is a candidate only "
                                "when it fired on at least this many held-out tokens (a rarer one's LLR says little).")


class AutointerpSpec(_Strict):
    """Automated interpretability (`autointerp` asset, Bills et al. 2023): off unless `enabled`. Any
    OpenAI-compatible server; the API key is read from the environment variable `api_key_env` at run
    time, never from this file."""

    enabled: bool = Field(default=False, description="Explain and score features with an LLM (needs a server).")
    base_url: str = Field(default="http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint, ending in /v1.")
    model: str = Field(default="", description="Model name as the server lists it (required when enabled).")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable holding the API key.")
    features_per_node: int = Field(default=50, gt=0, description="Features explained per node (all persisting ones "
                                   "up to half of this, and as many others), chosen by a seeded rule.")
    explain_records: int = Field(default=10, gt=0, description="Top contexts the explainer reads per feature.")
    score_records: int = Field(default=10, gt=0, description="Held-out contexts simulated per feature (top and quantile samples).")
    scorers: list[Literal["simulation", "detection", "fuzzing"]] = Field(
        default=["simulation"], min_length=1, description="simulation (Bills et al., one request per held-out context), "
        "detection and fuzzing (delphi's, one request per feature each; balanced accuracy).")
    prompt_usd_per_mtok: float = Field(default=0.0, ge=0, description="Price of a million prompt tokens, for the cap.")
    completion_usd_per_mtok: float = Field(default=0.0, ge=0, description="Price of a million completion tokens.")
    max_usd: float = Field(default=1.0, ge=0, description="Refuse to start when the estimated cost of a node exceeds this.")
    max_requests: int = Field(default=2000, gt=0, description="Refuse to start when a node would need more requests.")
    timeout: float = Field(default=60.0, gt=0, description="Seconds per request.")
    max_in_flight: int = Field(default=4, gt=0, description="Requests in flight at once.")
    retries: int = Field(default=5, ge=0, description="Retries of a request on 429, 5xx, timeouts.")

    @model_validator(mode="after")
    def _model_when_enabled(self) -> "AutointerpSpec":
        if self.enabled and not self.model:
            raise ValueError("autointerp.enabled needs autointerp.model (the model name the server lists)")
        return self


class TaskSpec(_Strict):
    """One task for circuits and cross-model activation patching (`featureflow_dagster.tasks`)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Lower-case identifier; names the task's files and plots.")
    kind: Literal["close_bracket", "close_quote", "copy_identifier", "entity_tracking"] = Field(
        description="close_bracket / close_quote / copy_identifier: mined from the base node's held-out text; "
        "entity_tracking: Prakash et al.'s templated task (needs single-token objects and box labels).")
    examples: int = Field(default=128, gt=1, description="Examples drawn (balanced over answers where the text allows).")
    length: int = Field(default=16, gt=1, description="Prompt length in tokens (mined tasks); at most the model's n_ctx.")
    min_examples: int = Field(default=16, gt=1, description="Refuse when the held-out text yields fewer examples.")
    seed: int | None = Field(default=None, description="Default: the lineage seed.")
    n_objects: int = Field(default=3, ge=2, description="entity_tracking: objects (and boxes) per prompt.")
    objects: list[str] = Field(default_factory=lambda: list(ENTITY_OBJECTS), min_length=2,
                               description="entity_tracking: object words (each ' word' one token).")
    boxes: list[str] = Field(default_factory=lambda: list(ENTITY_BOXES), min_length=2,
                             description="entity_tracking: box labels (each ' label' one token).")


class PatchingSpec(_Strict):
    """Within-model activation and path patching, circuits and CMAP (Prakash et al. 2024) on `tasks:`."""

    components: list[Literal["embed", "attn", "heads", "mlp"]] = Field(
        default=["embed", "attn", "heads", "mlp"], min_length=1,
        description="Block 0's components patched: token embeddings, attention output, each head, MLP output.")
    circuit_threshold: float = Field(default=0.1, gt=0, description="A head or MLP unit (one position) joins a task's "
                                     "circuit when patching it alone recovers at least this share of the clean-corrupt gap.")
    random_circuits: int = Field(default=20, ge=0, description="Random circuits of the same size drawn for the faithfulness null.")
    feature_null_draws: int = Field(default=10, ge=0, description="Random feature sets (of the emerged/disappearing sizes) "
                                    "patched per edge and task: the null of feature-level CMAP.")
    min_gap_se: float = Field(default=2.0, ge=0, description="CMAP shares are reported only when an edge's parent-child "
                              "gap is at least this many standard errors from zero (else the share of nothing is noise).")
    batch: int = Field(default=256, gt=0, description="Examples per forward pass.")


class FlowSpec(_Strict):
    """Feature flow between every parent and child (Horn & Elliott 2024, §3): both SAEs encode the
    same `tokens` tokens, `context`-token windows drawn uniformly from the training data the two
    models share (the parent's data ancestry); Pearson r over token positions decides persistence."""

    tokens: int = Field(default=3_000_000, gt=0, description="Tokens both SAEs encode per edge (paper: 3M).")
    context: int | None = Field(default=None, gt=1, description="Window length; default: the parent SAE's context.")
    threshold: float = Field(default=0.8, gt=0, lt=1, description="A feature persists when some partner's r exceeds this.")
    top_k: int = Field(default=5, gt=0, description="Best partners kept per feature, each way, per method.")
    chunk_tokens: int = Field(default=262_144, gt=0, description="Tokens per code chunk file (and correlation chunk).")
    batch_windows: int = Field(default=64, gt=0, description="Windows per forward pass while encoding.")
    row_block: int = Field(default=4096, gt=0, description="Features per block of the cross-moment (memory: block x d_sae float64).")
    full_matrix: bool = Field(default=False, description="Also write the full [parent, child] r matrix (float32; 1 GiB at 16384^2).")
    seed_offset: int = Field(default=1, description="Window sampling seed = child seed + this (differs from the stores' draw).")


# ---------------------------------------------------------------------------------------------
# Nodes and the lineage
# ---------------------------------------------------------------------------------------------


class NodeSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Lower-case identifier; also the partition key.")
    kind: Literal["base", "finetune", "merge"]
    parents: list[str] = Field(default_factory=list)
    data: DataSpec | None = None
    model: ModelSpec | None = None
    training: TrainingSpec | None = None
    merge: MergeSpec | None = None
    sae: SAESpec | None = None
    seed: int | None = None
    description: str = ""

    @model_validator(mode="after")
    def _fields_per_kind(self):
        if self.kind in ("base", "finetune") and self.data is None:
            raise ValueError(f"a {self.kind} node needs 'data' (its training sources)")
        if self.kind == "merge" and self.data is not None:
            raise ValueError("a merge node trains on nothing; remove 'data'")
        if self.kind != "merge" and self.merge is not None:
            raise ValueError(f"'merge' settings belong to merge nodes, not to a {self.kind} node")
        if "__" in self.name:
            raise ValueError("node names may not contain '__' (it separates parent and child in edge keys)")
        return self


class Lineage(_Strict):
    name: str
    description: str = ""
    seed: int = 0
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    model: ModelSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    sae: SAESpec = Field(default_factory=SAESpec)
    flow: FlowSpec = Field(default_factory=FlowSpec)
    examples: ExamplesSpec = Field(default_factory=ExamplesSpec)
    autointerp: AutointerpSpec = Field(default_factory=AutointerpSpec)
    tasks: list[TaskSpec] = Field(default_factory=list, description="Tasks for circuits and CMAP; none: those assets are not built.")
    patching: PatchingSpec = Field(default_factory=PatchingSpec)
    schedule: str | None = Field(
        default=None,
        pattern=r"^\s*\S+\s+\S+\s+\S+\s+\S+\s+\S+\s*$",
        description="Cron string (5 fields, UTC), e.g. '0 3 * * *': while the Dagster daemon runs (featureflow ui), "
        "re-observe the lineage file and materialize whatever is missing or stale. Default: off.",
    )
    nodes: list[NodeSpec] = Field(min_length=1)

    # -- graph queries (valid only after validate_graph) ---------------------------------------

    @cached_property
    def by_name(self) -> dict[str, NodeSpec]:
        return {n.name: n for n in self.nodes}

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.topological_order()]

    @property
    def base(self) -> NodeSpec:
        return next(n for n in self.nodes if n.kind == "base")

    def node(self, name: str) -> NodeSpec:
        try:
            return self.by_name[name]
        except KeyError:
            raise KeyError(f"lineage '{self.name}' has no node '{name}'; nodes: {sorted(self.by_name)}") from None

    def children(self, name: str) -> list[str]:
        return [n.name for n in self.nodes if name in n.parents]

    def edges(self) -> list[tuple[str, str]]:
        """(parent, child) pairs in topological order of the child."""
        return [(p, n.name) for n in self.topological_order() for p in n.parents]

    def ancestors(self, name: str) -> list[str]:
        """All ancestors of a node (not the node), nearest first, each once."""
        seen: list[str] = []
        frontier = list(self.node(name).parents)
        while frontier:
            nxt = []
            for p in frontier:
                if p not in seen:
                    seen.append(p)
                    nxt.extend(self.node(p).parents)
            frontier = nxt
        return seen

    def descendants(self, name: str) -> list[str]:
        return [n for n in self.node_names if name in self.ancestors(n)]

    def depth(self, name: str) -> int:
        """Longest path from the base: 0 for the base, 1 + max over parents otherwise."""
        parents = self.node(name).parents
        return 0 if not parents else 1 + max(self.depth(p) for p in parents)

    def nearest_common_ancestor(self, names: list[str]) -> str | None:
        """The deepest node that is an ancestor-or-self of every node in `names`; None when there is
        none, or when several are equally near (validation then asks for an explicit `merge.base`)."""
        nearest = self.nearest_common_ancestors(names)
        return nearest[0] if len(nearest) == 1 else None

    def nearest_common_ancestors(self, names: list[str]) -> list[str]:
        """All common ancestors-or-self of `names` at the greatest depth (more than one when ambiguous)."""
        common = None
        for n in names:
            line = {n, *self.ancestors(n)}
            common = line if common is None else common & line
        if not common:
            return []
        deepest = max(self.depth(n) for n in common)
        return sorted(n for n in common if self.depth(n) == deepest)

    def topological_order(self) -> list[NodeSpec]:
        order: list[NodeSpec] = []
        placed: set[str] = set()
        pending = list(self.nodes)
        while pending:
            ready = [n for n in pending if all(p in placed for p in n.parents)]
            if not ready:
                raise RuntimeError("topological_order on an unvalidated lineage with a cycle")
            for n in ready:
                order.append(n)
                placed.add(n.name)
            pending = [n for n in pending if n.name not in placed]
        return order

    def merge_spec(self, name: str) -> MergeSpec:
        node = self.node(name)
        if node.kind != "merge":
            raise ValueError(f"node '{name}' is a {node.kind} node, not a merge")
        return node.merge or MergeSpec()

    def merge_base(self, name: str) -> str:
        """The base of a task-arithmetic-family merge: `merge.base`, else the parents' nearest common ancestor."""
        spec = self.merge_spec(name)
        return spec.base or self.nearest_common_ancestor(self.node(name).parents)

    def model_spec(self, name: str) -> ModelSpec:
        return self.node(name).model or self.model

    def sae_spec(self, name: str) -> SAESpec:
        return self.node(name).sae or self.sae

    def sae_seed(self, name: str) -> int:
        """Seed of a node's SAE initialisation and batch order (see SAESpec.init)."""
        seed = self.seed_of(name)
        if self.sae_spec(name).init == "independent":
            seed = (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31
        return seed

    def data_ancestry(self, name: str) -> list[str]:
        """The node and its ancestors that carry training data (a merge: the union of its parents'
        ancestries), in topological order: the data an activation store samples from."""
        members = {name, *self.ancestors(name)}
        return [n for n in self.node_names if n in members and self.node(n).data is not None]

    def flow_context(self, parent: str) -> int:
        return self.flow.context or self.sae_spec(parent).context

    def shared_data(self, parent: str, child: str) -> list[str]:
        """Data-carrying nodes both models were trained on (their ancestries' intersection, in
        topological order): where an edge's feature activations are drawn from."""
        theirs = set(self.data_ancestry(child))
        return [n for n in self.data_ancestry(parent) if n in theirs]

    def training_spec(self, name: str) -> TrainingSpec:
        return self.node(name).training or self.training

    def seed_of(self, name: str) -> int:
        node = self.node(name)
        return self.seed if node.seed is None else node.seed

    def domains(self, name: str) -> list[str]:
        """Data-source names a node is evaluated on: its own, or for a merge its parents' domains."""
        node = self.node(name)
        if node.data is not None:
            return [s.name for s in node.data.sources]
        out: list[str] = []
        for p in node.parents:
            out.extend(d for d in self.domains(p) if d not in out)
        return out

    def domain_owner(self, name: str, domain: str) -> str:
        """The node whose data defines `domain` as seen from `name` (itself or its nearest ancestor)."""
        for candidate in [name, *self.ancestors(name)]:
            data = self.node(candidate).data
            if data is not None and any(s.name == domain for s in data.sources):
                return candidate
        raise KeyError(f"node '{name}' has no domain '{domain}'")

    def edge_activation_settings(self, parent: str, child: str) -> dict:
        """How an edge's feature activations are drawn: token count, window, chunking, seed, data."""
        f = self.flow
        return {"tokens": f.tokens, "context": self.flow_context(parent), "chunk_tokens": f.chunk_tokens,
                "seed": self.seed_of(child) + f.seed_offset, "shared_data": self.shared_data(parent, child)}

    def config_versions(self) -> dict[str, str]:
        """A version per asset partition, `<asset>/<partition>` (`tokenizer` and `feature_flow` alone), from
        exactly the settings that change that partition's bytes; upstream artefacts enter through
        their own content-hash data versions, not here. Editing one node's `sae:` changes only
        `activation_store/<node>` (when a store setting moved) and `sae/<node>`, and so on."""
        out = {"tokenizer": self.tokenizer.model_dump(mode="json"), "feature_flow": {"threshold": self.flow.threshold}}
        for node in self.nodes:
            n = node.name
            sae = self.sae_spec(n)
            if node.data is not None:
                # budgets choose tokens, not documents: they version the token blocks only
                out[f"corpus/{n}"] = [s.model_dump(mode="json", exclude={"tokens", "weight", "expected_tokens"})
                                      for s in node.data.sources]
                out[f"tokens/{n}"] = {"data": node.data.model_dump(mode="json", exclude={"sources": {"__all__": {"expected_tokens"}}}),
                                      "n_ctx": self.model_spec(n).n_ctx}
                out[f"model/{n}"] = {"model": self.model_spec(n).model_dump(mode="json"),
                                     "training": self.training_spec(n).model_dump(mode="json"), "seed": self.seed_of(n)}
            else:
                merge = self.merge_spec(n)
                out[f"model/{n}"] = {"merge": merge.model_dump(mode="json", exclude={"sweep"}), "seed": self.seed_of(n),
                                     "base": self.merge_base(n)}
                if merge.method == "slerp" and merge.slerp_t == "auto":
                    out[f"slerp_sweep/{n}"] = merge.sweep.model_dump(mode="json")
            out[f"activation_store/{n}"] = {
                **sae.model_dump(mode="json", include={"context", "tokens", "eval_tokens", "store_dtype", "shard_tokens"}),
                "seed": self.seed_of(n)}
            out[f"sae/{n}"] = {"sae": sae.model_dump(mode="json"), "seed": self.sae_seed(n)}
            out[f"feature_examples/{n}"] = {**self.examples.model_dump(mode="json", exclude={"case_min_fired"}),
                                            "context": sae.context, "seed": self.seed_of(n)}
        out["feature_pages"] = {}  # nothing of the lineage file changes its bytes but what arrives from upstream
        if self.autointerp.enabled:
            a = self.autointerp
            for n in self.nodes:  # timeouts, concurrency and retries change how, not what
                out[f"autointerp/{n.name}"] = {**a.model_dump(mode="json", exclude={"timeout", "max_in_flight", "retries", "enabled", "api_key_env"}),
                                               "seed": self.seed_of(n.name)}
            out["autointerp_summary"] = {}
        if self.tasks:
            out["tasks"] = {"tasks": [t.model_dump(mode="json") for t in self.tasks], "seed": self.seed,
                            "source": self.data_ancestry(self.base.name), "n_ctx": self.model_spec(self.base.name).n_ctx}
            p = self.patching
            for n in self.nodes:
                out[f"task_performance/{n.name}"] = {}
                out[f"circuits/{n.name}"] = p.model_dump(mode="json", exclude={"feature_null_draws", "batch", "min_gap_se"})
            for pa, c in self.edges():
                out[f"cmap/{pa}__{c}"] = {"components": p.components, "feature_null_draws": p.feature_null_draws,
                                          "seed": self.seed_of(c), "threshold": self.flow.threshold, "min_gap_se": p.min_gap_se}
        if self.edges():
            out["case_studies"] = {"min_fired": self.examples.case_min_fired}
        f = self.flow
        for p, c in self.edges():
            edge = f"{p}__{c}"
            out[f"sae_transfer/{edge}"] = {n: self.sae_spec(n).ultra_low_density for n in (p, c)}
            out[f"feature_activations/{edge}"] = self.edge_activation_settings(p, c)
            out[f"feature_correlation/{edge}"] = {"top_k": f.top_k, "full_matrix": f.full_matrix}
        return {k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest()[:16] for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------


def resolve_lineage_path(name_or_path: str | os.PathLike | None = None) -> Path:
    """A shipped lineage name ('micro', 'demo', 'paper', 'paper-small') or a path; default `FEATUREFLOW_LINEAGE` or 'demo'."""
    value = str(name_or_path or os.environ.get("FEATUREFLOW_LINEAGE") or DEFAULT_LINEAGE)
    if value in SHIPPED_LINEAGES:
        return Path(str(importlib_resources.files("featureflow_dagster.lineages").joinpath(f"{value}.yaml")))
    path = Path(os.path.expanduser(value))
    if not path.is_file():
        raise LineageError(
            value, None, None,
            f"no such lineage file; give a path to a YAML file or one of the shipped names {list(SHIPPED_LINEAGES)}",
        )
    return path


def _field_path(loc: tuple) -> tuple[str | None, str]:
    """Split a pydantic error location into (node index or None, dotted field path)."""
    parts = [str(x) for x in loc]
    if len(parts) >= 2 and parts[0] == "nodes" and parts[1].isdigit():
        return parts[1], ".".join(parts[2:]) or "nodes"
    return None, ".".join(parts) or "<root>"


def parse_lineage(raw: dict, file: str | Path = "<lineage>") -> Lineage:
    """Validate a lineage given as a mapping (the parsed YAML); raise LineageError on any problem."""
    if not isinstance(raw, dict):
        raise LineageError(file, None, None, "the file must hold a YAML mapping with 'name', 'model' and 'nodes'")
    try:
        lineage = Lineage.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        index, field = _field_path(err["loc"])
        node = None
        if index is not None:
            nodes = raw.get("nodes") or []
            entry = nodes[int(index)] if int(index) < len(nodes) else None
            node = entry.get("name", f"#{index}") if isinstance(entry, dict) else f"#{index}"
        # Drop pydantic's discriminator tags from the path: 'data.sources.0.stdlib.what' -> 'data.sources.0.what'
        field = ".".join(p for p in field.split(".") if p not in ("hf", "files", "stdlib"))
        message = err["msg"]
        if err["type"] == "union_tag_invalid":
            message = f"unknown source kind {err['ctx']['tag']!r}; use one of {err['ctx']['expected_tags']}"
        raise LineageError(file, node, field, message) from None
    validate_graph(lineage, file)
    return lineage


def load_lineage(name_or_path: str | os.PathLike | None = None) -> Lineage:
    """Read, parse and fully validate a lineage; see `resolve_lineage_path` for the argument."""
    path = resolve_lineage_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise LineageError(path, None, None, f"not valid YAML: {e}") from None
    return parse_lineage(raw, path)


def validate_graph(lineage: Lineage, file: str | Path = "<lineage>") -> None:
    """The checks pydantic cannot make: graph shape, common ancestors, architectures, paths."""
    names = [n.name for n in lineage.nodes]
    for n in names:
        if names.count(n) > 1:
            raise LineageError(file, n, "name", "duplicate node name; every node needs its own name")
    known = set(names)
    for node in lineage.nodes:
        for p in node.parents:
            if p not in known:
                raise LineageError(file, node.name, "parents", f"unknown parent '{p}'; known nodes: {sorted(known)}")
            if p == node.name:
                raise LineageError(file, node.name, "parents", "a node cannot be its own parent")
        if len(set(node.parents)) != len(node.parents):
            raise LineageError(file, node.name, "parents", f"a parent is listed twice: {node.parents}")
        if node.kind == "base" and node.parents:
            raise LineageError(file, node.name, "parents", "a base node is trained from scratch and has no parents")
        if node.kind == "finetune" and len(node.parents) != 1:
            raise LineageError(
                file, node.name, "parents", f"a finetune node needs exactly one parent; got {len(node.parents)}"
            )
        if node.kind == "merge" and len(node.parents) < 2:
            raise LineageError(
                file, node.name, "parents", f"a merge node needs at least two parents; got {len(node.parents)}"
            )
    _check_acyclic(lineage, file)
    for node in lineage.nodes:
        if node.kind == "merge" and not lineage.nearest_common_ancestors(node.parents):
            raise LineageError(file, node.name, "parents", f"parents {node.parents} share no common ancestor")
    bases = [n.name for n in lineage.nodes if n.kind == "base"]
    if len(bases) != 1:
        raise LineageError(
            file, None, "nodes",
            f"a lineage has exactly one base node (its tokenizer is trained on it); found {len(bases)}: {bases}",
        )
    for node in lineage.nodes:
        if node.kind == "merge":
            merge = node.merge or MergeSpec()
            if merge.method == "slerp" and len(node.parents) != 2:
                raise LineageError(file, node.name, "merge.method", "slerp merges exactly two parents")
            if merge.weights is not None and len(merge.weights) != len(node.parents):
                raise LineageError(
                    file, node.name, "merge.weights",
                    f"{len(merge.weights)} weights for {len(node.parents)} parents; give one weight per parent",
                )
            nearest = lineage.nearest_common_ancestors(node.parents)
            if merge.base is None and len(nearest) > 1:
                raise LineageError(
                    file, node.name, "merge.base",
                    f"the parents have {len(nearest)} equally near common ancestors {nearest}; "
                    "name the one to use as the merge's base (and the sweep's baseline) in 'merge.base'",
                )
            if merge.base is not None:
                if merge.base not in known:
                    raise LineageError(file, node.name, "merge.base", f"unknown node '{merge.base}'")
                if any(merge.base not in lineage.ancestors(p) for p in node.parents):
                    raise LineageError(
                        file, node.name, "merge.base", f"'{merge.base}' is not an ancestor of every parent {node.parents}"
                    )
        for p in node.parents:
            if lineage.model_spec(node.name) != lineage.model_spec(p):
                mine, theirs = lineage.model_spec(node.name).model_dump(), lineage.model_spec(p).model_dump()
                diff = {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}
                raise LineageError(
                    file, node.name, "model",
                    f"architecture differs from parent '{p}' (field: (this node, parent)) {diff}; "
                    "a child must keep its parents' architecture",
                )
        if node.data is not None:
            for i, src in enumerate(node.data.sources):
                _check_source_paths(src, file, node.name, f"data.sources.{i}")
    for node in lineage.nodes:
        n_ctx, context = lineage.model_spec(node.name).n_ctx, lineage.sae_spec(node.name).context
        if context > n_ctx:
            raise LineageError(file, node.name, "sae.context", f"{context}-token windows exceed the model's n_ctx {n_ctx}")
    if lineage.flow.context is not None and lineage.flow.context > lineage.model.n_ctx:
        raise LineageError(file, None, "flow.context", f"{lineage.flow.context}-token windows exceed the models' n_ctx {lineage.model.n_ctx}")
    names = [t.name for t in lineage.tasks]
    for i, t in enumerate(lineage.tasks):
        if t.name in names[:i]:
            raise LineageError(file, None, f"tasks.{i}.name", f"duplicate task name '{t.name}'")
        if t.kind != "entity_tracking" and t.length > lineage.model.n_ctx:
            raise LineageError(file, None, f"tasks.{i}.length", f"task '{t.name}': prompts of {t.length} tokens exceed "
                               f"the models' n_ctx {lineage.model.n_ctx}")
        if t.kind == "entity_tracking" and t.n_objects > min(len(t.objects), len(t.boxes)):
            raise LineageError(file, None, f"tasks.{i}.n_objects", f"task '{t.name}': {t.n_objects} objects per prompt "
                               f"need as many objects and boxes ({len(t.objects)}, {len(t.boxes)} given)")
    if lineage.tokenizer.kind == "pretrained" and not Path(os.path.expanduser(lineage.tokenizer.path)).is_dir():
        raise LineageError(file, None, "tokenizer.path", f"no such tokenizer folder: {lineage.tokenizer.path}")


def _check_acyclic(lineage: Lineage, file) -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise LineageError(file, name, "parents", f"cycle in the lineage: {' -> '.join(cycle)}")
        state[name] = 1
        for p in lineage.by_name[name].parents:
            visit(p, path + [name])
        state[name] = 2

    for n in lineage.nodes:
        visit(n.name, [])


def _check_source_paths(src, file, node: str, field: str) -> None:
    if isinstance(src, FilesSource):
        if not src.matched_files():
            raise LineageError(
                file, node, f"{field}.paths",
                f"source '{src.name}': the globs {src.paths} match no file; fix the path or install the data",
            )
    elif isinstance(src, HFSource):
        local = src.local_path()
        if local is not None and not local.exists():
            raise LineageError(file, node, f"{field}.path", f"source '{src.name}': no such local data set {local}")
