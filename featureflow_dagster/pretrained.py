"""Pretrained nodes: models that exist already, from a Hugging Face repo (with a revision) or a local folder.

`resolve` finds a node's folder and the version that names its bytes: the commit a repo's revision
resolves to, or the sha256 of a folder's config and weights. It goes through `huggingface_hub`'s
`snapshot_download`, which is the path a connected user takes and, with `HF_HUB_OFFLINE=1` (or no
network), answers from the local Hugging Face cache. `check_lineage_models` reads every pretrained
node's config.json and tokenizer (never its weights) and refuses, naming node and field, what cannot
run: an unsupported family, a hook the model does not have, disagreeing tokenizers, vocabularies,
widths or depths along an edge, a block length beyond the model's context. `featureflow materialize`
runs it before any compute; the `pretrained/<node>` observations and the model assets run it too.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from featureflow_dagster.hooks import parse_hook
from featureflow_dagster.lineage import Lineage, LineageError, PretrainedSpec

# what a light resolution fetches from a repo: the config and the tokenizer, never the weights
LIGHT_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "tokenizer.model", "vocab.json", "merges.txt"]
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
DIMENSIONS = ("architecture", "d_model", "d_mlp", "n_layers", "n_heads", "d_vocab")


class Unreachable(LineageError):
    """A repo that is neither in the local Hugging Face cache nor reachable: offline, or the hub is down."""


class Checked(dict):
    """check_lineage_models' answer: the resolved nodes (node -> Resolved), and `.expected`: the nodes whose repo
    could not be reached, checked against their `pretrained.expect` shape instead (node -> why)."""

    expected: dict[str, str]


def expected_dims(spec: PretrainedSpec) -> dict:
    e = spec.expect
    return {"architecture": e.architecture, "d_model": e.d_model, "d_mlp": e.d_mlp, "n_layers": e.n_layers,
            "n_heads": e.n_heads, "d_vocab": e.d_vocab, "n_ctx": e.n_ctx}


@dataclass(frozen=True)
class Resolved:
    node: str
    folder: Path
    commit: str | None  # a repo's resolved commit; None for a local folder

    @property
    def version(self) -> str:
        """What names the bytes: the commit, or 'sha256:<hex>' of a folder's config and weights (read only
        when asked: the checks and the planner need the folder, not a hash of every weight)."""
        return self.commit or folder_version(self.folder)


def folder_version(folder: Path) -> str:
    """sha256 over the names and bytes of a model folder's config.json and weight files (sorted)."""
    from featureflow_dagster.storage import file_sha256

    files = sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)} | {folder / "config.json"})
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(file_sha256(f).encode())
    return "sha256:" + h.hexdigest()


def resolve(node: str, spec: PretrainedSpec, file: str | Path = "<lineage>", weights: bool = False) -> Resolved:
    """The node's model folder and version. A repo is fetched through the Hugging Face cache (config and
    tokenizer only unless `weights`); offline, only the cache answers. LineageError naming the node and
    field for a folder without config.json, a repo or revision that does not exist, or one not cached offline."""
    if spec.path is not None:
        folder, commit, field, name = spec.local_path(), None, "pretrained.path", str(spec.local_path())
        if not folder.exists():
            raise Unreachable(file, node, field, f"no folder {folder} (make it, or fix the path)")
    else:
        folder, field, name = _snapshot(node, spec, file, weights), "pretrained.repo", f"'{spec.repo}'"
        commit = folder.name  # the snapshot folder is named by the commit
    if not (folder / "config.json").is_file():
        raise LineageError(file, node, field, f"{name} is not a Hugging Face model folder (no config.json there)")
    if weights and not any(next(folder.glob(p), None) for p in WEIGHT_PATTERNS):
        raise LineageError(file, node, field, f"{name} holds no weights (*.safetensors or *.bin)")
    return Resolved(node, folder, commit)


def _snapshot(node: str, spec: PretrainedSpec, file, weights: bool) -> Path:
    """The repo's snapshot folder in the Hugging Face cache, fetched if needed and allowed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        return Path(snapshot_download(spec.repo, revision=spec.revision, allow_patterns=None if weights else LIGHT_FILES))
    except GatedRepoError:
        raise LineageError(file, node, "pretrained.repo", f"'{spec.repo}' is gated: accept its terms on the hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise LineageError(file, node, "pretrained.repo", f"no model '{spec.repo}' on the Hugging Face hub "
                           "(a private or gated repo needs HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise LineageError(file, node, "pretrained.revision", f"'{spec.repo}' has no revision '{spec.revision}'") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        from huggingface_hub import constants

        why = "offline (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else f"the hub could not be reached ({type(e).__name__})"
        revision = f" --revision {spec.revision}" if spec.revision else ""
        raise Unreachable(file, node, "pretrained.repo", f"'{spec.label}' is not in the local Hugging Face cache "
                           f"({constants.HF_HUB_CACHE}) and {why}: download it on a connected machine "
                           f"(`hf download {spec.repo}{revision}`) or point 'pretrained.path' at a folder") from None


def link_model_files(folder: Path, out: Path, link: bool) -> list[str]:
    """Bring a model folder's files (config, weights, tokenizer; not sub-folders) into `out`. With `link`
    (the Hugging Face cache, whose blobs never change in place) a hard link where `out` is on the same
    file system, so a 7B model's weights are not stored twice; else a copy (a user's own folder may be
    overwritten in place by its next save). The cache's symlinks are followed to their blobs. Returns the file names."""
    import shutil

    names = []
    for src in sorted(folder.iterdir()):
        if not src.is_file() or src.name.startswith("."):
            continue
        (_link_or_copy if link else shutil.copy2)(src.resolve(), out / src.name)
        names.append(src.name)
    return names


def _link_or_copy(src: Path, dst: Path) -> None:
    import shutil

    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def _dimensions(config) -> dict:
    from featureflow_dagster.arch import architecture_of, config_dims

    return {"architecture": architecture_of(config), **config_dims(config)}


def check_lineage_models(lineage: Lineage, file: str | Path = "<lineage>") -> Checked:
    """Resolve every pretrained node (config and tokenizer only) and check what pydantic and the graph
    checks cannot see; returns the resolutions by node. Refuses with LineageError naming node and field."""
    from transformers import AutoConfig

    from featureflow_dagster.arch import ArchitectureError, adapter_for, check_hook
    from featureflow_dagster.tokenizer import load_tokenizer, tokenizer_hash

    resolved, expected = Checked(), {}
    for n in lineage.pretrained_nodes:
        try:
            resolved[n] = resolve(n, lineage.node(n).pretrained, file)
        except Unreachable as e:
            if lineage.node(n).pretrained.expect is None:
                raise
            expected[n] = e.problem
    resolved.expected = expected
    dims, tokenizers = {}, {}
    for n in lineage.pretrained_nodes:
        spec = lineage.node(n).pretrained
        field = "pretrained.path" if spec.path else "pretrained.repo"
        if n in expected:
            dims[n] = expected_dims(spec)
            from featureflow_dagster.arch import SUPPORTED

            if spec.expect.architecture not in SUPPORTED:
                raise LineageError(file, n, "pretrained.expect.architecture", f"{spec.expect.architecture} is not a family "
                                   f"featureflow reads (it reads {', '.join(SUPPORTED)})")
            hook = parse_hook(lineage.hook)
            if hook.layer >= dims[n]["n_layers"]:
                raise LineageError(file, n, "hook", f"hook '{lineage.hook}': layer {hook.layer} is beyond the expected depth "
                                   f"({dims[n]['n_layers']} layers; pretrained.expect)")
        else:
            r = resolved[n]
            config = AutoConfig.from_pretrained(str(r.folder))
            try:
                adapter_for(config)
            except ArchitectureError as e:
                raise LineageError(file, n, field, str(e)) from None
            try:
                check_hook(config, lineage.hook)
            except ArchitectureError as e:
                raise LineageError(file, n, "hook", f"{e} (the lineage's hook)") from None
            dims[n] = _dimensions(config)
            if spec.expect is not None:
                for key, want in expected_dims(spec).items():
                    if want is not None and dims[n].get(key) != want:
                        raise LineageError(file, n, f"pretrained.expect.{key}", f"the lineage expects {want}, the model's "
                                           f"config.json says {dims[n].get(key)}; fix `expect` (or the repo/revision)")
        if lineage.tasks:
            from featureflow_dagster.hooked import HOOKED_FAMILIES

            if dims[n]["architecture"] not in HOOKED_FAMILIES:
                raise LineageError(file, n, "tasks", f"circuits and CMAP patch TransformerLens HookedTransformers, which "
                                   f"TransformerLens does not build for {dims[n]['architecture']} (it does for {list(HOOKED_FAMILIES)}); "
                                   "remove 'tasks:' to study this lineage without them")
            from featureflow_dagster.lineage.validation import check_patching_depth

            check_patching_depth(lineage, dims[n]["n_layers"], dims[n]["n_heads"], file, n)
        if dims[n]["n_ctx"] is not None and lineage.block_n_ctx > dims[n]["n_ctx"]:
            raise LineageError(file, n, "n_ctx", f"{lineage.block_n_ctx}-token blocks exceed the model's context "
                               f"({dims[n]['n_ctx']} positions); lower the lineage's n_ctx")
        if n in expected:
            continue  # no tokenizer to read: the repo is not here
        try:
            tokenizers[n] = tokenizer_hash(load_tokenizer(resolved[n].folder))
        except Exception as e:  # noqa: BLE001 - any failure to read the tokenizer is the same problem for the user
            raise LineageError(file, n, field, f"the model's tokenizer does not load from {resolved[n].folder}: {e}") from None
    pairs = [(p, c) for p, c in lineage.edges()]
    for node in lineage.nodes:  # a merge's parents must agree with each other too
        pairs += [(node.parents[0], q) for q in node.parents[1:]] if node.kind == "merge" else []
    for p, c in pairs:
        if p in dims and c in dims:
            for key in DIMENSIONS:
                if dims[p][key] != dims[c][key]:
                    raise LineageError(file, c, "pretrained", f"{key} {dims[c][key]} differs from '{p}' ({dims[p][key]}); "
                                       "the models along an edge must share architecture, width, depth and vocabulary")
            if p in tokenizers and c in tokenizers and tokenizers[p] != tokenizers[c]:
                raise LineageError(file, c, "pretrained", f"its tokenizer differs from '{p}''s; the models along an edge "
                                   "must share one tokenizer (token ids mean the same text)")
    if lineage.tokenizer.kind == "model":
        reference, where = tokenizers.get(lineage.base.name), f"the base '{lineage.base.name}''s"
    elif lineage.tokenizer.kind == "pretrained":
        reference, where = tokenizer_hash(load_tokenizer(os.path.expanduser(lineage.tokenizer.path))), "the lineage's tokenizer.path"
    else:
        reference = None
    for n, digest in tokenizers.items():
        if reference is not None and digest != reference:
            raise LineageError(file, n, "pretrained", f"its tokenizer differs from {where}, which the lineage uses")
    return resolved
