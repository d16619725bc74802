"""Persist / disappear / emerge, splits, merges, trajectories and headline counts on hand-built matrices."""

import numpy as np
import pandas as pd
import pytest
import torch

from featureflow_dagster.correlation import Correlation, FeatureMoments, TopMatches
from featureflow_dagster.flow import (
    add_cosines,
    agreement,
    classify_aligned,
    classify_edge,
    decoder_matches,
    decoder_table,
    edge_counts,
    edge_windows,
    flow_volumes,
    headline_counts,
    lineage_paths,
    matches_table,
    method_agreement,
    read_code_chunks,
    trajectories,
    trajectory_summary,
    write_codes,
)
from featureflow_dagster.plots import flow_sankey_figure
from featureflow_dagster.lineage import parse_lineage


def _corr(r: np.ndarray, k: int = 3, dead_parent=(), dead_child=()) -> Correlation:
    r = r.astype(float).copy()
    r[list(dead_parent), :] = np.nan
    r[:, list(dead_child)] = np.nan

    def top(mat):
        order = np.argsort(-np.nan_to_num(mat, nan=-np.inf), axis=1)[:, :k]
        vals = np.take_along_axis(mat, order, 1)
        return TopMatches(np.where(np.isnan(vals), -1, order), vals)

    def moments(size, dead):  # unit variance, or none at all for the dead features
        sum_sq = np.ones(size)
        sum_sq[list(dead)] = 0.0
        return FeatureMoments(tokens=1, sum=np.zeros(size), sum_sq=sum_sq)

    m, n = r.shape
    return Correlation(moments(m, dead_parent), moments(n, dead_child), top(r), top(r.T))


R = np.array([
    # child:  0     1     2     3
    [0.95, 0.10, 0.85, 0.00],  # parent 0 persists and splits into 0 and 2
    [0.20, 0.30, 0.10, 0.40],  # parent 1 disappears
    [0.05, 0.90, 0.00, 0.10],  # parent 2 persists into 1
    [0.10, 0.82, 0.00, 0.00],  # parent 3 persists into 1: child 1 is a merge of 2 and 3
])


def test_classification_splits_and_merges():
    parent, child = classify_edge(matches_table(_corr(R)), threshold=0.8)
    assert parent["status"].tolist() == ["persists", "disappears", "persists", "persists"]
    assert child["status"].tolist() == ["persisted", "persisted", "persisted", "emerged"]
    assert parent.loc[0, "split"] and sorted(parent.loc[0, "partners"]) == [0, 2]
    assert child.loc[1, "merge"] and sorted(child.loc[1, "partners"]) == [2, 3]
    assert edge_counts(parent, child) == {
        "parent_persisting": 3, "parent_disappearing": 1, "parent_dead": 0, "child_persisted": 3,
        "child_emerged": 1, "child_dead": 0, "splits": 1, "merges": 1}


def test_aligned_pairs_classify_feature_i_against_feature_i_only_and_agree_with_matching_where_they_should():
    """flow.warm_start: R's diagonal is each same-index pair (parent i with the warm child's i). Parent 0 pairs at
    0.95 and persists; parent 1 at 0.30 disappears; parent 2 pairs with child 2 at 0.00, so it disappears by aligned
    pairs though matching finds it in child 1 (0.90): the two methods disagree there, as the table must say."""
    aligned = pd.DataFrame({"feature": [3, 2, 1, 0, 4], "decoder_cosine": [0.1, 0.2, 0.5, 0.99, 0.7],
                            "activation_r": [0.0, 0.0, 0.30, 0.95, np.nan],
                            "parent_fired": [5, 9, 9, 9, 0], "child_fired": [0, 9, 9, 9, 3]})
    parent, child = classify_aligned(aligned, threshold=0.8)
    assert parent["feature"].tolist() == [0, 1, 2, 3, 4]  # sorted back by feature
    assert parent["status"].tolist() == ["persists", "disappears", "disappears", "disappears", "dead"]
    assert child["status"].tolist() == ["persisted", "emerged", "emerged", "dead", "emerged"]
    assert parent["partners"].tolist() == [[0], [], [], [], []] and parent.loc[0, "decoder_cosine"] == 0.99
    assert edge_counts(parent, child) == {
        "parent_persisting": 1, "parent_disappearing": 3, "parent_dead": 1, "child_persisted": 1,
        "child_emerged": 3, "child_dead": 1, "splits": 0, "merges": 0}
    matched, _ = classify_edge(matches_table(_corr(np.pad(R, ((0, 1), (0, 1))))), threshold=0.8)  # parent 4: r 0 everywhere
    # parents 0-3 live both ways (4 is dead by aligned pairs): 0 by both, 2 and 3 by matching only, 1 by neither
    assert method_agreement(matched, parent) == {"both": 1, "matching_only": 2, "aligned_only": 0, "neither": 1}
    assert classify_aligned(aligned, threshold=0.2)[0]["status"].tolist()[:2] == ["persists", "persists"]


def test_the_seed_null_flags_reproducible_features_and_sets_each_edges_counts_beside_it():
    """Two seed SAEs of the parent: parent 0 is found again by both (reproducible), parent 2 by one only, parent 1
    by none, parent 3 is dead. On the edge (R above) 0, 2 and 3 persist by matching; among the reproducible
    parent features only 0 does, and the null expects 1 (two seeds of the parent share 1 live feature)."""
    from featureflow_dagster.flow.null import null_edge_counts, seed_summary, seed_table

    seed_1 = np.array([[0.97, 0, 0, 0], [0.5, 0.6, 0, 0], [0, 0, 0.85, 0], [0, 0, 0, 0]])
    seed_2 = np.array([[0, 0.91, 0, 0], [0.3, 0.2, 0, 0], [0, 0, 0.7, 0], [0, 0, 0, 0]])
    seeds = seed_table([matches_table(_corr(m, dead_parent=[3])) for m in (seed_1, seed_2)], threshold=0.8)
    assert seeds["reproducible"].tolist() == [True, False, False, False] and seeds["dead"].tolist() == [False, False, False, True]
    assert seeds[["partner_1", "partner_2"]].iloc[0].tolist() == [0, 1] and seeds.loc[2, "best_r_2"] == pytest.approx(0.7)
    summary = seed_summary(seeds)
    assert (summary["live"], summary["reproducible"]) == (3, 1) and summary["reproducibility"] == pytest.approx(1 / 3)
    assert summary["best_r_median"] == pytest.approx(np.median([0.97, 0.6, 0.85, 0.91, 0.5, 0.7]))
    parent, child = classify_edge(matches_table(_corr(R)), threshold=0.8)
    child_seeds = seeds.assign(reproducible=[False, True, False, False])  # the child's own null: its feature 1 reproduces
    counts = null_edge_counts(parent, child, seeds, child_seeds)
    assert counts == {"parent_live": 4, "parent_persisting": 3, "child_emerged": 1, "parent_persisting_reproducible": 1,
                      "null_expected_persisting": 1, "persisting_vs_null": 1.0, "child_emerged_reproducible": 0}
    assert "null_expected_persisting" not in null_edge_counts(parent, child, None, None)  # a node without a null (published SAE)


def test_one_to_one_pairs_maximise_the_total_similarity_as_brute_force_does_and_leave_dead_features_out():
    import itertools

    from featureflow_dagster.flow.matching import decoder_cosines, one_to_one

    rng = np.random.default_rng(0)
    r = rng.uniform(-0.2, 1.0, (5, 6)).astype(np.float32)
    r[1, :] = np.nan  # a dead parent feature
    r[:, 4] = np.nan  # a dead child feature
    w_p, w_c = torch.randn(5, 8, generator=torch.Generator().manual_seed(1)), torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    cos = decoder_cosines(w_p, w_c)
    assert cos[2, 3] == pytest.approx(float(torch.nn.functional.cosine_similarity(w_p[2], w_c[3], dim=0)), abs=1e-6)
    pairs, summary = one_to_one(r, cos, threshold=0.8)
    act = pairs[pairs["method"] == "activation"]
    live_p, live_c = [0, 2, 3, 4], [0, 1, 2, 3, 5]
    best = max(sum(float(r[p, c]) for p, c in zip(live_p, perm)) for perm in itertools.permutations(live_c, len(live_p)))
    assert act["similarity"].sum() == pytest.approx(best, rel=1e-6)
    assert sorted(act["parent"]) == live_p and act["child"].is_unique and 4 not in set(act["child"])
    assert summary["activation"]["pairs"] == 4 and summary["activation"]["mean_similarity"] == pytest.approx(best / 4, rel=1e-6)
    assert summary["activation"]["above_threshold"] == int((act["similarity"] > 0.8).sum())
    dec = pairs[pairs["method"] == "decoder"]
    best_cos = max(sum(float(cos[p, c]) for p, c in zip(range(5), perm)) for perm in itertools.permutations(range(6), 5))
    assert len(dec) == 5 and dec["similarity"].sum() == pytest.approx(best_cos, rel=1e-6)  # weights: nothing is dead


def test_threshold_is_a_parameter_and_dead_features_are_their_own_class():
    parent, child = classify_edge(matches_table(_corr(R, dead_parent=[1], dead_child=[3])), threshold=0.9)
    assert parent["status"].tolist() == ["persists", "dead", "disappears", "disappears"]
    assert child["status"].tolist() == ["persisted", "emerged", "emerged", "dead"]


LINEAGE = {
    "name": "t", "model": {"d_model": 16, "d_mlp": 32, "n_heads": 2, "n_ctx": 32},
    "nodes": [
        {"name": "base", "kind": "base", "data": {"sources": [{"name": "s", "kind": "stdlib", "what": "docs"}]}},
        {"name": "lua", "kind": "finetune", "parents": ["base"], "data": {"sources": [{"name": "l", "kind": "stdlib", "what": "docs"}]}},
        {"name": "stories", "kind": "finetune", "parents": ["base"], "data": {"sources": [{"name": "t", "kind": "stdlib", "what": "docs"}]}},
        {"name": "luastories", "kind": "merge", "parents": ["lua", "stories"]},
    ],
}


def test_trajectories_and_headline_counts_through_a_merge():
    lin = parse_lineage(LINEAGE)
    # base -> lua: base 0 -> lua 0, base 1 -> lua 1, base 2 disappears; lua 2 emerged
    b_l = np.array([[0.9, 0, 0], [0, 0.9, 0], [0, 0, 0.1]])
    # base -> stories: only base 2 persists (into stories 2)
    b_s = np.array([[0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.9]])
    # lua -> luastories: lua 0 -> ls 0, lua 2 -> ls 1; stories -> luastories: stories 2 -> ls 2
    l_ls = np.array([[0.9, 0, 0], [0, 0, 0], [0, 0.9, 0]])
    s_ls = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0.9]])
    tables = {e: classify_edge(matches_table(_corr(m)), 0.8) for e, m in {
        ("base", "lua"): b_l, ("base", "stories"): b_s, ("lua", "luastories"): l_ls, ("stories", "luastories"): s_ls}.items()}
    heads = headline_counts(lin, tables)
    assert heads["base_features_persisting_into_any_child"] == 3
    merge = heads["merges"]["luastories"]
    assert merge["traceable_to_any_parent"] == 3
    assert merge["per_parent"]["lua"] == {"traceable": 2, "emerged_in_finetuning": 1, "persisted_from_ancestor": 1}
    assert merge["per_parent"]["stories"] == {"traceable": 1, "emerged_in_finetuning": 0, "persisted_from_ancestor": 1}
    traj = trajectories(lin, tables)
    via_lua = traj[(traj["path"] == "base>lua>luastories") & (traj["start_node"] == "base")].set_index("start_feature")
    assert via_lua.loc[0, "features"] == [0, 0, 0] and via_lua.loc[0, "reaches_end"]  # persists all the way
    assert via_lua.loc[1, "features"] == [1, 1] and via_lua.loc[1, "end_node"] == "lua"  # then disappears
    assert via_lua.loc[2, "features"] == [2] and via_lua.loc[2, "hops"] == 0  # gone at the first hop
    assert via_lua.loc[0, "r"] == [0.9, 0.9] and via_lua.loc[0, "min_r"] == 0.9
    # lua 2 emerged in fine-tuning and persists into the merge (as luastories 1)
    emerged = traj[(traj["path"] == "base>lua>luastories") & (traj["start_node"] == "lua")]
    assert emerged["start_feature"].tolist() == [2] and emerged.iloc[0]["features"] == [2, 1]
    via_stories = traj[(traj["path"] == "base>stories>luastories") & (traj["start_node"] == "base")]
    assert len(via_stories) == 3 and via_stories.set_index("start_feature").loc[2, "features"] == [2, 2, 2]
    summary = trajectory_summary(traj)
    row = summary[(summary["path"] == "base>stories>luastories") & (summary["end_node"] == "luastories")]
    assert row["features"].tolist() == [1]

    vol = flow_volumes(lin, tables)
    links = {(l["source"], l["target"]): l["value"] for l in vol["links"]}
    # every child's inflow is its live features: traced (once, to the best parent) + emerged
    assert links[("lua", "luastories")] == 2 and links[("stories", "luastories")] == 1
    assert links[("emerged in luastories", "luastories")] == 0
    assert links[("base", "lua")] + links[("emerged in lua", "lua")] == 3
    assert links[("base", "lost base → lua")] == 1 and links[("base", "lost base → stories")] == 2
    assert vol["shares"]["base->lua"] == pytest.approx(2 / 3) and vol["shares"]["base->stories"] == pytest.approx(1 / 3)
    fig = flow_sankey_figure(vol, 0.8, "t")
    assert "67% persist" in fig.layout.title.text and len(fig.data[0].link.value) == len(vol["links"])


def test_lineage_paths_go_through_both_parents_of_a_merge():
    assert lineage_paths(parse_lineage(LINEAGE)) == [["base", "lua", "luastories"], ["base", "stories", "luastories"]]


def test_decoder_matches_equal_brute_force_both_ways():
    g = torch.Generator().manual_seed(0)
    wp, wc = torch.randn(37, 8, generator=g), torch.randn(29, 8, generator=g)
    wc[5] = wp[11] * 3  # the same direction, another scale: cosine 1
    top_p, top_c = decoder_matches(wp, wc, k=4, block=10)
    cos = (torch.nn.functional.normalize(wp, dim=1) @ torch.nn.functional.normalize(wc, dim=1).T).numpy()
    assert np.array_equal(top_p.index, np.argsort(-cos, axis=1)[:, :4])
    assert np.array_equal(top_c.index, np.argsort(-cos.T, axis=1)[:, :4])
    assert np.allclose(top_p.r, -np.sort(-cos, axis=1)[:, :4], atol=1e-6)
    assert top_p.index[11, 0] == 5 and top_c.index[5, 0] == 11 and top_p.r[11, 0] == pytest.approx(1.0)


def test_agreement_counts_same_best_partners_and_cosines():
    act = matches_table(_corr(R))
    wp = torch.eye(4)[:, :4]
    wc = torch.eye(4)[[0, 2, 1, 3]]  # child 0 ~ parent 0, child 1 ~ parent 2, child 2 ~ parent 1, child 3 ~ parent 3
    top_p, top_c = decoder_matches(wp, wc, k=3)
    matches = add_cosines(pd.concat([act, decoder_table(top_p, top_c)], ignore_index=True), wp, wc)
    agree = agreement(matches, 0.8).set_index("side")
    # activation best partners: parent 0->0, 1->3, 2->1, 3->1; decoder: 0->0, 1->2, 2->1, 3->3
    assert agree.loc["parent", "same_best_partner"] == 2 and agree.loc["parent", "agreement"] == 0.5
    assert agree.loc["parent", "matched_by_activation"] == 3 and agree.loc["parent", "same_best_partner_when_matched"] == 2
    assert agree.loc["parent", "median_cosine_of_decoder_best"] == pytest.approx(1.0)
    best = matches[(matches["method"] == "activation") & (matches["rank"] == 0) & (matches["direction"] == "parent_to_child")]
    assert best["cosine"].tolist() == [1.0, 0.0, 1.0, 0.0]
    # the decoder method classifies on its own scores
    parent, _ = classify_edge(matches, 0.8, method="decoder")
    assert parent["status"].tolist() == ["persists"] * 4 and parent["best_partner"].tolist() == [0, 2, 1, 3]


def test_edge_windows_draw_without_replacement_and_refuse_too_large_budgets():
    blocks = [torch.arange(40).reshape(5, 8), 100 + torch.arange(24).reshape(3, 8)]
    tokens, origin = edge_windows(blocks, context=4, tokens=64, seed=0)
    assert tokens.shape == (16, 4) and len({tuple(o) for o in origin.tolist()}) == 16  # all 16 windows, once each
    src, row, off = origin[3].tolist()
    assert tokens[3].tolist() == blocks[src][row, off : off + 4].tolist()
    with pytest.raises(ValueError, match="flow.tokens"):
        edge_windows(blocks, context=4, tokens=68, seed=0)


def test_codes_on_disk_equal_the_dense_encoding(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    from featureflow_dagster.activations import run_to_hook
    from featureflow_dagster.sae import SAEConfig
    from featureflow_dagster.sae.relu import ReLUSAE

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=2, head_dim=8, max_position_embeddings=16, sliding_window=None)
    models = [MistralForCausalLM(cfg).eval() for _ in range(2)]
    saes = [ReLUSAE(SAEConfig(architecture="relu", d_in=24, d_sae=96), seed=s) for s in (1, 2)]
    tokens = torch.randint(0, 50, (11, 6), dtype=torch.int32)
    origin = torch.zeros(11, 3, dtype=torch.int32)
    files, nnz = write_codes(*models, *saes, tokens, origin, tmp_path, chunk_windows=4, device=torch.device("cpu"), batch_windows=3)
    assert len(files) == 3
    chunks = list(read_code_chunks(tmp_path, files, 96, 96))
    assert nnz == {"parent": sum(c[0].nnz for c in chunks), "child": sum(c[1].nnz for c in chunks)}
    for side, (model, sae) in enumerate(zip(models, saes)):
        with torch.no_grad():
            acts = run_to_hook(model, tokens.long(), sae.cfg.hook_name)
            dense = sae.encode(acts.reshape(-1, 24)).numpy()
        ours = np.concatenate([c[side].toarray() for c in chunks])
        assert ours.shape == (66, 96) and (dense > 0).any()
        assert np.allclose(ours, dense, atol=1e-6)


def _tables(matrices: dict, dead_child: dict | None = None) -> dict:
    dead_child = dead_child or {}
    return {e: classify_edge(matches_table(_corr(m, dead_child=dead_child.get(e, ()))), 0.8) for e, m in matrices.items()}


def test_a_merge_feature_dead_on_one_incoming_edge_and_live_on_the_other_counts_once_as_live():
    """Each incoming edge of a merge is measured on its own shared data: a feature silent on one edge's
    data but firing on the other's is live (and here emerged), whichever edge comes first."""
    lin = parse_lineage(LINEAGE)
    eye = np.eye(3) * 0.9
    l_ls = np.array([[0.9, 0, 0], [0, 0.1, 0], [0, 0, 0.1]])  # luastories 0 <- lua 0; 1 unmatched; 2 silent here
    s_ls = np.zeros((3, 3)) + 0.1  # nothing matched; luastories 1 silent here, 2 fires and is unmatched
    matrices = {("base", "lua"): eye, ("base", "stories"): eye, ("lua", "luastories"): l_ls, ("stories", "luastories"): s_ls}
    for order in (list(matrices), list(reversed(matrices))):
        tables = _tables({e: matrices[e] for e in order},
                         {("lua", "luastories"): [2], ("stories", "luastories"): [1]})
        vol = flow_volumes(lin, tables)
        links = {(l["source"], l["target"]): l["value"] for l in vol["links"]}
        assert vol["live_features"]["luastories"] == 3, order
        assert links[("lua", "luastories")] == 1 and links[("stories", "luastories")] == 0
        assert links[("emerged in luastories", "luastories")] == 2, order
        assert vol["shares"]["lua->luastories"] == pytest.approx(1 / 3)


MERGE_OF_MERGES = {
    **LINEAGE,
    "nodes": [*LINEAGE["nodes"],
              {"name": "python", "kind": "finetune", "parents": ["base"], "data": {"sources": [{"name": "p", "kind": "stdlib", "what": "docs"}]}},
              {"name": "again", "kind": "merge", "parents": ["luastories", "python"], "merge": {"base": "base"}}],
}


def test_headline_counts_trace_a_merge_whose_parent_is_a_merge():
    lin = parse_lineage(MERGE_OF_MERGES)
    eye = np.eye(3) * 0.9
    # luastories: 0 from lua, 2 from stories, 1 matched in neither parent (emerged in merging)
    l_ls = np.array([[0.9, 0, 0], [0, 0.1, 0], [0, 0, 0.1]])
    s_ls = np.array([[0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.9]])
    tables = _tables({("base", "lua"): eye, ("base", "stories"): eye, ("base", "python"): eye,
                      ("lua", "luastories"): l_ls, ("stories", "luastories"): s_ls,
                      ("luastories", "again"): eye, ("python", "again"): np.zeros((3, 3))})
    heads = headline_counts(lin, tables)["merges"]
    assert heads["again"]["per_parent"]["luastories"] == {"traceable": 3, "emerged_in_finetuning": 1, "persisted_from_ancestor": 2}
    assert heads["again"]["per_parent"]["python"] == {"traceable": 0, "emerged_in_finetuning": 0, "persisted_from_ancestor": 0}
    assert heads["luastories"]["per_parent"]["lua"] == {"traceable": 1, "emerged_in_finetuning": 0, "persisted_from_ancestor": 1}


def test_batchtopk_codes_in_the_flow_do_not_depend_on_the_batch(tmp_path):
    """A saved BatchTopK SAE, loaded as feature_activations loads it, encodes each token by its threshold:
    the codes on disk are the same whatever the encoding batch, and the threshold stays put."""
    from transformers import MistralConfig, MistralForCausalLM

    from featureflow_dagster.sae import SAEConfig, load_sae
    from featureflow_dagster.sae.batchtopk import BatchTopKSAE

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=2, head_dim=8, max_position_embeddings=16, sliding_window=None)
    model = MistralForCausalLM(cfg).eval()
    sae = BatchTopKSAE(SAEConfig(architecture="batchtopk", d_in=24, d_sae=96, k=4), seed=1)
    sae.threshold.fill_(0.002)
    sae.save(tmp_path / "sae")
    tokens = torch.randint(0, 50, (12, 6), dtype=torch.int32)
    origin = torch.zeros(12, 3, dtype=torch.int32)
    codes = []
    for batch in (1, 5, 12):
        loaded = load_sae(tmp_path / "sae")
        out = tmp_path / f"codes{batch}"
        out.mkdir()
        files, _ = write_codes(model, model, loaded, loaded, tokens, origin, out, chunk_windows=12,
                               device=torch.device("cpu"), batch_windows=batch)
        codes.append(np.concatenate([c[0].toarray() for c in read_code_chunks(out, files, 96, 96)]))
        assert float(loaded.threshold) == pytest.approx(0.002)
    assert (codes[0] > 0).any()
    assert all(np.array_equal(c > 0, codes[0] > 0) and np.allclose(c, codes[0], atol=1e-6) for c in codes[1:])


def test_case_studies_pick_the_most_correlated_persisting_and_the_highest_scoring_disappearing_feature():
    from featureflow_dagster.flow import case_studies

    lin = parse_lineage(LINEAGE)
    # base 0 and base 1 persist along base>lua>luastories; base 1's hops have the higher r
    b_l = np.array([[0.85, 0, 0], [0, 0.95, 0], [0, 0, 0.1]])
    l_ls = np.array([[0.81, 0, 0], [0, 0.9, 0], [0, 0, 0.2]])
    b_s = np.array([[0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.9]])  # only base 2 persists into stories ...
    s_ls = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0.1]])  # ... and disappears in the merge: no path survivor
    tables = _tables({("base", "lua"): b_l, ("lua", "luastories"): l_ls, ("base", "stories"): b_s, ("stories", "luastories"): s_ls})
    # per node, a score of each feature (the LLR of its top token); NaN: too rare to be a candidate
    cases = case_studies(lin, tables, trajectories(lin, tables), {
        "base": np.array([2.0, 0.7, 1.0]), "lua": np.array([1.0, 1.0, 3.0]), "stories": np.array([np.nan, 0.2, 0.1])},
        score_name="llr")
    best = cases["persisting"]["base>lua>luastories"]
    assert best["features"] == [1, 1, 1] and best["r"] == [0.95, 0.9] and best["mean_r"] == pytest.approx(0.925)
    assert cases["persisting"]["base>stories>luastories"] is None
    gone = cases["disappearing"]
    assert gone["base->lua"]["feature"] == 2 and gone["lua->luastories"]["feature"] == 2
    assert gone["base->stories"]["feature"] == 0 and gone["base->stories"]["llr"] == 2.0  # the higher of 0 and 1
    # all three of stories' features disappear; 0 scores highest on nothing (NaN), 1 beats 2
    assert gone["stories->luastories"]["feature"] == 1 and gone["base->lua"]["best_r"] == pytest.approx(0.1)
