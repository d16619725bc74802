"""Sparse exact Pearson correlation against numpy.corrcoef; dead features; planted pairs."""

import numpy as np
import pytest
import scipy.sparse as sp

from featureflow_dagster.correlation import correlate_features, pearson_dense


def _codes(T, m, density, seed):
    rng = np.random.default_rng(seed)
    dense = rng.random((T, m)) * (rng.random((T, m)) < density)
    return dense


def _chunked(a, b, size):
    def gen():
        for s in range(0, a.shape[0], size):
            yield sp.csr_matrix(a[s : s + size]), sp.csr_matrix(b[s : s + size])
    return gen


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_equals_numpy_corrcoef_on_random_sparse_codes(method):
    a, b = _codes(500, 12, 0.2, 0), _codes(500, 9, 0.3, 1)
    b[:, 0] = a[:, 3] * 2 + 0.1 * b[:, 0]  # one strongly correlated pair
    res = correlate_features(_chunked(a, b, 64), 12, 9, top_k=3, row_block=5, method=method)
    assert res.method == method
    ref = np.corrcoef(a.T, b.T)[:12, 12:]
    assert np.allclose(pearson_dense(a, b), ref, atol=1e-12)
    # every row's top 3 equal numpy's three largest r, in order
    assert np.allclose(res.parent_top.r, -np.sort(-ref, axis=1)[:, :3], atol=1e-12)
    assert np.allclose(res.child_top.r, -np.sort(-ref.T, axis=1)[:, :3], atol=1e-12)
    assert (res.parent_top.index[:, 0] == np.nanargmax(ref, axis=1)).all()
    assert (res.child_top.index[:, 0] == np.nanargmax(ref, axis=0)).all()
    assert res.parent_top.r[3, 0] == pytest.approx(ref[3, 0]) and res.parent_top.index[3, 0] == 0
    assert np.allclose(res.child_top.r[:, 0], np.nanmax(ref, axis=0))


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_dead_features_are_flagged_and_never_matched(method):
    a, b = _codes(300, 6, 0.3, 2), _codes(300, 5, 0.3, 3)
    a[:, 2] = 0.0  # never fires
    b[:, 4] = 0.7  # fires on every token with the same value: no variance either
    res = correlate_features(_chunked(a, b, 50), 6, 5, top_k=5, method=method)
    assert res.parent_moments.dead.tolist() == [False, False, True, False, False, False]
    assert res.child_moments.dead.tolist() == [False, False, False, False, True]
    full = pearson_dense(a, b)
    assert np.isnan(full[2]).all() and np.isnan(full[:, 4]).all()
    assert (res.parent_top.index[2] == -1).all() and np.isnan(res.parent_top.r[2]).all()
    assert 4 not in res.parent_top.index and 2 not in res.child_top.index
    assert (res.parent_top.index[[0, 1, 3, 4, 5], :4] >= 0).all()  # four live partners each, no NaN
    assert not np.isnan(res.parent_top.r[[0, 1, 3, 4, 5], :4]).any()


def test_planted_pairs_are_recovered_as_best_matches():
    rng = np.random.default_rng(5)
    T, m, n = 4000, 64, 80
    a = _codes(T, m, 0.05, 6)
    b = _codes(T, n, 0.05, 7)
    pairs = {i: (i * 7) % n for i in range(0, m, 4)}
    for i, j in pairs.items():
        b[:, j] = a[:, i] * rng.uniform(0.5, 2) + 0.02 * rng.random(T) * (a[:, i] > 0)
    res = correlate_features(_chunked(a, b, 512), m, n, top_k=2, row_block=16)
    for i, j in pairs.items():
        assert res.parent_top.index[i, 0] == j and res.parent_top.r[i, 0] > 0.95
        assert res.child_top.index[j, 0] == i


def test_float64_accumulation_holds_on_many_chunks():
    a, b = _codes(20000, 4, 0.9, 8) + 100.0, _codes(20000, 3, 0.9, 9)  # large mean, small variance
    b[:, 1] = a[:, 0] - 100.0 + 0.5 * b[:, 1]
    res = correlate_features(_chunked(a, b, 97), 4, 3, top_k=3)
    ref = np.corrcoef(a.T, b.T)[:4, 4:]
    assert np.allclose(res.parent_top.r, -np.sort(-ref, axis=1), atol=1e-9)


def test_best_match_among_features_that_never_co_fire():
    """When a feature co-fires with nothing, its best partner is the least negative r: exact too."""
    a = np.zeros((60, 3)); b = np.zeros((60, 4))
    a[0:10, 0] = 1.0; a[10:20, 1] = 2.0; a[20:25, 2] = 1.0
    b[30:40, 0] = 1.0; b[40:55, 1] = 1.0; b[55:57, 2] = 3.0; b[0:10, 3] = 1.0
    res = correlate_features(_chunked(a, b, 7), 3, 4, top_k=4)
    ref = pearson_dense(a, b)
    assert np.allclose(res.parent_top.r, -np.sort(-ref, axis=1), atol=1e-12)
    assert np.allclose(np.take_along_axis(ref, res.parent_top.index, 1), res.parent_top.r, atol=1e-12)
    assert np.allclose(res.child_top.r, -np.sort(-ref.T, axis=1)[:, :3], atol=1e-12)


def test_full_matrix_on_request_equals_numpy():
    from featureflow_dagster.correlation import correlation_matrix

    a, b = _codes(400, 10, 0.25, 5), _codes(400, 7, 0.3, 6)
    a[:, 4] = 0.0  # dead rows come back NaN
    res = correlate_features(_chunked(a, b, 50), 10, 7, top_k=2)
    full = correlation_matrix(_chunked(a, b, 50), res.parent_moments, res.child_moments, row_block=3)
    ref = pearson_dense(a, b)
    assert full.dtype == np.float32 and full.shape == (10, 7)
    assert np.isnan(full[4]).all() and np.isnan(ref[4]).all()
    assert np.allclose(full[~np.isnan(ref)], ref[~np.isnan(ref)], atol=1e-6)


def test_auto_picks_dense_for_dense_codes_and_sparse_for_sparse_ones():
    dense_a, dense_b = _codes(300, 20, 0.3, 7), _codes(300, 20, 0.3, 8)
    assert correlate_features(_chunked(dense_a, dense_b, 100), 20, 20).method == "dense"
    sparse_a, sparse_b = _codes(3000, 400, 0.005, 9), _codes(3000, 400, 0.005, 10)
    res = correlate_features(_chunked(sparse_a, sparse_b, 1000), 400, 400, top_k=2)
    assert res.method == "sparse"
    other = correlate_features(_chunked(sparse_a, sparse_b, 1000), 400, 400, top_k=2, method="dense")
    live = ~res.parent_moments.dead
    assert np.allclose(res.parent_top.r[live, 0], other.parent_top.r[live, 0], atol=1e-12)
    assert np.allclose(res.child_top.r[~res.child_moments.dead, 0], other.child_top.r[~res.child_moments.dead, 0], atol=1e-12)


def test_the_dense_path_keeps_the_full_matrix_correlation_matrix_computes():
    """`keep_matrix`: the r matrix the dense cross-moment forms anyway, kept instead of a second pass over the codes
    (one-to-one pairs need it); equal to `correlation_matrix`, dead rows and columns NaN; the sparse path keeps none."""
    from featureflow_dagster.correlation import correlation_matrix

    rng = np.random.default_rng(0)
    a = np.where(rng.random((3000, 60)) < 0.2, rng.random((3000, 60)), 0.0)
    a[:, 5] = 0.0  # a dead parent feature
    b = np.where(rng.random((3000, 50)) < 0.2, rng.random((3000, 50)), 0.0)
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)

    def chunks():
        return iter([(a[:1500], b[:1500]), (a[1500:], b[1500:])])

    dense = correlate_features(chunks, 60, 50, method="dense", keep_matrix=True, row_block=16)
    ref = correlation_matrix(chunks, dense.parent_moments, dense.child_moments, 16)
    assert np.isnan(dense.matrix[5]).all() and np.array_equal(np.isnan(dense.matrix), np.isnan(ref))
    np.testing.assert_allclose(dense.matrix, ref, atol=1e-6)
    assert correlate_features(chunks, 60, 50, method="sparse", keep_matrix=True).matrix is None
    assert correlate_features(chunks, 60, 50, method="dense").matrix is None


def test_the_partial_top_k_picks_what_a_stable_full_sort_picks_ties_included():
    """The dense path's top-k (a partition, then a sort of k) against a stable argsort of each whole row, on values
    rounded to one decimal (ties everywhere, also at the k-th place), a dead row and a dead column (-inf)."""
    from featureflow_dagster.correlation import _top_k_desc

    rng = np.random.default_rng(3)
    for shape, k in (((300, 500), 5), ((60, 9), 9), ((40, 30), 3), ((25, 12), 1)):
        r = rng.normal(size=shape).round(1)
        r[3], r[:, 2] = -np.inf, -np.inf
        expected = np.argsort(-r, axis=1, kind="stable")[:, :k]
        assert (_top_k_desc(r, k) == expected).all(), (shape, k)
