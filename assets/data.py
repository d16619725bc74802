"""Data assets: documents per node (`corpus`), the lineage's `tokenizer`, token blocks (`tokens`)."""

import dagster as dg

from featureflow_dagster.corpus import build_corpus, corpus_hash
from featureflow_dagster.lineage import Lineage
from featureflow_dagster.pretrained import resolve
from featureflow_dagster.resources import ArtifactStore
from featureflow_dagster.tokenizer import build_tokenizer, load_tokenizer, tokenizer_hash
from featureflow_dagster.assets.partitions import data_node_partitions
from featureflow_dagster.assets.guard import step_log
from featureflow_dagster.assets.spec import Artefact


def _data_nodes(lineage: Lineage, settings) -> dict:
    return {n.name: settings(n) for n in lineage.nodes if n.data is not None}


CORPUS = Artefact(
    "corpus", "data", "1", "corpus/{key}.parquet",
    # budgets choose tokens, not documents: they version the token blocks only
    settings=lambda lineage: _data_nodes(lineage, lambda node: [
        s.model_dump(mode="json", exclude={"tokens", "weight", "expected_tokens"}) for s in node.data.sources]),
    key_figures=("documents",), kinds=frozenset({"parquet"}),
    description="Documents of each data node's sources, split train/validation by content hash.",
)
TOKENIZER = Artefact(
    "tokenizer", "data", "1", "tokenizer",
    settings=lambda lineage: {None: {**lineage.tokenizer.model_dump(mode="json"),
                                     **({"base": lineage.base.pretrained.model_dump(mode="json")} if lineage.tokenizer.kind == "model" else {})}},
    key_figures=("vocab_size",), kinds=frozenset({"huggingface"}),
    description="The lineage's tokenizer: a BPE trained on the base node's training documents, or a named one.",
)
TOKENS = Artefact(
    "tokens", "data", "1", "tokens/{key}.safetensors",
    settings=lambda lineage: _data_nodes(lineage, lambda node: {
        "data": node.data.model_dump(mode="json", exclude={"sources": {"__all__": {"expected_tokens"}}}),
        "n_ctx": lineage.block_n_ctx}),
    key_figures=("train_tokens",), kinds=frozenset({"safetensors"}),
    description="n_ctx-token blocks per source and split, within the node's token budgets.",
)
ARTEFACTS = [CORPUS, TOKENIZER, TOKENS]


def build(lineage: Lineage) -> list[dg.AssetsDefinition]:
    partitions = data_node_partitions(lineage)
    base = lineage.base.name

    @CORPUS.asset(partitions_def=partitions, deps=[])
    def corpus(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        node = lineage.node(context.partition_key)
        table, stats = build_corpus(node.data.sources, log=step_log(context))
        path = CORPUS.at(store, node.name)
        with store.write_file(path) as tmp:
            table.to_parquet(tmp, index=False)
        data_hash = corpus_hash(stats)
        return CORPUS.result(path, data_hash, {"sources": dg.MetadataValue.json(stats), "documents": len(table), "data_hash": data_hash})

    from_model = lineage.tokenizer.kind == "model"
    source = dg.AssetKey(["pretrained", base]) if from_model else dg.AssetDep(corpus, partition_mapping=dg.SpecificPartitionsPartitionMapping([base]))

    @TOKENIZER.asset(deps=[source])
    def tokenizer(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        import pandas as pd
        spec = lineage.tokenizer
        if from_model:  # the tokenizer that comes with the base's pretrained model
            tok = load_tokenizer(resolve(base, lineage.base.pretrained).folder)
        else:
            table = pd.read_parquet(CORPUS.at(store, base)) if spec.kind == "bpe" else None
            tok = build_tokenizer(spec, table, context.log.info)
        out = TOKENIZER.at(store)
        with store.write_dir(out) as tmp:
            tok.save_pretrained(str(tmp))
        digest = tokenizer_hash(tok)
        return TOKENIZER.result(out, digest, {"kind": spec.kind, "vocab_size": len(tok), "hash": digest})

    @TOKENS.asset(partitions_def=partitions, deps=[corpus, tokenizer])
    def tokens(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        import pandas as pd
        from featureflow_dagster.blocks import blocks_hash, build_blocks, save_blocks
        node = lineage.node(context.partition_key)
        tok = load_tokenizer(TOKENIZER.at(store))
        table = pd.read_parquet(CORPUS.at(store, node.name))
        n_ctx = lineage.block_n_ctx
        blocks, stats = build_blocks(tok, table, node.data, n_ctx, log=step_log(context))
        digest = blocks_hash(blocks)
        path = TOKENS.at(store, node.name)
        with store.write_file(path) as tmp:
            save_blocks(tmp, blocks, {"node": node.name, "n_ctx": str(n_ctx), "hash": digest})
        return TOKENS.result(path, digest, {"n_ctx": n_ctx, "train_tokens": sum(s["train_tokens"] for s in stats.values()),
                                            "sources": dg.MetadataValue.json(stats), "data_hash": digest})

    return [corpus, tokenizer, tokens]
