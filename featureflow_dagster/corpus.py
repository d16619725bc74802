"""Reading documents from data sources and splitting them deterministically.

A document is one unit of text (a file, a data-set record, a documentation topic, a docstring).
The train/validation split is decided per document by a hash of its content, so it is the same on
every machine and every run, and identical documents always land on the same side.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from featureflow_dagster.lineage import FilesSource, HFSource, StdlibSource

# Parts of the standard library that are not the language's own code or prose: third-party
# packages, the test suite (absent from many installations), machine-generated codec tables, and
# the documentation topics (read as 'docs', not as source).
STDLIB_EXCLUDE = (
    "site-packages/*",
    "dist-packages/*",
    "test/*",
    "*/test/*",
    "*/tests/*",
    "*/idle_test/*",
    "pydoc_data/*",
    "encodings/*",
    "config-*",
    "__phello__/*",
)


@dataclass(frozen=True)
class Document:
    doc_id: str  # stable identity within its source: a relative path, a topic name, a record index
    text: str

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files(src: StdlibSource) -> list[Path]:
    """Files matching `include` (globs from the stdlib folder: '*.py' is top level only, '**/*.py'
    recurses) and none of STDLIB_EXCLUDE + `exclude` (fnmatch patterns, where '*' crosses '/')."""
    root = stdlib_dir()
    found = {p for pattern in src.include for p in root.glob(pattern) if p.is_file()}
    out = []
    for path in sorted(found):
        rel = path.relative_to(root).as_posix()
        if any(fnmatch.fnmatch(rel, pat) for pat in (*STDLIB_EXCLUDE, *src.exclude)):
            continue
        out.append(path)
    return out


def _docstrings(path: Path, rel: str) -> Iterator[Document]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return  # a few stdlib files are templates or use other encodings; they hold no docstrings we need
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= 40:
                name = getattr(node, "name", "<module>")
                yield Document(f"{rel}:{node.__class__.__name__}:{name}:{getattr(node, 'lineno', 0)}", doc)


def read_stdlib(src: StdlibSource) -> Iterator[Document]:
    if src.what == "docs":
        from pydoc_data.topics import topics  # the interpreter's own English reference documentation

        for name in sorted(topics):
            yield Document(f"pydoc_data/topics:{name}", topics[name])
        return
    root = stdlib_dir()
    for path in _stdlib_files(src):
        rel = path.relative_to(root).as_posix()
        if src.what == "source":
            try:
                yield Document(rel, path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                continue  # a handful of test fixtures are deliberately not UTF-8
        else:
            yield from _docstrings(path, rel)


def read_files(src: FilesSource) -> Iterator[Document]:
    for path in src.matched_files():
        yield Document(str(path), path.read_text(encoding=src.encoding, errors="replace"))


def read_hf(src: HFSource) -> Iterator[Document]:
    """Records of a Hugging Face data set, hub name or local folder, in the data set's order."""
    import datasets

    local = src.local_path()
    ds = datasets.load_dataset(
        str(local) if local is not None else src.path,
        src.subset,
        split=src.split,
        streaming=src.streaming,
    )
    columns = ds.column_names if not src.streaming else (ds.column_names or [src.text_column])
    if columns is not None and src.text_column not in columns:
        raise ValueError(
            f"source '{src.name}': data set {src.path} has no column '{src.text_column}'; columns: {columns}. "
            "Set 'text_column' in the lineage."
        )
    for i, record in enumerate(ds):
        text = record[src.text_column]
        if text:
            yield Document(f"{src.path}:{src.split}:{i}", text)


# A streamed hub source with a token budget is read until it holds this many characters per budgeted
# token (tokenizers give 2-5 characters per token on English and code), so that a 1/20 run of a large
# data set reads about 1/20 of it instead of all of it.
STREAM_CHARS_PER_TOKEN = 8


def read_documents(src) -> Iterator[Document]:
    """Documents of any source kind, at most `src.max_documents` of them, empty ones dropped."""
    reader = {"stdlib": read_stdlib, "files": read_files, "hf": read_hf}[src.kind]
    n, chars = 0, 0
    enough = (STREAM_CHARS_PER_TOKEN * src.tokens / (1 - src.validation_fraction)
              if src.kind == "hf" and src.streaming and src.tokens else None)
    for doc in reader(src):
        if not doc.text.strip():
            continue
        yield doc
        n, chars = n + 1, chars + len(doc.text)
        if src.max_documents is not None and n >= src.max_documents:
            return
        if enough is not None and chars >= enough:
            return


def is_validation(doc: Document, fraction: float) -> bool:
    """Hash-based split: the first 8 bytes of the content hash as a number in [0, 1)."""
    return int(doc.content_hash[:16], 16) / 16**16 < fraction


def split_documents(docs: list[Document], fraction: float) -> tuple[list[Document], list[Document]]:
    """(train, validation), each ordered by content hash: a deterministic shuffle that does not
    depend on file-system order, so a token budget takes the same documents everywhere."""
    train = sorted((d for d in docs if not is_validation(d, fraction)), key=lambda d: d.content_hash)
    val = sorted((d for d in docs if is_validation(d, fraction)), key=lambda d: d.content_hash)
    if not train:
        raise ValueError(f"all {len(docs)} documents fell into validation; add documents or lower validation_fraction")
    return train, val


def hash_documents(docs: list[Document]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.doc_id.encode())
        h.update(d.content_hash.encode())
    return h.hexdigest()


def build_corpus(sources: list, log=None) -> tuple["pd.DataFrame", dict[str, dict]]:
    """Read and split every source of a node: a table (source, split, doc_id, text) ordered by
    source then split then content hash, and per-source statistics with a data hash each."""
    import pandas as pd

    frames, stats = [], {}
    for src in sources:
        docs = list(read_documents(src))
        if not docs:
            raise ValueError(f"source '{src.name}' ({src.kind}) yielded no documents")
        train, val = split_documents(docs, src.validation_fraction)
        if not val:
            raise ValueError(
                f"source '{src.name}': none of its {len(docs)} documents fell into validation; "
                "raise validation_fraction or add documents"
            )
        for split, part in (("train", train), ("validation", val)):
            frames.append(
                pd.DataFrame(
                    {
                        "source": src.name,
                        "split": split,
                        "doc_id": [d.doc_id for d in part],
                        "text": [d.text for d in part],
                    }
                )
            )
        stats[src.name] = {
            "kind": src.kind,
            "documents_train": len(train),
            "documents_validation": len(val),
            "chars_train": sum(len(d.text) for d in train),
            "chars_validation": sum(len(d.text) for d in val),
            "hash_train": hash_documents(train),
            "hash_validation": hash_documents(val),
        }
        if log:
            log(f"source '{src.name}': {len(train)} train / {len(val)} validation documents")
    return pd.concat(frames, ignore_index=True), stats


def documents_of(table, source: str, split: str) -> list[Document]:
    rows = table[(table["source"] == source) & (table["split"] == split)]
    return [Document(i, t) for i, t in zip(rows["doc_id"], rows["text"])]


def corpus_hash(stats: dict[str, dict]) -> str:
    """One hash over every source's train and validation document hashes (`build_corpus`'s stats)."""
    h = hashlib.sha256()
    for name in sorted(stats):
        for split in ("hash_train", "hash_validation"):
            h.update(stats[name][split].encode())
    return h.hexdigest()
