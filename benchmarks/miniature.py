"""A raw-image miniature to try the raw-image path without the real data: N random 224 x 224
images whose colours follow their labels, with text and labels that carry them too (MATLAB v7.3,
DCMH's `images`/`YAll`/`LAll` layout, `--flag mir`), and a MatConvNet CNN-F weight file with
random weights (imagenet-vgg-f.mat's structure and average image), both written as the tests
write them (tests/matfiles.py).

    python benchmarks/miniature.py --out /tmp/mini [--n 300] [--widths small|real]

`--widths small` (8, 16, 16, 16, 16, 32, 24) trains in seconds; `real` is CNN-F's (64, 256, 256,
256, 256, 4096, 4096), for timings. Prints the options a run on the miniature needs.
"""
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.matfiles import raw_image_dataset, write_v73, write_vgg_f  # noqa: E402
from utils.errors import UserError, cli  # noqa: E402

WIDTHS = {'small': [8, 16, 16, 16, 16, 32, 24], 'real': [64, 256, 256, 256, 256, 4096, 4096]}


@cli
def miniature(out, n=300, widths='small', text_dim=60, num_label=6):
    if widths not in WIDTHS:
        raise UserError(f"--widths must be one of {', '.join(WIDTHS)}, got {widths!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images, text, labels = raw_image_dataset(n=n, text_dim=text_dim, num_label=num_label)
    write_v73(out / 'raw.mat', {'images': images.T, 'YAll': text, 'LAll': labels})
    write_vgg_f(out / 'vgg-f.mat', WIDTHS[widths])
    query, database = n // 6, n - n // 6
    print(f'wrote {out / "raw.mat"} ({n} images, text {text_dim}, labels {num_label}) and '
          f'{out / "vgg-f.mat"} (CNN-F widths {widths}); train on it with\n'
          f'  --data_path {out / "raw.mat"} --pretrain_model_path {out / "vgg-f.mat"} '
          f'--text_dim {text_dim} --num_label {num_label} --query_size {query} '
          f'--db_size {database} --training_size {database - query}')


if __name__ == '__main__':
    fire.Fire(miniature)
