"""Seconds per direction of the evaluation (SPEC §7) on random codes and labels, at MIRFlickr and
NUS-WIDE scale: the published per-query MAP loop against utils.metrics, plus pr_curve and p_top_k.

    python benchmarks/eval.py [--device cpu|cuda] [--scale mir|nus|both] [--repeat 3]
"""
import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils import calc_map_k, p_top_k, pr_curve  # noqa: E402
from utils.memory import reuse_freed_memory  # noqa: E402

SCALES = {'mir': (2000, 18015, 64, 24), 'nus': (2100, 193734, 64, 21)}


def per_query_map(qB, rB, query_labels, retrieval_labels):
    """The published code's loop, one query at a time, with its sort made stable (SPEC §7)."""
    total = 0.0
    for i in range(qB.shape[0]):
        relevant = (query_labels[i] @ retrieval_labels.T > 0).float()
        count = relevant.sum()
        if count == 0:
            continue
        hamming = 0.5 * (qB.shape[1] - qB[i] @ rB.T)
        relevant = relevant[torch.sort(hamming, stable=True).indices]
        ranks = torch.nonzero(relevant).squeeze(1).float() + 1
        total += (torch.arange(1, int(count) + 1, device=qB.device).float() / ranks).mean().item()
    return total / qB.shape[0]


def timed(function, device, repeat):
    seconds = []
    for _ in range(repeat):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        value = function()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--scale', default='both', choices=['mir', 'nus', 'both'])
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--per_query_nus', action='store_true', help='also time the slow loop at NUS scale')
    args = parser.parse_args()
    reuse_freed_memory()  # as main.py does
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    for scale in (['mir', 'nus'] if args.scale == 'both' else [args.scale]):
        queries, database, bit, labels = SCALES[scale]
        qB = torch.randint(0, 2, (queries, bit), generator=generator).float().mul_(2).sub_(1).to(device)
        rB = torch.randint(0, 2, (database, bit), generator=generator).float().mul_(2).sub_(1).to(device)
        qL = (torch.rand(queries, labels, generator=generator) < 0.15).float().to(device)
        rL = (torch.rand(database, labels, generator=generator) < 0.15).float().to(device)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        print(f'{scale}: {queries} queries x {database} database items, {bit} bits, {labels} labels, '
              f'{device}')
        if scale == 'mir' or args.per_query_nus:
            seconds, plain = timed(lambda: per_query_map(qB, rB, qL, rL), device, 1)
            print(f'  per-query MAP (published loop): {seconds:.3f} s per direction')
        seconds, fast = timed(lambda: calc_map_k(qB, rB, qL, rL), device, args.repeat)
        print(f'  calc_map_k:                     {seconds:.3f} s per direction (MAP {fast:.6f})')
        if scale == 'mir' or args.per_query_nus:
            print(f'  |difference| to the loop: {abs(fast - plain):.2e}')
        seconds, _ = timed(lambda: calc_map_k(qB, rB, qL, rL, k=500), device, args.repeat)
        print(f'  calc_map_k(k=500):              {seconds:.3f} s')
        seconds, _ = timed(lambda: pr_curve(qB, rB, qL, rL), device, args.repeat)
        print(f'  pr_curve:                       {seconds:.3f} s')
        seconds, _ = timed(lambda: p_top_k(qB, rB, qL, rL), device, args.repeat)
        print(f'  p_top_k:                        {seconds:.3f} s')
        extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 2 ** 20
        print(f'  peak extra resident memory: {extra:.2f} GB')
        if device.type == 'cuda':
            print(f'  peak extra CUDA memory: {(torch.cuda.max_memory_allocated() - base) / 2 ** 30:.2f} GB')


if __name__ == '__main__':
    main()
