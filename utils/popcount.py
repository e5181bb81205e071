"""The compiled CPU kernels of utils/hamming.py: Hamming distances by popcount and the top-k scan.

numba compiles them on first use and caches them beside this file. A popcount loop that LLVM
vectorises (AVX-512's vpopcntq where the CPU has it) runs 5-10x faster than numpy's XOR, popcount
and compare passes, and the scan keeps no database-sized temporary. Kept apart from hamming.py so
that commands which never rank codes do not load numba.
"""
import numba
import numpy as np
from numba.extending import intrinsic

BLOCK = 4096  # database codes a step: the block and its distances stay in the core's cache
SCREEN = 256  # a block's distances are screened in parts of this many by their minimum


@intrinsic
def popcount(typingctx, x):
    """LLVM's ctpop: vectorised to AVX-512's vpopcntq where the CPU has it."""
    return x(x), lambda context, builder, signature, args: builder.ctpop(args[0])


@numba.njit(nogil=True, cache=True)
def load_block(db_words, first, block):
    """Database rows [first, first + BLOCK) into `block`, word-major (words x BLOCK), so that each
    word's popcount loop reads contiguously; returns how many rows there were."""
    count = min(BLOCK, len(db_words) - first)
    for t in range(count):
        for w in range(db_words.shape[1]):
            block[w, t] = db_words[first + t, w]
    return count


@numba.njit(nogil=True, cache=True)
def block_distances(query_row, block, count, dist):
    """dist[:count] = Hamming distances of one query's words to the block's first `count` codes."""
    word = query_row[0]
    for t in range(count):
        dist[t] = popcount(word ^ block[0, t])
    for w in range(1, len(query_row)):
        word = query_row[w]
        for t in range(count):
            dist[t] += popcount(word ^ block[w, t])


@numba.njit(nogil=True, cache=True)
def distance_matrix(query_words, db_words, out):
    """out = Hamming distances, queries x database (out's dtype holds bit)."""
    block = np.empty((db_words.shape[1], BLOCK), db_words.dtype)
    for first in range(0, len(db_words), BLOCK):
        count = load_block(db_words, first, block)
        for q in range(len(query_words)):
            block_distances(query_words[q], block, count, out[q, first:first + count])


@numba.njit(nogil=True, cache=True)
def keep_best(dist, index, count, k, histogram):
    """Cut a query's candidates (dist, index)[:count], in database order, to its best k in place:
    distances below the k-th distance d* and the first ones at d*. Returns (k, d*)."""
    histogram[:] = 0
    for t in range(count):
        histogram[dist[t]] += 1
    below, limit = 0, 0
    while below + histogram[limit] < k:
        below += histogram[limit]
        limit += 1
    at_limit, kept = k - below, 0
    for t in range(count):
        if dist[t] < limit or (dist[t] == limit and at_limit > 0):
            at_limit -= dist[t] == limit
            dist[kept], index[kept] = dist[t], index[t]
            kept += 1
    return kept, limit


@numba.njit(nogil=True, cache=True)
def scan(query_words, db_words, k, bit, dist, out_dist, out_index):
    """The top k of each query over the whole database, one block at a time for all the queries.
    A query admits a code only below its limit (the k-th distance of its best k so far; ties at
    it lose to the earlier codes), so past the first blocks a screen of the block's minimum
    distances skips nearly all of them."""
    queries, capacity = len(query_words), 2 * k
    cand_dist = np.empty((queries, capacity), np.int32)
    cand_index = np.empty((queries, capacity), np.int64)
    count = np.zeros(queries, np.int64)
    limit = np.full(queries, bit + 1, np.int32)
    histogram = np.empty(bit + 2, np.int64)
    block = np.zeros((db_words.shape[1], BLOCK), db_words.dtype)
    far = dist.dtype.type(bit + 1)
    for first in range(0, len(db_words), BLOCK):
        codes = load_block(db_words, first, block)
        for q in range(queries):
            block_distances(query_words[q], block, BLOCK, dist)
            dist[codes:] = far  # the last block's padding: never admitted
            below = dist.dtype.type(limit[q])
            for part in range(0, BLOCK, SCREEN):
                low = far
                for t in range(part, part + SCREEN):  # fixed bounds: LLVM vectorises the minimum
                    low = min(low, dist[t])
                if low >= below:
                    continue
                for t in range(part, part + SCREEN):
                    if dist[t] < below:
                        c = count[q]
                        cand_dist[q, c], cand_index[q, c] = dist[t], first + t
                        count[q] = c + 1
                        if c + 1 == capacity:
                            count[q], limit[q] = keep_best(cand_dist[q], cand_index[q], capacity,
                                                           k, histogram)
                            below = dist.dtype.type(limit[q])
    for q in range(queries):
        kept, _ = keep_best(cand_dist[q], cand_index[q], count[q], k, histogram)
        # counting sort by distance, stable: the candidates are in database order
        histogram[:] = 0
        for t in range(kept):
            histogram[cand_dist[q, t] + 1] += 1
        histogram[:] = np.cumsum(histogram)
        for t in range(kept):
            position = histogram[cand_dist[q, t]]
            histogram[cand_dist[q, t]] += 1
            out_dist[q, position], out_index[q, position] = cand_dist[q, t], cand_index[q, t]
