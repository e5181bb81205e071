import numpy as np
import pytest
import torch

from utils import hamming


def oracle(queries, database, k):
    """Brute force on unpacked ±1 codes: distances, stable argsort, first k."""
    bit = queries.shape[1]
    dist = ((bit - queries @ database.T) / 2).astype(np.int64)
    order = np.argsort(dist, axis=1, kind='stable')[:, :k]
    return np.take_along_axis(dist, order, 1), order


@pytest.mark.parametrize('bit, n, k, tied', [(64, 40000, 100, False), (16, 3000, 50, True),
                                             (24, 999, 999, True), (128, 20000, 7, False),
                                             (8, 50, 1, True), (256, 2000, 30, False),
                                             (32, 30000, 300, True)])
def test_top_k_equals_the_oracle_numpy_and_torch(bit, n, k, tied):
    rng = np.random.default_rng(bit)
    database = rng.choice([-1.0, 1.0], (n, bit)).astype(np.float32)
    queries = rng.choice([-1.0, 1.0], (37, bit)).astype(np.float32)
    if tied:  # a few distinct codes: most of the database ties
        database[:, 3:], queries[:, 3:] = 1, 1
    expected = oracle(queries, database, k)
    dist, index = hamming.top_k(hamming.pack(queries), hamming.pack(database), k, bit)
    assert (index == expected[1]).all() and (dist == expected[0]).all()
    dist, index = hamming.top_k(torch.tensor(queries), torch.tensor(database), k, bit)
    assert (index.numpy() == expected[1]).all() and (dist.numpy() == expected[0]).all()


def test_rank_is_the_stable_order_and_packing_round_trips():
    rng = np.random.default_rng(0)
    codes = rng.choice([-1.0, 1.0], (20, 40)).astype(np.float32)
    assert (hamming.unpack(hamming.pack(codes), 40) == codes).all()
    dist = hamming.distances(hamming.words(hamming.pack(codes[:5])), hamming.words(hamming.pack(codes)))
    assert (dist == (40 - codes[:5] @ codes.T) / 2).all()
    assert (hamming.rank(torch.from_numpy(dist)).numpy() == np.argsort(dist, 1, kind='stable')).all()
