"""Images per second of `prepare`'s two stages and of the whole pipeline, on MIRFlickr-sized JPEGs
(500 x 375, generated): decoding alone (Pillow in --workers threads), CNN-F alone (real widths,
random weights built in memory), and the writer doing both, decoding overlapping the network.
The pipeline should run at >= 80 % of the slower stage.

    python benchmarks/prepare.py [--images 256] [--device cpu] [--batch_size 64] [--workers 2]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.images import load_images  # noqa: E402
from datasets.prepare import Collection, write  # noqa: E402
from models.cnn_f import CNNF  # noqa: E402

CNN_F_WIDTHS = [64, 256, 256, 256, 256, 4096, 4096]


def write_jpegs(folder, count):
    """Smooth random photos (noise would make JPEG decoding unrealistically slow)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        path = folder / f'im{i + 1}.jpg'
        Image.fromarray(small).resize((500, 375), Image.BILINEAR).save(path, quality=90)
        paths.append(path)
    return paths


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=256)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--workers', type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    cnn = CNNF(CNN_F_WIDTHS, np.full((3, 224, 224), 120, dtype=np.float32)).eval().to(device)

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        paths = write_jpegs(folder, args.images)

        start = time.perf_counter()
        for _ in load_images(paths, args.workers, 2 * args.batch_size):
            pass
        decode_ips = len(paths) / (time.perf_counter() - start)

        batch = torch.from_numpy(np.random.default_rng(0).integers(
            0, 256, (args.batch_size, 3, 224, 224), dtype=np.uint8))
        with torch.inference_mode():
            cnn(batch[:2].to(device).float())  # warm-up
            synchronize(device)
            start = time.perf_counter()
            done = 0
            while done < len(paths):
                cnn(batch.to(device).float()).cpu()
                done += len(batch)
            synchronize(device)
        cnn_ips = done / (time.perf_counter() - start)

        n = len(paths)
        collection = Collection('bench', paths, np.ones((n, 1), np.uint8), np.ones((n, 1), np.uint8),
                                [p.name for p in paths], ['word'], ['label'], n)
        sidecar, seconds = write(collection, folder / 'out.mat', cnn, {'kind': 'cnn_f_fc7'}, device,
                                 args.batch_size, args.workers)
        pipeline_ips = sidecar['counts']['kept'] / seconds

    ratio = pipeline_ips / min(decode_ips, cnn_ips)
    print(f'{n} JPEGs of 500 x 375 on {device} ({torch.get_num_threads()} torch threads, '
          f'{args.workers} decoding threads, batch {args.batch_size}); 25000 images (MIRFlickr-25K) '
          f'would take {25000 / pipeline_ips / 60:.1f} min')
    print(f'prepare: decode_ips={decode_ips:.1f} cnn_ips={cnn_ips:.1f} pipeline_ips={pipeline_ips:.1f} '
          f'ratio={ratio:.2f}')


if __name__ == '__main__':
    main()
