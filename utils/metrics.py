"""Retrieval metrics of SPEC §7: MAP (and MAP@k), precision-recall over Hamming radii, precision@K.

The database is ranked by utils/hamming.py's one ranking (Hamming distance, ties in database
order), on the same packing and popcount as retrieval; queries go in chunks, bounded in memory,
one chunk per core at a time on the CPU.
"""
import numpy as np
import torch

from utils import hamming
from utils.errors import UserError

P_AT_K = (1, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)
CHUNK_BYTES = 64 * 2 ** 20  # per chunk in flight (one per core); about 20 bytes per pair
MAX_CHUNK_QUERIES = 64  # small chunks stay in cache and reuse freed memory


def _check(qB, rB, query_labels, retrieval_labels):
    for name, x in (('query codes', qB), ('database codes', rB), ('query labels', query_labels),
                    ('database labels', retrieval_labels)):
        if x.dim() != 2 or x.shape[0] == 0:
            raise UserError(f'{name} must be a non-empty 2-D matrix, got shape {tuple(x.shape)}')
    if qB.shape[1] != rB.shape[1]:
        raise UserError(f'query codes have {qB.shape[1]} bits but database codes {rB.shape[1]} '
                        f'(shapes {tuple(qB.shape)} and {tuple(rB.shape)})')
    if query_labels.shape[1] != retrieval_labels.shape[1]:
        raise UserError(f'query labels have {query_labels.shape[1]} columns but database labels '
                        f'{retrieval_labels.shape[1]} (shapes {tuple(query_labels.shape)} and '
                        f'{tuple(retrieval_labels.shape)})')
    for codes, labels, side in ((qB, query_labels, 'query'), (rB, retrieval_labels, 'database')):
        if codes.shape[0] != labels.shape[0]:
            raise UserError(f'{side} codes have {codes.shape[0]} rows but {side} labels '
                            f'{labels.shape[0]} (shapes {tuple(codes.shape)} and {tuple(labels.shape)})')
        if not ((codes == 1) | (codes == -1) | (codes == 0)).all():
            raise UserError(f'{side} codes must hold only -1, 0 and 1 (sign of the hash outputs)')


def _per_chunk(function, qB, rB, query_labels, retrieval_labels):
    """[function(dist2, relevant) for each chunk of queries]: dist2 is twice the Hamming distance,
    bit − ⟨b_q, b_d⟩, an integer in [0, 2·bit] even where a code has zeros; relevant says which
    database items share a label with the query. On the CPU one chunk per core, each
    single-threaded: numpy's sort holds one core, and small operations split over cores only wait
    on each other."""
    qB, rB = qB.float(), rB.float()
    rB_T, retrieval_labels_T = rB.T.contiguous(), retrieval_labels.float().T.contiguous()
    bit = qB.shape[1]
    dtype, np_dtype = (torch.uint8, np.uint8) if 2 * bit < 256 else (torch.int16, np.int16)
    size = max(1, min(MAX_CHUNK_QUERIES, CHUNK_BYTES // (20 * rB.shape[0])))
    # ±1 codes on the CPU: the distance is the popcount of XORed bit-packed codes, 5x cheaper than
    # a product of float codes; codes with zeros (sign(0) = 0) take the product.
    packed = ((hamming.words(hamming.pack(qB)), hamming.words(hamming.pack(rB)))
              if not qB.is_cuda and (qB != 0).all() and (rB != 0).all() else None)

    def run(start, stop):
        if packed:
            dist2 = hamming.distances(packed[0][start:stop], packed[1], np_dtype)
            dist2 = torch.from_numpy(np.left_shift(dist2, 1, out=dist2))
        else:
            dist2 = torch.addmm(torch.tensor(float(bit), device=qB.device), qB[start:stop],
                                rB_T, alpha=-1).to(dtype)
        relevant = (query_labels[start:stop].float() @ retrieval_labels_T) > 0
        return function(dist2, relevant)

    if qB.is_cuda:
        return [run(start, start + size) for start in range(0, qB.shape[0], size)]
    return hamming.per_query_chunk(run, qB.shape[0], size)


def _ranked(dist2, relevant):
    """Relevance in ranked order (hamming.rank: ascending distance, ties in database order)."""
    return torch.gather(relevant, 1, hamming.rank(dist2))


@torch.inference_mode()
def calc_map_k(qB, rB, query_labels, retrieval_labels, k=None):
    """Mean over queries of AP = (1/R) Σ_m m / r_m over the relevant items at ranks r_1 < r_2 < …
    (SPEC §7). Queries without a relevant item count 0. With k: only the top k count (AP@k over the
    relevant items found there)."""
    _check(qB, rB, query_labels, retrieval_labels)
    n = rB.shape[0] if k is None else min(k, rB.shape[0])
    inverse_rank = 1 / torch.arange(1, n + 1, dtype=torch.float32, device=rB.device)

    def chunk_ap_sum(dist2, relevant):
        ranked = _ranked(dist2, relevant)[:, :n]
        hits = ranked.cumsum(1, dtype=torch.float32).mul_(ranked)  # m at relevant ranks, else 0
        # m / r summed in float64: a float32 sum over 200k ranks drifts by 1e-6
        found = ranked.sum(1)
        return (hits.mul_(inverse_rank).sum(1, dtype=torch.float64) / found.clamp(min=1)).sum()

    sums = _per_chunk(chunk_ap_sum, qB, rB, query_labels, retrieval_labels)
    return (torch.stack(sums).sum() / qB.shape[0]).item()


@torch.inference_mode()
def pr_curve(qB, rB, query_labels, retrieval_labels):
    """Precision and recall of the items within Hamming radius 0..bit, as AGAH computes them:
    per query with relevant items, precision = relevant retrieved / retrieved (0 when nothing is
    retrieved) and recall = relevant retrieved / relevant; each radius averages over the queries
    whose precision there is above 0. Returns two numpy arrays of length bit + 1."""
    _check(qB, rB, query_labels, retrieval_labels)
    bit = qB.shape[1]
    values = 2 * bit + 1

    def chunk_sums(dist2, relevant):
        offsets = torch.arange(dist2.shape[0], device=dist2.device)[:, None] * values
        index = (dist2.long() + offsets).flatten()
        within = torch.bincount(index, minlength=dist2.shape[0] * values).view(-1, values)
        hits = torch.bincount(index, weights=relevant.flatten().float(),
                              minlength=dist2.shape[0] * values).view(-1, values)
        # Cumulate over twice-distances, then read even ones: distance <= radius.
        retrieved = within.cumsum(1)[:, ::2].double()
        found = hits.cumsum(1)[:, ::2].double()
        total = relevant.sum(1, keepdim=True).double()
        precision = found / retrieved.clamp(min=1)
        recall = torch.where(total > 0, found / total.clamp(min=1), 0)
        precision = torch.where(total > 0, precision, 0)
        return precision.sum(0), recall.sum(0), (precision > 0).sum(0)

    parts = _per_chunk(chunk_sums, qB, rB, query_labels, retrieval_labels)
    precision, recall, counted = (torch.stack(p).sum(0) for p in zip(*parts))
    counted = counted.double().clamp(min=1)
    return (precision / counted).cpu().numpy(), (recall / counted).cpu().numpy()


@torch.inference_mode()
def p_top_k(qB, rB, query_labels, retrieval_labels, K=P_AT_K):
    """Precision among the top K retrieved (ties in database order) for each K, as AGAH computes
    it: K is capped at the database size, queries without relevant items count 0 but stay in the
    mean. Returns a numpy array of len(K)."""
    _check(qB, rB, query_labels, retrieval_labels)
    tops = [min(k, rB.shape[0]) for k in K]

    def chunk_sums(dist2, relevant):
        ranked = _ranked(dist2, relevant)[:, :max(tops)]
        found = ranked.cumsum(1, dtype=torch.float32)[:, [t - 1 for t in tops]]
        return (found / torch.tensor(tops, device=found.device)).sum(0)

    sums = _per_chunk(chunk_sums, qB, rB, query_labels, retrieval_labels)
    return (torch.stack(sums).sum(0) / qB.shape[0]).cpu().numpy()
