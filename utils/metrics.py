"""Retrieval metrics of SPEC §7: MAP (and MAP@k), precision-recall over Hamming radii, precision@K.

The database is ranked by Hamming distance with ties in database order (a stable sort). Distances
take only bit + 1 values, so the stable order is a radix sort of small integers (numpy's stable
argsort of uint8 on the CPU, torch's stable sort on a GPU); queries go in chunks, bounded in memory,
two chunks at a time on the CPU.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from utils.errors import UserError

P_AT_K = (1, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)
CHUNK_BYTES = 256 * 2 ** 20  # per chunk in flight; about 20 bytes per query x database pair
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


def _chunks(qB, rB, query_labels, retrieval_labels):
    """Yield (twice the Hamming distances, relevance) for chunks of queries.

    Twice the distance, bit − ⟨b_q, b_d⟩, is an integer in [0, 2·bit] even where a code has zeros."""
    qB, rB = qB.float(), rB.float()
    rB_T, retrieval_labels_T = rB.T.contiguous(), retrieval_labels.float().T.contiguous()
    bit = qB.shape[1]
    dtype = torch.uint8 if 2 * bit < 256 else torch.int16
    size = max(1, min(MAX_CHUNK_QUERIES, CHUNK_BYTES // (20 * rB.shape[0])))
    for start in range(0, qB.shape[0], size):
        dist2 = torch.addmm(torch.tensor(float(bit), device=qB.device), qB[start:start + size], rB_T,
                            alpha=-1).to(dtype)
        relevant = (query_labels[start:start + size].float() @ retrieval_labels_T) > 0
        yield dist2, relevant


def _ranked(dist2, relevant):
    """Relevance in ranked order: ascending distance, ties in database order."""
    if dist2.is_cuda:
        order = torch.sort(dist2, dim=1, stable=True).indices
    else:
        order = torch.from_numpy(np.argsort(dist2.numpy(), axis=1, kind='stable'))
    return torch.gather(relevant, 1, order)


def _map_over_chunks(function, chunks, cuda):
    """Apply `function` to every chunk; on the CPU two at a time (numpy's sort holds one core)."""
    if cuda:
        return [function(*chunk) for chunk in chunks]
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda chunk: function(*chunk), chunks))


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
        hits = ranked.cumsum(1, dtype=torch.float32).mul_(ranked)  # m at each relevant rank, else 0
        found = ranked.sum(1)
        return ((hits @ inverse_rank) / found.clamp(min=1)).sum()

    sums = _map_over_chunks(chunk_ap_sum, _chunks(qB, rB, query_labels, retrieval_labels), qB.is_cuda)
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

    parts = _map_over_chunks(chunk_sums, _chunks(qB, rB, query_labels, retrieval_labels), qB.is_cuda)
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

    sums = _map_over_chunks(chunk_sums, _chunks(qB, rB, query_labels, retrieval_labels), qB.is_cuda)
    return (torch.stack(sums).sum(0) / qB.shape[0]).cpu().numpy()
