"""Search and encode speed: the exact scan (utils.hamming.top_k) against FAISS's IndexBinaryFlat and
an approximate index on random 64-bit codes, and `encode` rows/s of a MIRFlickr-sized file against
the encoding of train's validation pass.

    python benchmarks/search.py [--sizes 1e6 1e7] [--queries 1000] [--topk 100] [--threads 2]
                                [--max_exact_s 180] [--encode True]

Each database size runs in its own process, so its peak resident memory is its own. The exact scan
runs first: the peak printed after it (exact_peak_rss_gb) is the scan's, before FAISS copies the
codes into its indexes. Results must agree: FAISS flat after the re-rank gives the exact scan's
distances and ids; the approximate index is tuned (nprobe or efSearch doubled) until its recall@k
reaches 0.95.
"""
import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIT = 64


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB


def random_codes(n, seed):
    """n random 64-bit codes, packed: uniform random bytes are uniform random bits."""
    return np.random.default_rng(seed).integers(0, 256, (n, BIT // 8), dtype=np.uint8)


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def one_size(n, num_queries, k, threads, max_exact_s):
    import faiss
    import torch
    from retrieval import index
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    index.search(random_codes(1000, 2), random_codes(1, 3), 10)  # numba's compile, before the baseline
    base_gb = peak_rss_gb()
    database, queries = random_codes(n, 0), random_codes(num_queries, 1)
    # Fewer queries where the whole set would take longer than max_exact_s (said in the output).
    probe = min(50, num_queries)
    _, seconds = timed(lambda: index.search(database, queries[:probe], k))
    fits = int(max_exact_s / (seconds / probe))
    if fits < num_queries:
        queries = queries[:max(probe, fits)]
        print(f'n={n}: {len(queries)} of {num_queries} queries (exact on all would take about '
              f'{seconds / probe * num_queries:.0f} s)', flush=True)
    (exact_d, exact_i), exact_s = timed(lambda: index.search(database, queries, k))
    exact_gb = peak_rss_gb()
    flat_index = index.make_index(database, 'flat')
    (flat_d, flat_i), flat_s = timed(lambda: index.search(database, queries, k, 'flat', flat_index))
    identical = bool((flat_d == exact_d).all() and (flat_i == exact_i).all())
    del flat_index

    ann, setting = 'ivf', 'nprobe'
    nlist = int(4 * np.sqrt(n))
    ann_index, build_s = timed(lambda: index.make_index(database, 'ivf', nlist))
    value, tune = 8, queries[:min(100, len(queries))]
    while True:
        d, i = index.search(database, tune, k, ann, ann_index, nprobe=value)
        if index.recall(exact_d[:len(tune)], d, i) >= 0.95 or value >= nlist:
            break
        value = min(2 * value, nlist)
    (ann_d, ann_i), ann_s = timed(lambda: index.search(database, queries, k, ann, ann_index,
                                                       nprobe=value))
    ann_recall = index.recall(exact_d, ann_d, ann_i)
    q = len(queries)
    print(f'n={n}: {q} queries, top-{k}, {threads} threads; exact {exact_s:.2f} s, flat {flat_s:.2f} s, '
          f'flat identical to exact after the re-rank: {identical}; ivf nlist={nlist} built in '
          f'{build_s:.1f} s, {setting}={value}; packed codes {database.nbytes / 2 ** 30:.3f} GB, '
          f'resident before them {base_gb:.3f} GB, peak after the exact scan {exact_gb:.3f} GB '
          f'(+{(exact_gb - base_gb) / (database.nbytes / 2 ** 30) * 100 - 100:.0f} % over the codes)',
          flush=True)
    print(f'search: n={n} exact_qps={q / exact_s:.0f} flat_qps={q / flat_s:.0f} '
          f'speedup={flat_s / exact_s:.2f} ann={ann} ann_qps={q / ann_s:.0f} '
          f'ann_speedup={exact_s / ann_s:.2f} recall@{k}={ann_recall:.3f} '
          f'peak_rss_gb={peak_rss_gb():.3f}', flush=True)
    if not identical:
        sys.exit('FAISS flat after the re-rank differs from the exact scan')


def encode_speed(threads):
    """Rows/s of api.write (encode, pack, HDF5) over a MIRFlickr-sized feature file, against the
    encoding of both splits that train's validation does (main.retrieval_pairs), DADH at its
    default widths (hidden 8192) and 64 bits, random weights."""
    import torch
    import config
    import main
    from datasets.demo import ensure_demo
    from retrieval import api
    torch.set_num_threads(threads)
    ensure_demo(main.BENCH_FILE, n=20015)
    with tempfile.TemporaryDirectory() as tmp:
        options = {'flag': 'mir', 'data_path': main.BENCH_FILE, 'bit': BIT, 'device': 'cpu',
                   'checkpoint_dir': tmp, 'vis_env': None}
        cfg = config.parse(options)
        device = main.resolve_device('cpu')
        main.configure_device(cfg, device)
        splits = main.load_splits(cfg, device)
        method = main.make_method(cfg, splits.raw_images, splits.sizes()['train'], device)
        main.run_dir(cfg).mkdir(parents=True)
        method.save_best(main.run_dir(cfg))
        _, valid_s = timed(lambda: main.retrieval_pairs(method, splits))
        valid_rows = splits.sizes()['query'] + splits.sizes()['database']
        run = api.load_run(**options)
        _, encode_s = timed(lambda: api.write(run, Path(tmp) / 'codes.h5'))
        rows = len(run.data)
    print(f'encode: rows={rows} cpu encode_rows_s={rows / encode_s:.0f} ({encode_s:.1f} s, both '
          f'modalities, packed and written) validation_rows_s={valid_rows / valid_s:.0f} '
          f'({valid_s:.1f} s to encode the {valid_rows} query and database rows)', flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', nargs='+', type=float, default=[1e6, 1e7])
    parser.add_argument('--queries', type=int, default=1000)
    parser.add_argument('--topk', type=int, default=100)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--max_exact_s', type=float, default=180)
    parser.add_argument('--encode', default='True', choices=['True', 'False'])
    parser.add_argument('--one', type=float, help=argparse.SUPPRESS)  # a size, in this process
    args = parser.parse_args()
    if args.one:
        one_size(int(args.one), args.queries, args.topk, args.threads, args.max_exact_s)
        return
    for n in args.sizes:
        subprocess.run([sys.executable, __file__, '--one', str(n), '--queries', str(args.queries),
                        '--topk', str(args.topk), '--threads', str(args.threads),
                        '--max_exact_s', str(args.max_exact_s)], check=True)
    if args.encode == 'True':
        encode_speed(args.threads)


if __name__ == '__main__':
    main()
