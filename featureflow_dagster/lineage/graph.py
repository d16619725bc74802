"""`Lineage`: the lineage file's top level and the queries on its graph of nodes (parents, edges,
ancestries, per-node settings with the lineage's defaults filled in). Valid only after validation
(`validation.validate_graph`)."""

from __future__ import annotations

import zlib
from functools import cached_property
from typing import NamedTuple

from pydantic import Field, field_validator, model_validator

from featureflow_dagster.hooks import MLP_POST, parse_hook

from featureflow_dagster.lineage.schema import (
    AutointerpSpec,
    ExamplesSpec,
    FlowSpec,
    MergeSpec,
    ModelSpec,
    NodeSpec,
    PatchingSpec,
    SAESpec,
    TaskSpec,
    TokenizerSpec,
    TrainingSpec,
    _Strict,
)

DEFAULT_PRETRAINED_N_CTX = 256
EDGE_SEPARATOR = "__"  # node names may not contain it (NodeSpec refuses them)
EDGE_ARROW = "->"


class Edge(NamedTuple):
    """A parent -> child edge of the lineage. `key` names its partitions and files (`base__lua`),
    `label` its rows in tables and on pages (`base->lua`); `parse` reads either back."""

    parent: str
    child: str

    @property
    def key(self) -> str:
        return f"{self.parent}{EDGE_SEPARATOR}{self.child}"

    @property
    def label(self) -> str:
        return f"{self.parent}{EDGE_ARROW}{self.child}"

    @classmethod
    def _split(cls, text: str, sep: str) -> "Edge | None":
        parts = text.split(sep)
        return cls(*parts) if len(parts) == 2 and all(parts) else None

    @classmethod
    def from_key(cls, key: str) -> "Edge | None":
        """The edge a partition key names, or None for any other key (a node's)."""
        return cls._split(key, EDGE_SEPARATOR)

    @classmethod
    def parse(cls, text: str) -> "Edge":
        """An edge from its key (`base__lua`) or its label (`base->lua`)."""
        edge = cls._split(text, EDGE_SEPARATOR) or cls._split(text, EDGE_ARROW)
        if edge is not None:
            return edge
        raise ValueError(f"{text!r} is not an edge; write it as parent{EDGE_SEPARATOR}child or parent{EDGE_ARROW}child")


class Lineage(_Strict):
    name: str
    description: str = ""
    seed: int = 0
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    model: ModelSpec | None = Field(default=None, description="The architecture of the models trained here; "
                                    "needed unless every base and fine-tune is pretrained.")
    n_ctx: int | None = Field(default=None, gt=1, description="Token block length when there is no `model:` "
                              "(every model pretrained); default 256. With `model:`, its n_ctx.")
    hook: str = Field(default=MLP_POST, description="Where the SAEs read, in TransformerLens's names: "
                      "blocks.<L>.mlp.hook_post, blocks.<L>.hook_resid_post, blocks.<L>.hook_mlp_out or blocks.<L>.hook_attn_out.")
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    sae: SAESpec = Field(default_factory=SAESpec)
    flow: FlowSpec = Field(default_factory=FlowSpec)
    examples: ExamplesSpec = Field(default_factory=ExamplesSpec)
    autointerp: AutointerpSpec = Field(default_factory=AutointerpSpec)
    tasks: list[TaskSpec] = Field(default_factory=list, description="Tasks for circuits and CMAP; none: those assets are not built.")
    patching: PatchingSpec = Field(default_factory=PatchingSpec)
    max_disk_gb: float | None = Field(default=None, gt=0, description="Refuse to materialize (before any compute) when "
                                      "`featureflow plan`'s estimate of the lineage's disk exceeds this many GB; default: what "
                                      "the store's disk has free plus what the store holds already.")
    schedule: str | None = Field(
        default=None,
        pattern=r"^\s*\S+\s+\S+\s+\S+\s+\S+\s+\S+\s*$",
        description="Cron string (5 fields, UTC), e.g. '0 3 * * *': while the Dagster daemon runs (featureflow ui), "
        "re-observe the lineage file and materialize whatever is missing or stale. Default: off.",
    )
    nodes: list[NodeSpec] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _tokenizer_of_a_pretrained_base(cls, raw):
        """A lineage whose base is pretrained uses the model's own tokenizer unless it says otherwise."""
        if isinstance(raw, dict) and "tokenizer" not in raw:
            nodes = raw.get("nodes") or []
            if any(isinstance(n, dict) and n.get("kind") == "base" and n.get("pretrained") for n in nodes):
                return {**raw, "tokenizer": {"kind": "model"}}
        return raw

    @field_validator("hook")
    @classmethod
    def _known_hook(cls, value: str) -> str:
        parse_hook(value)
        return value

    # -- graph queries (valid only after validate_graph) ---------------------------------------

    @property
    def block_n_ctx(self) -> int:
        """Length of the token blocks (and the longest window) of every node."""
        return self.model.n_ctx if self.model is not None else (self.n_ctx or DEFAULT_PRETRAINED_N_CTX)

    @property
    def pretrained_nodes(self) -> list[str]:
        return [n.name for n in self.topological_order() if n.pretrained is not None]

    def trains(self, name: str) -> bool:
        """Whether the node's model is trained here (a base or fine-tune that is not pretrained)."""
        node = self.node(name)
        return node.kind != "merge" and node.pretrained is None

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

    def generations(self) -> dict[str, int]:
        """Per node its generation: 0 for the base, else one more than its deepest parent (the Sankey's and the
        reports home's columns)."""
        out: dict[str, int] = {}
        for name in self.node_names:  # in dependency order
            parents = self.node(name).parents
            out[name] = 1 + max(out[p] for p in parents) if parents else 0
        return out

    def edges(self) -> list[Edge]:
        """(parent, child) edges in topological order of the child."""
        return [Edge(p, n.name) for n in self.topological_order() for p in n.parents]

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

    def merge_reference(self, name: str) -> str | None:
        """The model a merge is taken relative to: None for SLERP and linear, else `merge_base`."""
        return None if self.merge_spec(name).method in ("slerp", "linear") else self.merge_base(name)

    def model_spec(self, name: str) -> ModelSpec | None:
        """The architecture of a model trained here; None for a pretrained node (its config.json says)."""
        node = self.node(name)
        return None if node.pretrained is not None else (node.model or self.model)

    def sae_spec(self, name: str) -> SAESpec:
        return self.node(name).sae or self.sae

    def sae_seed(self, name: str) -> int:
        """Seed of a node's SAE initialisation and batch order (see SAESpec.init)."""
        seed = self.seed_of(name)
        if self.sae_spec(name).init == "independent":
            seed = (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31
        return seed

    def null_seed(self, name: str, k: int) -> int:
        """Seed of the node's k-th seed-null SAE (k >= 1; flow.null_seeds): the SAE's own seed moved k million
        places, so no null SAE shares an initialisation or batch order with a lineage SAE."""
        return (self.sae_seed(name) + k * 1_000_000) % 2**31

    def seed_null_nodes(self) -> list[str]:
        """The nodes that get a seed null: all with flow.null_seeds, but those whose SAE is published (not trained)."""
        if not self.flow.null_seeds:
            return []
        return [n for n in self.node_names if self.sae_spec(n).published is None]

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

