"""Hamming distances of binary codes, the one ranking of SPEC §7 and its top-k, for `test`'s metrics
and for retrieval alike.

Codes are packed one bit per code bit (np.packbits: the first code bit is the high bit of the first
byte), bit/8 bytes a row, and read as unsigned words (64-bit where a row allows) for popcount. The
ranking is by distance ascending with ties in database order. Top-k never sorts the database:
distances take only bit + 1 values, so counting them finds the k-th distance d*; the items below d*
and the first ones at d* (in database order) are the top k, and only those few are sorted.

On the CPU both distances and top_k run utils/popcount.py's compiled kernels.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

QUERY_CHUNK = 128  # queries per database pass (a thread's share): the block is read once for all
CANDIDATES = 2 ** 22  # k x queries of a pass at most: its candidates take 24 bytes each


def pack(codes):
    """±1 (or 0/1) codes, an n x bit array or tensor, as n x ceil(bit/8) uint8 rows; a code bit is
    1 where the code is > 0."""
    bits = codes > 0
    bits = bits.cpu().numpy() if torch.is_tensor(bits) else np.asarray(bits)
    return np.packbits(bits, axis=1)


def unpack(packed, bit):
    """Packed rows back to ±1 float32 codes (n x bit)."""
    return np.unpackbits(packed, axis=1, count=bit).astype(np.float32) * 2 - 1


def words(packed):
    """Packed rows as rows of unsigned words for popcount: the widest of 64, 32, 16 or 8 bits that
    divides a row, so a view of the codes, never a padded copy (a 10^7-code database stays its own
    size whatever the code length)."""
    size = next(size for size in (8, 4, 2, 1) if packed.shape[1] % size == 0)
    return np.ascontiguousarray(packed).view(f'u{size}')


def distances(query_words, db_words, dtype=np.uint8):
    """Hamming distances, queries x database, by popcount of the XORed words."""
    from utils import popcount
    out = np.empty((len(query_words), len(db_words)), dtype)
    popcount.distance_matrix(np.ascontiguousarray(query_words), np.ascontiguousarray(db_words), out)
    return out


def rank(dist):
    """The database order of each query (row of `dist`): distance ascending, ties in database order
    (a stable sort; numpy's radix sort of small integers on the CPU)."""
    if dist.is_cuda:
        return torch.sort(dist, dim=1, stable=True).indices
    return torch.from_numpy(np.argsort(dist.numpy(), axis=1, kind='stable'))


def per_query_chunk(function, count, size, threads=None):
    """[function(start, stop) for query chunks of `size`], one chunk per core at a time, each
    single-threaded in torch (small operations split over cores only wait on each other)."""
    starts = range(0, count, size)
    threads = threads or torch.get_num_threads()
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda s: function(s, min(s + size, count)), starts))
    finally:
        torch.set_num_threads(torch_threads)


def _first_k(dist, k, bit):
    """Per row of `dist` (queries x items): the limit d* (the k-th smallest distance, bit + 1 where
    a row has fewer than k items) and how many items at d* the top k takes (the first ones)."""
    rows = dist.shape[0]
    offsets = torch.arange(rows, device=dist.device)[:, None] * (bit + 2)
    counts = torch.bincount((dist.long() + offsets).reshape(-1), minlength=rows * (bit + 2))
    below = counts.reshape(rows, bit + 2).cumsum(1)
    limit = (below < k).sum(1)  # first distance whose cumulative count reaches k
    before = torch.where(limit > 0, below.gather(1, (limit - 1).clamp(min=0)[:, None])[:, 0], 0)
    return limit, k - before


def _take(dist, limit, need):
    """(query, item) pairs of the top k: distance below the limit, or at it among the first `need`
    of the row in database order."""
    at = dist == limit[:, None]
    # at.cumsum(1): the rank of an item among its row's items at the limit, in database order.
    keep = (dist < limit[:, None]) | (at & (at.cumsum(1) <= need[:, None]))
    return keep.nonzero(as_tuple=True)


def _ordered(q, d, j, rows, k, n, bit):
    """Rows x k (distances, indices) of the flat (query, distance, index) triples, each row ordered
    by (distance, index) and cut to k; -1 pads a row with fewer."""
    d = d.long()
    order = torch.argsort((q * (bit + 2) + d) * n + j)
    q, d, j = q[order], d[order], j[order]
    starts = torch.searchsorted(q, torch.arange(rows, device=q.device))
    position = torch.arange(len(q), device=q.device) - starts[q]
    keep = position < k
    dist = torch.full((rows, k), -1, dtype=torch.int64, device=q.device)
    index = torch.full((rows, k), -1, dtype=torch.int64, device=q.device)
    dist[q[keep], position[keep]] = d[keep]
    index[q[keep], position[keep]] = j[keep]
    return dist, index


def top_k(query, database, k, bit):
    """Top k of each query: (distances, indices), both queries x k int64, ordered by distance then
    database position (SPEC §7). `query` and `database` are packed rows (numpy, scanned in blocks
    on the CPU cores) or ±1 code tensors (torch: one distance matrix per chunk of queries, on
    their device). k is at most the database size."""
    if torch.is_tensor(database):
        return _top_k_torch(query, database, k, bit)
    if not 0 < k <= len(database):
        raise ValueError(f'top_k: k must be in [1, {len(database)}], got {k}')
    from utils import popcount
    qw, dbw = words(query), words(database)
    out_dist = np.empty((len(qw), k), np.int64)
    out_index = np.empty((len(qw), k), np.int64)

    def chunk(start, stop):
        dist = np.empty(popcount.BLOCK, np.uint8 if bit < 255 else np.uint16)
        popcount.scan(qw[start:stop], dbw, k, bit, dist, out_dist[start:stop],
                      out_index[start:stop])

    share = -(-len(qw) // torch.get_num_threads())  # a few queries still keep every core busy
    per_query_chunk(chunk, len(qw), max(1, min(QUERY_CHUNK, share, CANDIDATES // k)))
    return out_dist, out_index


def _top_k_torch(query, database, k, bit):
    dist_parts, index_parts = [], []
    chunk = max(1, min(256, 2 ** 26 // len(database)))  # int64 temporaries of chunk x database
    db_t = database.float().T.contiguous()
    for start in range(0, len(query), chunk):
        # ±1 codes: distance = (bit - <q, d>) / 2, exact in float32 for any code length used here.
        dist = ((bit - query[start:start + chunk].float() @ db_t) / 2).round().to(torch.int16)
        limit, need = _first_k(dist, k, bit)
        qi, j = _take(dist, limit, need)
        d, i = _ordered(qi, dist[qi, j], j, len(dist), k, len(database), bit)
        dist_parts.append(d)
        index_parts.append(i)
    return torch.cat(dist_parts), torch.cat(index_parts)
