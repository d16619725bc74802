"""The tokens an edge's two SAEs encode and their sparse codes on disk: windows drawn uniformly from the
data both models were trained on, each model's SAE on its own activations, CSR chunk files."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from featureflow_dagster.activations import gather_windows, run_to_hook, sample_windows
from featureflow_dagster.lineage import Edge



def _csr_tensors(csr: sp.csr_matrix, prefix: str) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.indptr": torch.from_numpy(csr.indptr.astype(np.int64)),
        f"{prefix}.indices": torch.from_numpy(csr.indices.astype(np.int32)),
        f"{prefix}.values": torch.from_numpy(csr.data.astype(np.float32)),
    }


def to_csr(f: torch.Tensor) -> sp.csr_matrix:
    """Dense codes [tokens, d_sae] (any device) to scipy CSR without a dense host copy."""
    rows, cols = f.nonzero(as_tuple=True)
    vals = f[rows, cols].float().cpu().numpy()
    return sp.csr_matrix((vals, (rows.cpu().numpy(), cols.cpu().numpy())), shape=tuple(f.shape))


@torch.no_grad()
def write_codes(parent_model, child_model, parent_sae, child_sae, tokens: torch.Tensor, origin: torch.Tensor,
                folder: Path, chunk_windows: int, device: torch.device, batch_windows: int = 64, log=None
                ) -> tuple[list[str], dict[str, int]]:
    """Encode token windows [n, context] with each model's own SAE on its own activations and write
    chunk files of CSR codes (`parent.*`, `child.*`: indptr, indices, values; row = window × context
    + position) with the windows' token ids and origin (source, row, offset). Each batch is made
    sparse at once, so memory stays at one batch of dense codes. Returns the chunk file names and
    each side's count of non-zero codes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    nnz = {"parent": 0, "child": 0}
    n_chunks = -(-tokens.shape[0] // chunk_windows)
    for ci, start in enumerate(range(0, tokens.shape[0], chunk_windows)):
        part = tokens[start : start + chunk_windows]
        codes: dict[str, list[sp.csr_matrix]] = {"parent": [], "child": []}
        for b in range(0, part.shape[0], batch_windows):
            x = part[b : b + batch_windows].to(device, torch.long)
            acts = {}  # one forward per (model, hook): a seed null encodes one model's activations with two SAEs
            for side, model, sae in (("parent", parent_model, parent_sae), ("child", child_model, child_sae)):
                key = (id(model), sae.cfg.hook_name)
                if key not in acts:
                    a = run_to_hook(model, x, sae.cfg.hook_name)
                    acts[key] = a.reshape(-1, a.shape[-1]).float()
                codes[side].append(to_csr(sae.encode(acts[key])))
        out = {"tokens": part.contiguous(), "origin": origin[start : start + chunk_windows].contiguous()}
        for side in ("parent", "child"):
            csr = sp.vstack(codes[side], format="csr")
            nnz[side] += csr.nnz
            out.update(_csr_tensors(csr, side))
        name = f"chunk_{ci:05d}.safetensors"
        save_file(out, str(folder / name))
        files.append(name)
        if log:
            log(f"codes: chunk {ci + 1}/{n_chunks} ({min(tokens.shape[0], start + chunk_windows):,}/{tokens.shape[0]:,} windows)")
    return files, nnz


def encode_edge(edge: Edge, models: dict, saes: dict, settings: dict, token_files: dict[str, Path], folder: Path, device: torch.device,
                batch_windows: int = 64, log=None) -> tuple[dict, dict[str, int], float]:
    """One edge's codes (`write_codes`) into `folder` with its `manifest.json`: `settings`
    (`Lineage.edge_activation_settings`) say how many tokens, in which windows, drawn with which seed
    from the train blocks of `token_files` ({data node: its tokens file}, the data both models share);
    `models` and `saes` are keyed 'parent' and 'child'. Returns the manifest, each side's non-zero
    codes and the encoding seconds."""
    import json
    import time

    from featureflow_dagster.blocks import load_blocks
    from featureflow_dagster.storage import file_sha256

    refs, blocks, data_hashes = [], [], {}
    for owner, path in token_files.items():
        data_hashes[owner] = file_sha256(path)
        for source, b in load_blocks(path, "train").items():
            refs.append(f"{owner}/{source}")
            blocks.append(b)
    windows, origin = edge_windows(blocks, settings["context"], settings["tokens"], settings["seed"])
    n_chunks = -(-windows.shape[0] // max(1, settings["chunk_tokens"] // settings["context"]))
    chunk_windows = -(-windows.shape[0] // n_chunks)  # equal chunks, none nearly empty
    started = time.perf_counter()
    files, nnz = write_codes(models["parent"], models["child"], saes["parent"], saes["child"], windows, origin, folder,
                             chunk_windows, device, batch_windows=batch_windows, log=log)
    seconds = time.perf_counter() - started
    counts = torch.bincount(origin[:, 0].long(), minlength=len(refs)).tolist()
    manifest = {
        "parent": edge.parent, "child": edge.child, "tokens": windows.numel(), "windows": int(windows.shape[0]),
        "context": settings["context"], "seed": settings["seed"], "sources": refs,
        "windows_per_source": dict(zip(refs, counts)),
        "d_sae": {"parent": saes["parent"].cfg.d_sae, "child": saes["child"].cfg.d_sae},
        "files": [{"name": f, "sha256": file_sha256(folder / f)} for f in files],
        "tokens_data_sha256": data_hashes,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest, nnz, seconds


def read_code_chunks(folder: Path, files: list[str], m: int, n: int) -> Iterator[tuple[sp.csr_matrix, sp.csr_matrix]]:
    """(parent codes [t, m], child codes [t, n]) per chunk file, as scipy CSR."""
    for name in files:
        with safe_open(str(folder / name), framework="np") as f:
            sides = []
            for side, width in (("parent", m), ("child", n)):
                indptr = f.get_tensor(f"{side}.indptr")
                sides.append(sp.csr_matrix((f.get_tensor(f"{side}.values"), f.get_tensor(f"{side}.indices"), indptr),
                                           shape=(indptr.size - 1, width)))
        yield sides[0], sides[1]


def edge_windows(blocks: list[torch.Tensor], context: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`tokens // context` windows drawn uniformly without replacement from the shared sources'
    blocks [rows, n_ctx]: (token ids int32 [n, context], origin int32 [n, 3] = source, row, offset)."""
    n_ctx = blocks[0].shape[1]
    n_windows = tokens // context
    available = sum(b.shape[0] for b in blocks) * (n_ctx // context) * context
    if n_windows == 0 or n_windows * context > available:
        raise ValueError(f"flow.tokens = {tokens:,} but the data both models share holds {available:,} tokens "
                         f"in {context}-token windows; set flow.tokens between {context} and {available:,}")
    origin = sample_windows([b.shape[0] for b in blocks], n_ctx, context, n_windows, seed)
    return gather_windows(blocks, origin, context), origin
