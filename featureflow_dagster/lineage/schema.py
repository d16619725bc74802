"""The lineage file's schema: data sources, tokenizer, model, training, merges, SAEs, flow, examples,
auto-interp, tasks and patching settings, and nodes, as frozen pydantic models (`extra="forbid"`).

Each field's description is its documentation; `Lineage` (graph.py) is the file's top level.
"""

from __future__ import annotations

import glob
import json
import os
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

# entity tracking's default objects and box labels, a data file beside this module (reading a lineage needs no torch)
_ENTITY = json.loads(importlib_resources.files("featureflow_dagster.lineage").joinpath("entity_tracking.json").read_text())
ENTITY_OBJECTS: list[str] = _ENTITY["objects"]
ENTITY_BOXES: list[str] = _ENTITY["boxes"]
DEFAULT_THRESHOLD = 0.8  # Horn & Elliott's persistence threshold on Pearson r


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

    # Fields added after lineages were materialized with this class. At their default they stay out of the
    # settings that version a partition (`versioned`), so that a new option leaves every existing store fresh
    # (tests/test_versions.py holds the shipped lineages' versions).
    ADDED_LATER: ClassVar[frozenset[str]] = frozenset()

    def versioned(self, **dump) -> dict:
        """`model_dump(mode="json", **dump)` less the ADDED_LATER fields at their default: what versions a partition."""
        out = self.model_dump(mode="json", **dump)
        for name in self.ADDED_LATER:
            if name in out and getattr(self, name) == type(self).model_fields[name].default:
                del out[name]
        return out


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
    'pretrained': a Hugging Face tokenizer folder on local disk.
    'model': the tokenizer that comes with the base node's pretrained model (the default when the base is
    pretrained; every pretrained node's tokenizer must then be the same)."""

    kind: Literal["bpe", "mistral", "pretrained", "model"] = "bpe"
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


class ExpectedModel(_Strict):
    """The shape a lineage was written for (from the model's published config.json): checked against the real
    config whenever the repo resolves, and what `featureflow validate` and `plan` use when it cannot (offline,
    not yet downloaded); never used to compute anything."""

    architecture: str = Field(description="config.json's `architectures[0]`, e.g. LlamaForCausalLM.")
    d_model: int = Field(gt=0)
    d_mlp: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_kv_heads: int | None = Field(default=None, gt=0)
    d_vocab: int = Field(gt=0)
    n_ctx: int | None = Field(default=None, gt=0, description="max_position_embeddings.")
    tie_word_embeddings: bool = False


class PretrainedSpec(_Strict):
    """A model that exists already, analysed as it is (nothing is trained): a Hugging Face repo id, with an
    optional revision, or a local Hugging Face model folder (config.json, safetensors weights, tokenizer).
    Its family must be one featureflow supports (`featureflow_dagster.arch.SUPPORTED`)."""

    repo: str | None = Field(default=None, description="Hugging Face repo id, e.g. 'EleutherAI/pythia-70m'.")
    revision: str | None = Field(default=None, description="Branch, tag or commit of `repo` (default: its main branch).")
    path: str | None = Field(default=None, description="A local Hugging Face model folder instead of a repo.")
    expect: ExpectedModel | None = Field(default=None, description="The shape the lineage was written for: checked "
                                         "against config.json, and used by validate and plan when the repo cannot be reached.")

    @model_validator(mode="after")
    def _repo_or_path(self):
        if (self.repo is None) == (self.path is None):
            raise ValueError("give either 'repo' (a Hugging Face repo id) or 'path' (a local model folder)")
        if self.revision is not None and self.repo is None:
            raise ValueError("'revision' belongs to a 'repo'; a local folder has none")
        return self

    def local_path(self) -> Path | None:
        return Path(os.path.expanduser(self.path)) if self.path is not None else None

    @property
    def label(self) -> str:
        return self.path if self.path is not None else f"{self.repo}@{self.revision or 'main'}"


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


class PublishedSAESpec(_Strict):
    """An SAE that exists already, read by SAELens: a release and SAE id from its directory
    (`sae_lens/pretrained_saes.yaml`, e.g. release 'gemma-2b-res-jb', sae_id 'blocks.6.hook_resid_post') or a
    SAELens folder (cfg.json + sae_weights.safetensors). It must read the lineage's hook."""

    release: str | None = None
    sae_id: str | None = None
    path: str | None = Field(default=None, description="A SAELens SAE folder instead of a release.")

    @model_validator(mode="after")
    def _release_or_path(self):
        if (self.path is None) == (self.release is None):
            raise ValueError("give either 'release' with 'sae_id' (SAELens's directory) or 'path' (a SAELens folder)")
        if (self.release is None) != (self.sae_id is None):
            raise ValueError("'release' and 'sae_id' go together")
        return self

    def local_path(self) -> Path | None:
        return Path(os.path.expanduser(self.path)) if self.path is not None else None

    @property
    def label(self) -> str:
        return self.path if self.path is not None else f"{self.release}/{self.sae_id}"


class SAESpec(_Strict):
    """Activation store and sparse autoencoder of a node (Horn & Elliott 2024, Bricken et al. 2023).

    The store holds the lineage's `hook` (default `blocks.0.mlp.hook_post`) over `context`-token windows sampled uniformly from the
    training data of the node and all its ancestors: `tokens` for training, `eval_tokens` (from
    validation data) for the evaluations."""

    ADDED_LATER: ClassVar[frozenset[str]] = frozenset({"published"})

    architecture: Literal["relu", "topk", "batchtopk"] = "relu"
    published: PublishedSAESpec | None = Field(default=None, description="Load this node's SAE (SAELens release or folder) "
                                               "instead of training one; it passes the same evaluations and bars.")
    expansion: int = Field(default=16, gt=0, description="d_sae = expansion * the hook's width (d_mlp or d_model)")
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
    prompt_usd_per_mtok: float = Field(default=0.0, ge=0, description="Price of a million prompt tokens, for the cap. "
                                       "Required (with the completion price) for a server outside the loopback range, "
                                       "unless `free`.")
    completion_usd_per_mtok: float = Field(default=0.0, ge=0, description="Price of a million completion tokens.")
    tokenizer: str | None = Field(default=None, description="The LLM's tokenizer (a folder or Hugging Face name available "
                                  "offline): the cost cap counts prompt tokens with it; without it, by UTF-8 bytes, an "
                                  "upper bound.")
    free: bool = Field(default=False, description="The server costs nothing per token (your own server on another "
                       "machine): lets a server outside the loopback range run with no prices set.")
    max_usd: float = Field(default=1.0, ge=0, description="Refuse to start when the estimated cost of a node exceeds this.")
    max_usd_lineage: float | None = Field(default=None, ge=0, description="Refuse to start a node when what the "
                                          "lineage's other nodes have spent (their usage.json) plus this node's "
                                          "estimate exceeds this.")
    max_requests: int = Field(default=2000, gt=0, description="Refuse to start when a node would need more requests.")
    timeout: float = Field(default=60.0, gt=0, description="Seconds per request.")
    max_in_flight: int = Field(default=4, gt=0, description="Requests in flight at once.")
    retries: int = Field(default=5, ge=0, description="Retries of a request on 429, 5xx, timeouts.")

    @model_validator(mode="after")
    def _model_when_enabled(self) -> "AutointerpSpec":
        if self.enabled and not self.model:
            raise ValueError("autointerp.enabled needs autointerp.model (the model name the server lists)")
        if self.enabled:
            from featureflow_dagster.autointerp.cost import unpriced_remote

            problem = unpriced_remote(self.base_url, self)
            if problem:
                raise ValueError(problem)
        return self


class TaskSpec(_Strict):
    """One task for circuits and cross-model activation patching (`featureflow_dagster.patching.tasks`)."""

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
    """Within-model activation and path patching, circuits and CMAP (Prakash et al. 2024) on `tasks:`, at
    every layer (or `layers`), with head groups; the budgets (`layers`, `positions`, `prompts`,
    `random_circuits`, `feature_null_draws`) are what `featureflow plan` prices."""

    components: list[Literal["embed", "attn", "heads", "mlp"]] = Field(
        default=["embed", "attn", "heads", "mlp"], min_length=1,
        description="Kinds of component patched at each layer of `layers`: the embeddings, each layer's attention "
        "output, each head (L<layer>.H<head>), each layer's MLP output.")
    layers: list[int] | None = Field(default=None, description="Layers whose components are patched and whose heads "
                                     "and MLPs make up circuits (default: every layer).")
    head_groups: dict[str, list[tuple[int, int]]] = Field(
        default_factory=dict, description="Named groups of heads, each a list of [layer, head], patched together "
        "(`group.<name>`), and receivers of path patching (their query, key and value inputs).")
    positions: int | None = Field(default=None, gt=0, description="Patch one by one only the last this many prompt "
                                  "positions (default: every position); every component is also patched at all positions at once.")
    prompts: int | None = Field(default=None, gt=1, description="Examples per task used by circuits and CMAP (default: all).")
    split_halves: bool = Field(default=True, description="Find each circuit on one half of the prompts (drawn with the "
                               "node's seed) and score its faithfulness on the other half.")
    circuit_threshold: float = Field(default=0.1, gt=0, description="A head or MLP unit (one position) joins a task's "
                                     "circuit when patching it alone recovers at least this share of the clean-corrupt gap.")
    random_circuits: int = Field(default=20, ge=0, description="Random circuits drawn for the faithfulness null: as many "
                                 "units as the circuit in each (layer, position) cell, from that cell's heads and MLP.")
    feature_null_draws: int = Field(default=10, ge=0, description="Random feature sets (of the emerged/disappearing sizes) "
                                    "patched per edge and task: the null of feature-level CMAP.")
    min_gap_se: float = Field(default=2.0, ge=0, description="CMAP shares are reported only when an edge's parent-child "
                              "gap is at least this many standard errors from zero (else the share of nothing is noise).")
    batch: int = Field(default=256, gt=0, description="Examples per forward pass.")

    @model_validator(mode="after")
    def _groups_and_layers(self) -> "PatchingSpec":
        import re as _re

        for name, heads in self.head_groups.items():
            if not _re.match(r"^[A-Za-z0-9_]+$", name):
                raise ValueError(f"head group name {name!r}: letters, digits and '_' only")
            if not heads:
                raise ValueError(f"head group {name!r} is empty")
            if len(set(heads)) != len(heads):
                raise ValueError(f"head group {name!r} names a head twice")
            if any(layer < 0 or head < 0 for layer, head in heads):
                raise ValueError(f"head group {name!r}: layers and heads count from 0")
        if self.layers is not None and (not self.layers or min(self.layers) < 0 or len(set(self.layers)) != len(self.layers)):
            raise ValueError("patching.layers: distinct layer indices from 0, at least one")
        return self

    def depth_needed(self) -> tuple[int, int]:
        """(layers, heads per layer) the model must have at least for `layers` and `head_groups`."""
        layers = [*(self.layers or []), *(lr for g in self.head_groups.values() for lr, _ in g)]
        heads = [h for g in self.head_groups.values() for _, h in g]
        return (max(layers) + 1 if layers else 0), (max(heads) + 1 if heads else 0)


class CrosscoderSpec(_Strict):
    """A BatchTopK crosscoder per edge (Minder et al. 2025's recipe, scaled to the model): trained on the parent's and
    the child's activations at the lineage's hook on the same windows of the data both share."""

    expansion: int = Field(default=4, gt=0, description="Latents per input dimension.")
    k: int = Field(default=32, gt=0, description="Mean active latents per token (BatchTopK).")
    tokens: int = Field(default=200_000, gt=0, description="Tokens it trains on (held in memory: tokens x d_in x 2 floats); "
                        "10% more are held out for its reconstruction figures.")
    epochs: float = Field(default=8.0, gt=0)
    batch_tokens: int = Field(default=4096, gt=0)
    lr: float = Field(default=2.0e-3, gt=0)
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)
    decay_fraction: float = Field(default=0.2, ge=0, le=1)
    parent_only_above: float = Field(default=0.9, gt=0.5, lt=1, description="Δ above this: a parent-only latent.")
    child_only_below: float = Field(default=0.1, gt=0, lt=0.5, description="Δ below this: a child-only latent.")
    shared_within: tuple[float, float] = Field(default=(0.4, 0.6), description="Δ in this band: a shared latent.")
    explained_variance_min: float | None = Field(default=0.7, description="Asset check (not blocking): each model's "
                                                 "explained variance on the held-out tokens at least this; null: no check.")
    dead_fraction_max: float | None = Field(default=0.1, description="Asset check (not blocking): at most this share of "
                                            "latents never fires on the held-out tokens; null: no check.")


class FlowSpec(_Strict):
    """Feature flow between every parent and child (Horn & Elliott 2024, §3): both SAEs encode the
    same `tokens` tokens, `context`-token windows drawn uniformly from the training data the two
    models share (the parent's data ancestry); Pearson r over token positions decides persistence."""

    tokens: int = Field(default=3_000_000, gt=0, description="Tokens both SAEs encode per edge (paper: 3M).")
    context: int | None = Field(default=None, gt=1, description="Window length; default: the parent SAE's context.")
    threshold: float = Field(default=DEFAULT_THRESHOLD, gt=0, lt=1, description="A feature persists when some partner's r exceeds this.")
    top_k: int = Field(default=5, gt=0, description="Best partners kept per feature, each way, per method.")
    chunk_tokens: int = Field(default=262_144, gt=0, description="Tokens per code chunk file (and correlation chunk).")
    batch_windows: int = Field(default=64, gt=0, description="Windows per forward pass while encoding.")
    row_block: int = Field(default=4096, gt=0, description="Features per block of the cross-moment (memory: block x d_sae float64).")
    full_matrix: bool = Field(default=False, description="Also write the full [parent, child] r matrix (float32; 1 GiB at 16384^2).")
    seed_offset: int = Field(default=1, description="Window sampling seed = child seed + this (differs from the stores' draw).")
    warm_start: bool = Field(default=False, description="Also train, per edge, the child's SAE starting from the parent's "
                             "dictionary (`warm_sae`), and report per feature index its decoder rotation and activation "
                             "correlation with the parent's feature: aligned pairs, a method beside matching.")
    one_to_one_max: int = Field(default=16384, ge=0, description="Also pair features one to one (the Hungarian assignment on "
                                "1 - r and on 1 - decoder cosine; one_to_one.parquet) on edges whose SAEs have at most this many "
                                "features (it needs the full [parent, child] r matrix, m x n floats); 0: never.")
    crosscoder: CrosscoderSpec | None = Field(default=None, description="Also train a crosscoder per edge (`crosscoder`): "
                                              "shared and model-specific latents with no matching step.")
    null_seeds: int = Field(default=0, ge=0, le=8, description="Per node, this many more SAEs of the same recipe on the same "
                            "store with other seeds (`seed_null`), each correlated with the node's SAE as an edge is: which "
                            "features SAE training reproduces, and per edge the counts expected if fine-tuning changed nothing.")
    warm_start_lr_scale: float = Field(default=0.1, gt=0, le=1, description="A warm start trains at this share of the SAE "
                                       "recipe's lr: at the full rate Adam's first steps turn the rows about as far as training "
                                       "from scratch would (micro, same model and data: median cosine to the start 0.88 at 1x, 0.996 at 0.1x).")


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
    pretrained: PretrainedSpec | None = Field(default=None, description="Weights that exist already (a repo or a folder): "
                                              "the node is analysed, not trained or merged; its kind and parents say where it comes from.")
    sae: SAESpec | None = None
    seed: int | None = None
    description: str = ""

    @model_validator(mode="after")
    def _fields_per_kind(self):
        if self.kind in ("base", "finetune") and self.data is None:
            what = "the data its SAE's activations are drawn from" if self.pretrained else "its training sources"
            raise ValueError(f"a {self.kind} node needs 'data' ({what})")
        if self.pretrained is not None:
            for name in ("model", "training", "merge"):
                if getattr(self, name) is not None:
                    raise ValueError(f"a pretrained node is neither trained nor merged here; remove '{name}'")
        if self.kind == "merge" and self.data is not None:
            raise ValueError("a merge node trains on nothing; remove 'data'")
        if self.kind != "merge" and self.merge is not None:
            raise ValueError(f"'merge' settings belong to merge nodes, not to a {self.kind} node")
        if "__" in self.name:
            raise ValueError("node names may not contain '__' (it separates parent and child in edge keys)")
        return self


