"""Seconds per training epoch, per phase of the epoch and per validation, for any registered method,
at MIRFlickr's sizes (on a synthetic MIRFlickr-shaped feature file unless --data_path is given); the
GFLOP/s its matrix products reach against this machine's matrix-product peak; peak memory; the
projected time of the method's full run.

    python benchmarks/train.py --model dadh [--epochs 3] [--amp bf16] [--device cuda:0] [train options]

Epoch 1 is the warm-up, with its matrix FLOPs counted (torch's FlopCounterMode) in each phase a
method marks (utils/phases.py; 'epoch' is the whole of it); the later epochs are timed. On a
raw-image file it also times CNN-F's forward and backward alone at the batch size (images/s).
Ends with one line: `bench: model=... epoch_s=... valid_s=... gflops=... peak_frac=... ...`.
"""
import resource
import statistics
import sys
import time
from pathlib import Path

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import config  # noqa: E402
import runs  # noqa: E402
from datasets.demo import ensure_demo  # noqa: E402
from utils import distributed, phases  # noqa: E402
from utils.errors import cli  # noqa: E402
from utils.memory import reuse_freed_memory  # noqa: E402
from utils.rng import seed_everything  # noqa: E402

BENCH_FILE = './data/BENCH-FLICKR.mat'


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def matmul_peak(device, dtype):
    """GFLOP/s of a large square matrix product on `device` in `dtype`: the peak to compare with."""
    n, reps = (8192, 20) if device.type == 'cuda' else (4096, 3)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def cnn_images_per_second(cfg, device, steps=3):
    """CNN-F alone (the run's geometry), forward and backward on batches of --batch_size random
    images: the bound a raw-image training step approaches."""
    from models.cnn_f import CNNF
    cnn = CNNF.from_matconvnet(cfg.pretrain_model_path, True, cfg.cnn_geometry).to(device)
    images = torch.rand(cfg.batch_size, 3, 224, 224, device=device) * 255
    seconds = []
    for _ in range(steps + 1):
        synchronize(device)
        start = time.perf_counter()
        cnn(images).sum().backward()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return cfg.batch_size / statistics.median(seconds[1:])


@cli
def bench(epochs=3, **options):
    cfg = config.parse({'data_path': BENCH_FILE, 'vis_env': None, **options})
    print(f'configuration:\n{cfg}')
    device = runs.resolve_device(cfg.device)
    runs.configure_device(cfg.tf32, cfg.amp, device)
    if cfg.data_path == BENCH_FILE:
        ensure_demo(BENCH_FILE, n=20015)
    seed_everything(cfg.seed)
    splits = runs.load_splits(cfg, device)
    num_train = splits.sizes()['train']
    method = runs.make_method(cfg, splits.raw_images, num_train, device)
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = runs.Batches(splits, None, distributed.SOLO)

    timed = []  # per epoch after the first: {phase: [seconds, FLOPs, entries]}
    for epoch in range(epochs):
        batches.desc = f'epoch {epoch + 1}/{epochs}'
        with phases.record(lambda: synchronize(device), count_flops=epoch == 0) as recording:
            with phases.phase('epoch'):
                losses = method.train_epoch(batches, generator)
                method.end_epoch(epoch, batches.labels)
        if epoch == 0:
            counted = dict(recording.totals)
        timed.append(dict(recording.totals))
        print(f"epoch {epoch + 1}: {recording.totals['epoch'][0]:.2f} s, loss "
              f"{losses['loss'].mean().item():.4f}", flush=True)
    timed = timed[1:] or timed
    start = time.perf_counter()
    mapi2t, mapt2i = runs.evaluate(method, splits)['query']
    synchronize(device)
    valid_s = time.perf_counter() - start
    print(f'validation: {valid_s:.2f} s, MAP(i->t) {mapi2t:.4f}, MAP(t->i) {mapt2i:.4f} after '
          f'{epochs} epochs')

    peak = matmul_peak(device, torch.bfloat16 if cfg.amp == 'bf16' else torch.float32)
    print(f'matmul peak {peak:.0f} GFLOP/s ({"bf16" if cfg.amp else "fp32"})')
    figures = {}
    for name, (_, flops, entries) in counted.items():
        seconds = statistics.median(t[name][0] for t in timed if name in t)
        per_entry = flops / entries  # a phase may run a different number of times an epoch
        gflops = statistics.median(per_entry * t[name][2] / t[name][0] / 1e9 for t in timed if name in t)
        figures[name] = seconds, gflops
        print(f'  {name:<24} {seconds:8.2f} s an epoch, {flops / 1e12:7.3f} TFLOP in epoch 1, '
              f'{gflops:7.0f} GFLOP/s = {gflops / peak:.2f} of peak')
    epoch_s, gflops = figures['epoch']
    limit = method.epoch_limit[0] if method.epoch_limit else cfg.max_epoch
    run_epochs = min(cfg.max_epoch, limit)
    validations = run_epochs // cfg.valid_freq if cfg.valid else 1
    full = run_epochs * epoch_s + validations * valid_s
    print(f'full run ({run_epochs} epochs, {validations} validations): {full / 3600:.2f} h')
    line = (f'bench: model={cfg.model} epoch_s={epoch_s:.2f} valid_s={valid_s:.2f} '
            f'rows_per_s={num_train / epoch_s:.0f} gflops={gflops:.0f} peak_frac={gflops / peak:.2f} '
            f'full_run_h={full / 3600:.2f} '
            f'peak_rss_gb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f}')
    if splits.raw_images:
        line += f' cnn_f_images_s={cnn_images_per_second(cfg, device):.1f}'
    if device.type == 'cuda':
        line += f' cuda_peak_gb={torch.cuda.max_memory_allocated(device) / 1e9:.2f}'
    print(line)


if __name__ == '__main__':
    reuse_freed_memory()
    fire.Fire(bench)
