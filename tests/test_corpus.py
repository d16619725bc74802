"""Sources read real text; splits are deterministic and content-hashed; hf sources work offline."""

import pandas as pd
import pytest

from featureflow_dagster.blocks import tokenize_to_blocks
from featureflow_dagster.corpus import Document, build_corpus, hash_documents, is_validation, read_documents, split_documents
from featureflow_dagster.lineage import FilesSource, HFSource, StdlibSource
from featureflow_dagster.tokenizer import train_bpe


def test_stdlib_kinds_read_real_text():
    docs = list(read_documents(StdlibSource(name="e", kind="stdlib", what="docs", max_documents=3)))
    assert len(docs) == 3 and all(d.doc_id.startswith("pydoc_data/topics:") for d in docs)
    src = list(read_documents(StdlibSource(name="p", kind="stdlib", what="source", include=["json/*.py"])))
    assert {d.doc_id for d in src} >= {"json/__init__.py", "json/decoder.py"}
    assert "def " in src[0].text
    top = list(read_documents(StdlibSource(name="p", kind="stdlib", what="source", include=["*.py"], max_documents=50)))
    assert all("/" not in d.doc_id for d in top)  # '*.py' is the top level only
    ds = list(read_documents(StdlibSource(name="d", kind="stdlib", what="docstrings", include=["json/*.py"])))
    assert ds and all(len(d.text) >= 40 for d in ds)


def test_split_is_deterministic_and_content_hashed():
    docs = [Document(f"d{i}", f"document number {i} " * 5) for i in range(400)]
    train, val = split_documents(docs, 0.1)
    assert 20 < len(val) < 70 and len(train) + len(val) == 400
    # same content under another id lands on the same side; order does not matter
    renamed = [Document("x" + d.doc_id, d.text) for d in reversed(docs)]
    train2, val2 = split_documents(renamed, 0.1)
    assert [d.text for d in val2] == [d.text for d in val]
    assert all(is_validation(d, 0.1) for d in val)
    assert hash_documents(train) == hash_documents(split_documents(docs, 0.1)[0])


def test_hf_source_loads_a_local_dataset_in_hub_format(tmp_path):
    """The paper's sources are hub data sets; the same loader reads a local folder of parquet shards."""
    texts = [d.text for d in read_documents(StdlibSource(name="e", kind="stdlib", what="docs", max_documents=30))]
    folder = tmp_path / "small-stack" / "data"
    folder.mkdir(parents=True)
    pd.DataFrame({"content": texts[:20]}).to_parquet(folder / "train-00000-of-00002.parquet")
    pd.DataFrame({"content": texts[20:]}).to_parquet(folder / "train-00001-of-00002.parquet")
    src = HFSource(name="lua", kind="hf", path=str(tmp_path / "small-stack"), text_column="content")
    docs = list(read_documents(src))
    assert [d.text for d in docs] == texts
    streamed = list(read_documents(src.model_copy(update={"streaming": True, "max_documents": 5})))
    assert [d.text for d in streamed] == texts[:5]
    with pytest.raises(ValueError, match="no column 'text'"):
        list(read_documents(src.model_copy(update={"text_column": "text"})))


def test_files_source_and_corpus_table(tmp_path):
    for i in range(30):
        (tmp_path / f"f{i}.lua").write_text(f"local x{i} = {i}\nreturn x{i}\n" * (i + 1))
    src = FilesSource(name="lua", kind="files", paths=[str(tmp_path / "*.lua")], validation_fraction=0.2)
    table, stats = build_corpus([src])
    assert set(table["split"]) == {"train", "validation"}
    assert stats["lua"]["documents_train"] + stats["lua"]["documents_validation"] == 30


def test_blocks_respect_budget_and_separate_documents():
    docs = [Document(str(i), "alpha beta gamma delta " * 20) for i in range(20)]
    tok = train_bpe([d.text for d in docs], 300)
    blocks, seen = tokenize_to_blocks(tok, docs, 16, budget=100)
    assert blocks.shape == (6, 16) and seen >= 100
    full, _ = tokenize_to_blocks(tok, docs, 16, budget=None)
    assert (full == tok.eos_token_id).sum() >= 19  # one end-of-text per document, minus the dropped tail


def test_the_same_blocks_give_the_same_bytes_in_every_process(tmp_path):
    """safetensors orders several metadata keys differently from process to process; token blocks are
    written so that their bytes (whose sha256 the edges' manifests record) do not depend on the process."""
    import hashlib
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from featureflow_dagster.blocks import SourceBlocks, save_blocks\n"
        "b = {'python': SourceBlocks(torch.arange(32, dtype=torch.int32).reshape(4, 8), torch.arange(8, dtype=torch.int32).reshape(1, 8), 32)}\n"
        "save_blocks(sys.argv[1], b, {'node': 'base', 'n_ctx': '8', 'hash': 'h', 'source': 'python'})\n"
    )
    digests = set()
    for i in range(4):
        out = tmp_path / f"blocks{i}.safetensors"
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, timeout=120)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1
