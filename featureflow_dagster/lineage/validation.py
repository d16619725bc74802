"""Reading and validating a lineage file: the schema by pydantic, the graph by `validate_graph`
(cycles, unknown or duplicate nodes, parent counts per kind, common ancestors of merge parents,
architecture agreement along edges, local paths that exist). Every problem raises `LineageError`
naming the file, the node and the field, and saying what would fix it."""

from __future__ import annotations

import os
from importlib import resources as importlib_resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from featureflow_dagster.lineage.graph import Lineage
from featureflow_dagster.lineage.schema import FilesSource, HFSource, LineageError, MergeSpec

DEFAULT_LINEAGE = "demo"
SHIPPED_LINEAGES = ("micro", "demo", "paper", "paper-small", "paper-released", "prakash", "kutsyk")



def resolve_lineage_path(name_or_path: str | os.PathLike | None = None) -> Path:
    """A shipped lineage name (`SHIPPED_LINEAGES`) or a path; default `FEATUREFLOW_LINEAGE` or 'demo'."""
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
            raise LineageError(file, node.name, "parents", "a base node is the lineage's root and has no parents")
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
            mine, theirs = lineage.model_spec(node.name), lineage.model_spec(p)
            if mine is None or theirs is None:
                continue  # a pretrained side: its config.json is checked against the other's (pretrained.check_lineage_models)
            if mine != theirs:
                mine, theirs = mine.model_dump(), theirs.model_dump()
                diff = {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}
                raise LineageError(
                    file, node.name, "model",
                    f"architecture differs from parent '{p}' (field: (this node, parent)) {diff}; "
                    "a child must keep its parents' architecture",
                )
        if node.pretrained is not None and node.pretrained.path is not None:
            folder = node.pretrained.local_path()
            missing_but_expected = not folder.exists() and node.pretrained.expect is not None  # made later (README)
            if not missing_but_expected and not (folder / "config.json").is_file():
                raise LineageError(file, node.name, "pretrained.path",
                                   f"{folder} is not a Hugging Face model folder (no config.json there)")
        if lineage.trains(node.name) and any(lineage.node(p).pretrained is not None for p in node.parents):
            raise LineageError(file, node.name, "pretrained", "fine-tuning a pretrained model here is not supported yet; "
                               "fine-tune it outside featureflow and point this node's 'pretrained:' at the result")
        if lineage.trains(node.name) and lineage.model_spec(node.name) is None:
            raise LineageError(file, node.name, "model", "this node is trained here and needs an architecture: "
                               "give the lineage a 'model:' (or the node 'pretrained:' weights)")
        if node.data is not None:
            for i, src in enumerate(node.data.sources):
                _check_source_paths(src, file, node.name, f"data.sources.{i}")
    if lineage.model is not None and lineage.n_ctx is not None:
        raise LineageError(file, None, "n_ctx", "the block length is model.n_ctx when the lineage has a 'model:'; remove 'n_ctx'")
    if lineage.tokenizer.kind == "model" and lineage.base.pretrained is None:
        raise LineageError(file, lineage.base.name, "tokenizer.kind", "tokenizer kind 'model' takes the base's pretrained "
                           "model's tokenizer, but the base is trained here; use 'bpe', 'mistral' or 'pretrained'")
    pretrained = [n.name for n in lineage.nodes if n.pretrained is not None]
    if pretrained and lineage.tokenizer.kind in ("bpe", "mistral"):
        raise LineageError(file, pretrained[0], "pretrained", f"a pretrained model reads its own tokenizer's ids, but the lineage's "
                           f"tokenizer is '{lineage.tokenizer.kind}'; use tokenizer kind 'model' (a pretrained base) or 'pretrained'")
    for node in lineage.nodes:
        n_ctx, context = lineage.block_n_ctx, lineage.sae_spec(node.name).context
        if context > n_ctx:
            raise LineageError(file, node.name, "sae.context", f"{context}-token windows exceed the model's n_ctx {n_ctx}")
    if lineage.flow.context is not None and lineage.flow.context > lineage.block_n_ctx:
        raise LineageError(file, None, "flow.context", f"{lineage.flow.context}-token windows exceed the models' n_ctx {lineage.block_n_ctx}")
    names = [t.name for t in lineage.tasks]
    for i, t in enumerate(lineage.tasks):
        if t.name in names[:i]:
            raise LineageError(file, None, f"tasks.{i}.name", f"duplicate task name '{t.name}'")
        if t.kind != "entity_tracking" and t.length > lineage.block_n_ctx:
            raise LineageError(file, None, f"tasks.{i}.length", f"task '{t.name}': prompts of {t.length} tokens exceed "
                               f"the models' n_ctx {lineage.block_n_ctx}")
        if t.kind == "entity_tracking" and t.n_objects > min(len(t.objects), len(t.boxes)):
            raise LineageError(file, None, f"tasks.{i}.n_objects", f"task '{t.name}': {t.n_objects} objects per prompt "
                               f"need as many objects and boxes ({len(t.objects)}, {len(t.boxes)} given)")
    if lineage.tasks and lineage.model is not None and not lineage.pretrained_nodes:
        check_patching_depth(lineage, lineage.model.n_layers, lineage.model.n_heads, file, None)
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



def check_patching_depth(lineage: Lineage, n_layers: int, n_heads: int, file, node: str | None) -> None:
    """`patching.layers` and `patching.head_groups` within a model of `n_layers` layers of `n_heads` heads."""
    spec = lineage.patching
    for layer in spec.layers or []:
        if layer >= n_layers:
            raise LineageError(file, node, "patching.layers", f"layer {layer} is beyond the model's {n_layers} layers (0..{n_layers - 1})")
    for name, heads in spec.head_groups.items():
        for layer, head in heads:
            if layer >= n_layers or head >= n_heads:
                raise LineageError(file, node, f"patching.head_groups.{name}", f"head [{layer}, {head}] is not in a model of "
                                   f"{n_layers} layers of {n_heads} heads")
