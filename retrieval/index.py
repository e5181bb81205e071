"""Search packed codes: the exact scan (utils.hamming.top_k) and FAISS's binary indexes behind one
signature, and FAISS indexes saved beside a codes file.

FAISS breaks distance ties its own way; `flat` re-ranks: FAISS's k-th distance d* bounds the top k,
so the items within d* are ranked exactly as the scan ranks them (distance, then database order).
"""
import json
from pathlib import Path

import numpy as np

from retrieval.codes_file import CodesFile
from utils import hamming
from utils.checkpoint import atomic_write, sha256
from utils.errors import UserError

INDEXES = ('exact', 'flat', 'ivf', 'hnsw')


def make_index(codes, kind, nlist=None, hnsw_m=32):
    import faiss
    bit = codes.shape[1] * 8
    if kind == 'flat':
        index = faiss.IndexBinaryFlat(bit)
    elif kind == 'ivf':
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bit), bit, list_count(len(codes), nlist))
        nlist = index.nlist
        index.cp.min_points_per_centroid = 1  # a small file: fewer than FAISS's 39 codes a list
        # k-means on 64 codes a list (FAISS wants 39) spread over the file: at 10^7 codes, training
        # on all of them would take most of an hour on two cores for no better lists.
        index.train(codes[::max(1, len(codes) // (64 * nlist))])
    else:
        index = faiss.IndexBinaryHNSW(bit, hnsw_m)
    index.add(codes)
    return index


def list_count(n, nlist=None):
    """The lists of an IVF index of n codes: --nlist, or 4·√n; at most n, as k-means needs a code
    for each list."""
    if nlist is None:
        return max(1, min(n, int(4 * np.sqrt(n))))
    if isinstance(nlist, bool) or not isinstance(nlist, int) or not 1 <= nlist <= n:
        raise UserError(f'--nlist must be an integer from 1 to the {n} codes (k-means needs a code '
                        f'for each list), got {nlist!r}')
    return nlist


def search(database, queries, k, index='exact', faiss_index=None, nlist=None, nprobe=16, ef=256):
    """(distances, indices) of the top k database rows of each query, queries x k int64, both
    packed uint8 rows. 'exact' and 'flat' rank by (distance, database order); 'ivf' and 'hnsw' are
    approximate (a missing hit is -1). `faiss_index` is a built index over `database`."""
    if index not in INDEXES:
        raise UserError(f'--index must be one of {", ".join(INDEXES)}, got {index!r}')
    bit = database.shape[1] * 8
    if index == 'exact':
        return hamming.top_k(queries, database, k, bit)
    faiss_index = faiss_index or make_index(database, index, nlist)
    if index == 'ivf':
        faiss_index.nprobe = nprobe
    if index == 'hnsw':
        faiss_index.hnsw.efSearch = max(ef, k)
    dist, ids = faiss_index.search(queries, k)
    if index != 'flat':
        return dist.astype(np.int64), ids
    return _rerank(database, queries, dist[:, -1], k, faiss_index)


def _rerank(database, queries, kth, k, faiss_index):
    """Exact order of the items within each query's k-th distance: FAISS's range search lists them
    all, then they are ordered by (distance, index) and cut to k."""
    lims, dist, ids = faiss_index.range_search(queries, int(kth.max()) + 1)  # radius is exclusive
    out_d = np.empty((len(queries), k), np.int64)
    out_i = np.empty((len(queries), k), np.int64)
    for q in range(len(queries)):
        d, i = dist[lims[q]:lims[q + 1]], ids[lims[q]:lims[q + 1]]
        within = d <= kth[q]
        order = np.lexsort((i[within], d[within]))[:k]
        out_d[q], out_i[q] = d[within][order], i[within][order]
    return out_d, out_i


def recall(exact_distances, found_distances, found_ids):
    """Recall@k: the mean fraction of the k found that are within the exact k-th distance (items
    tied at it are equally right answers)."""
    within = (found_distances <= exact_distances[:, -1:]) & (found_ids >= 0)
    return float(within.mean())


def index_path(codes_path, modality, kind):
    return Path(f'{codes_path}.{modality}.{kind}.faiss')


def _stamp(codes_path):
    return {'codes_sha256': sha256(codes_path), 'codes_size': Path(codes_path).stat().st_size}


def build_index(codes_path, kind, nlist=None):
    """Build a FAISS index of each modality of the codes file and save it beside it, with a JSON
    that ties it to that file (sha256, size, count). Returns the paths written."""
    import faiss
    if kind not in INDEXES[1:]:
        raise UserError(f'--index must be one of {", ".join(INDEXES[1:])} to build, got {kind!r}')
    codes = CodesFile(codes_path)
    written = []
    for modality in codes.modalities:
        path = index_path(codes_path, modality, kind)
        index = make_index(codes.read(modality), kind, nlist)
        atomic_write(path, lambda f: f.write(faiss.serialize_index_binary(index).tobytes()))
        stamp = json.dumps({**_stamp(codes_path), 'count': codes.count}).encode()
        atomic_write(path.with_suffix('.json'), lambda f: f.write(stamp))
        written.append(path)
    return written


def load_index(codes_path, modality, kind):
    """The saved index of `kind` over the codes file's `modality`, or None when there is none;
    refused when it was built over another codes file."""
    import faiss
    path = index_path(codes_path, modality, kind)
    if not path.is_file():
        return None
    meta = path.with_suffix('.json')
    stamp = json.loads(meta.read_text()) if meta.is_file() else {}
    if {k: stamp.get(k) for k in ('codes_sha256', 'codes_size')} != _stamp(codes_path):
        raise UserError(f'{path}: an index of another codes file than {codes_path} (rebuild it with '
                        f'python main.py index --database {codes_path} --index {kind})')
    return faiss.read_index_binary(str(path))
