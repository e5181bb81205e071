"""utils.metrics against plain per-query implementations of SPEC §7 and of AGAH's conventions."""
import numpy as np
import pytest
import torch

from utils import calc_map_k, p_top_k, pr_curve
from utils.errors import UserError
from utils.metrics import P_AT_K


def ranking(q, rB):
    """Database order by Hamming distance ½(c − ⟨q, b⟩), ties in database order."""
    distance = 0.5 * (len(q) - rB @ q)
    return np.argsort(distance, kind='stable'), distance


def oracle_map(qB, rB, qL, rL, k=None):
    total = 0.0
    for q, labels in zip(qB, qL):
        order, _ = ranking(q, rB)
        relevant = ((rL @ labels) > 0)[order][:k]
        ranks = np.flatnonzero(relevant) + 1
        if len(ranks):
            total += np.mean(np.arange(1, len(ranks) + 1) / ranks)
    return total / len(qB)


def oracle_pr(qB, rB, qL, rL):
    bit = qB.shape[1]
    P, R = np.zeros((len(qB), bit + 1)), np.zeros((len(qB), bit + 1))
    for i, (q, labels) in enumerate(zip(qB, qL)):
        relevant = (rL @ labels) > 0
        if not relevant.any():
            continue
        _, distance = ranking(q, rB)
        for radius in range(bit + 1):
            retrieved = distance <= radius
            found = (retrieved & relevant).sum()
            P[i, radius] = found / retrieved.sum() if retrieved.any() else 0
            R[i, radius] = found / relevant.sum()
    counted = np.maximum((P > 0).sum(0), 1)
    return P.sum(0) / counted, R.sum(0) / counted


def oracle_p_top_k(qB, rB, qL, rL, K):
    p = np.zeros(len(K))
    for q, labels in zip(qB, qL):
        relevant = (rL @ labels) > 0
        if not relevant.any():
            continue
        order, _ = ranking(q, rB)
        p += [relevant[order][:min(k, len(rB))].mean() for k in K]
    return p / len(qB)


def codes(rows, bit, rng, zeros=0.0):
    values = np.where(rng.random((rows, bit)) < 0.5, -1.0, 1.0)
    values[rng.random((rows, bit)) < zeros] = 0
    return values


CASES = {
    'random 64 bits': dict(queries=40, database=500, bit=64, labels=6, zeros=0.0),
    'ties: 4 bits': dict(queries=40, database=500, bit=4, labels=6, zeros=0.0),
    'ties and zeros: 3 bits': dict(queries=30, database=300, bit=3, labels=4, zeros=0.3),
    'one query': dict(queries=1, database=200, bit=16, labels=5, zeros=0.0),
    '130 bits': dict(queries=20, database=200, bit=130, labels=5, zeros=0.0),
}


def make_case(queries, database, bit, labels, zeros, seed=0):
    rng = np.random.default_rng(seed)
    qB, rB = codes(queries, bit, rng, zeros), codes(database, bit, rng, zeros)
    qL = (rng.random((queries, labels)) < 0.3).astype(float)
    rL = (rng.random((database, labels)) < 0.3).astype(float)
    qL[0] = 0  # a query without relevant items counts 0
    if queries > 1:
        qL[1] = rL[0]
    return qB, rB, qL, rL


def tensors(*arrays):
    return [torch.from_numpy(a).float() for a in arrays]


@pytest.mark.parametrize('case', CASES)
def test_map_equals_the_per_query_oracle(case):
    arrays = make_case(**CASES[case])
    assert calc_map_k(*tensors(*arrays)) == pytest.approx(oracle_map(*arrays), abs=1e-6)


@pytest.mark.parametrize('k', [1, 10, 50, 10_000])
def test_map_at_k_equals_the_oracle(k):
    arrays = make_case(**CASES['ties: 4 bits'])
    assert calc_map_k(*tensors(*arrays), k=k) == pytest.approx(oracle_map(*arrays, k=k), abs=1e-6)


@pytest.mark.parametrize('case', CASES)
def test_pr_curve_and_p_top_k_equal_the_oracles(case):
    arrays = make_case(**CASES[case])
    precision, recall = pr_curve(*tensors(*arrays))
    want_precision, want_recall = oracle_pr(*arrays)
    np.testing.assert_allclose(precision, want_precision, atol=1e-6)
    np.testing.assert_allclose(recall, want_recall, atol=1e-6)
    np.testing.assert_allclose(p_top_k(*tensors(*arrays)), oracle_p_top_k(*arrays, P_AT_K), atol=1e-6)


def test_degenerate_inputs():
    rng = np.random.default_rng(1)
    labels = (rng.random((60, 4)) < 0.5).astype(float)
    same = np.ones((60, 8))
    # All codes equal: the ranking is the database order itself.
    arrays = (same[:10], same[10:], labels[:10], labels[10:])
    assert calc_map_k(*tensors(*arrays)) == pytest.approx(oracle_map(*arrays), abs=1e-6)
    # No relevant item for any query: MAP 0.
    arrays = (codes(5, 8, rng), codes(50, 8, rng), np.eye(4)[[0] * 5], np.eye(4)[[1] * 50])
    assert calc_map_k(*tensors(*arrays)) == 0
    assert p_top_k(*tensors(*arrays)).sum() == 0


def test_large_database_is_exact_and_chunked(monkeypatch):
    import utils.metrics
    monkeypatch.setattr(utils.metrics, 'CHUNK_BYTES', 20 * 3000 * 3)  # three queries per chunk
    arrays = make_case(queries=20, database=3000, bit=16, labels=5, zeros=0.0, seed=4)
    assert calc_map_k(*tensors(*arrays)) == pytest.approx(oracle_map(*arrays), abs=1e-6)


@pytest.mark.parametrize('change, message', [
    (lambda a: (a[0][:, :8], *a[1:]), r'query codes have 8 bits but database codes 16 \(shapes \(10, 8\) and \(50, 16\)\)'),
    (lambda a: (*a[:3], a[3][:, :3]), r'query labels have 4 columns but database labels 3'),
    (lambda a: (a[0] * 2, *a[1:]), r'query codes must hold only -1, 0 and 1'),
    (lambda a: (a[0][:0], *a[1:]), r'query codes must be a non-empty 2-D matrix, got shape \(0, 16\)'),
    (lambda a: (a[0], a[1][:0], *a[2:]), r'database codes must be a non-empty 2-D matrix'),
    (lambda a: (*a[:2], a[2][:7], a[3]), r'query codes have 10 rows but query labels 7'),
])
def test_bad_input_names_the_shapes(change, message):
    arrays = tensors(*make_case(queries=10, database=50, bit=16, labels=4, zeros=0.0))
    for metric in (calc_map_k, pr_curve, p_top_k):
        with pytest.raises(UserError, match=message):
            metric(*change(arrays))
