"""Data assets: documents per node (`corpus`), the lineage's `tokenizer`, token blocks (`tokens`)."""


import dagster as dg
import pandas as pd

from featureflow_dagster.blocks import blocks_hash, build_blocks, save_blocks
from featureflow_dagster.corpus import build_corpus
from featureflow_dagster.lineage import Lineage
from featureflow_dagster.provenance import versions
from featureflow_dagster.resources import ArtifactStore
from featureflow_dagster.tokenizer import build_tokenizer, load_tokenizer
from featureflow_dagster.assets.partitions import data_node_partitions
from featureflow_dagster.assets.guard import locked, step_log
from featureflow_dagster.assets.config import CODE_VERSIONS, config_dep


def build_data_assets(lineage: Lineage) -> list[dg.AssetsDefinition]:
    partitions = data_node_partitions(lineage)
    base = lineage.base.name

    data_nodes = partitions.get_partition_keys()

    @dg.asset(
        partitions_def=partitions,
        deps=[config_dep("corpus", data_nodes)],
        group_name="data",
        kinds={"parquet"},
        code_version=CODE_VERSIONS["corpus"],
        description="Documents of each data node's sources, split train/validation by content hash.",
    )
    @locked
    def corpus(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        node = lineage.node(context.partition_key)
        table, stats = build_corpus(node.data.sources, log=step_log(context))
        path = store.corpus_path(node.name)
        with store.write_file(path) as tmp:
            table.to_parquet(tmp, index=False)
        data_hash = _combined(stats, "hash_train", "hash_validation")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(data_hash),
            metadata={
                "path": dg.MetadataValue.path(str(path)),
                "sources": dg.MetadataValue.json(stats),
                "documents": len(table),
                "data_hash": data_hash,
                "versions": dg.MetadataValue.json(versions()),
            },
        )

    @dg.asset(
        deps=[dg.AssetDep(corpus, partition_mapping=dg.SpecificPartitionsPartitionMapping([base])), config_dep("tokenizer")],
        group_name="data",
        kinds={"huggingface"},
        code_version=CODE_VERSIONS["tokenizer"],
        description="The lineage's tokenizer: a BPE trained on the base node's training documents, or a named one.",
    )
    @locked
    def tokenizer(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        spec = lineage.tokenizer
        table = pd.read_parquet(store.corpus_path(base)) if spec.kind == "bpe" else None
        tok = build_tokenizer(spec, table, context.log.info)
        out = store.tokenizer_dir()
        with store.write_dir(out) as tmp:
            tok.save_pretrained(str(tmp))
        digest = _tokenizer_hash(tok)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(digest),
            metadata={"path": dg.MetadataValue.path(str(out)), "kind": spec.kind, "vocab_size": len(tok), "hash": digest},
        )

    @dg.asset(
        partitions_def=partitions,
        deps=[corpus, tokenizer, config_dep("tokens", data_nodes)],
        group_name="data",
        kinds={"safetensors"},
        code_version=CODE_VERSIONS["tokens"],
        description="n_ctx-token blocks per source and split, within the node's token budgets.",
    )
    @locked
    def tokens(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        node = lineage.node(context.partition_key)
        tok = load_tokenizer(store.tokenizer_dir())
        table = pd.read_parquet(store.corpus_path(node.name))
        n_ctx = lineage.model_spec(node.name).n_ctx
        blocks, stats = build_blocks(tok, table, node.data, n_ctx, log=step_log(context))
        digest = blocks_hash(blocks)
        path = store.tokens_path(node.name)
        with store.write_file(path) as tmp:
            save_blocks(tmp, blocks, {"node": node.name, "n_ctx": str(n_ctx), "hash": digest})
        return dg.MaterializeResult(
            data_version=dg.DataVersion(digest),
            metadata={
                "path": dg.MetadataValue.path(str(path)),
                "n_ctx": n_ctx,
                "train_tokens": sum(s["train_tokens"] for s in stats.values()),
                "sources": dg.MetadataValue.json(stats),
                "data_hash": digest,
            },
        )

    return [corpus, tokenizer, tokens]


def _combined(stats: dict[str, dict], *keys: str) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(stats):
        for k in keys:
            h.update(stats[name][k].encode())
    return h.hexdigest()


def _tokenizer_hash(tok) -> str:
    import hashlib

    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()
