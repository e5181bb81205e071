"""The interface every method offers, and what several methods share.

main.py, runs.py, retrieval/ and torchrun call a method only through this (DESIGN.md, "The method
interface"); a method is one file in models/ plus its line in models/__init__.py:

- class attributes: NAME; MODEL_FILE (its best model in the run folder) and PUBLISHED_FILE (the
  published code's, read too, or None); OPTIONS, its own hyper-parameters, name: (default, meaning)
  or (default, meaning, minimum); DEFAULTS, its own defaults of the run options (config.RUN:
  max_epoch, valid, select_on, ...); DATA_DEFAULTS, per --flag, its split of that data set and
  anything else that differs there; DEMO, the smaller defaults of --flag demo; SETTINGS, per --flag,
  the options of its published runs that are not defaults (run_mir.sh, run_nus.sh pass them);
  PUBLISHED, the MAP rows its paper prints (`report` shows them beside the runs);
  STANDARDISE_FEATURES (DADH's scalar standardisation of the image features), CENTRE_TEXT (text
  less each column's mean, DCMH's), both computed on the training file and kept with the run, and
  SUBTRACT_AVERAGE_IMAGE (CNN-F's input less the weight file's average image); CNN_GEOMETRY,
  the CNN-F it fine-tunes on raw images ('published' or 'matconvnet', models/cnn_f.py); SPLIT,
  the scheme of its published split ('ranges' or 'random', datasets/split.py).
- construction from numbers: `Method(num_train, device, cnn=None, *, **hyper)`: hyper holds the
  keyword-only parameters its __init__ names, from its OPTIONS and the run's shared numbers
  (image_dim, text_dim, num_label, bit, batch_size, max_epoch, amp); `cnn` is CNN-F on raw images.
- `train_epoch(batches, generator)`: one epoch as its spec schedules it; `batches(rows, ...)`
  returns the tensors of training rows `rows` (None when a signal asks the run to stop: then return
  at once), `batches.labels` all training labels, `batches.desc` the epoch's progress-bar name,
  `batches.note(line)` a warning said once a run;
  `generator` is the run's CPU generator for shuffles and draws. Returns {term: 1-D tensor of its
  values in the epoch}; the term 'loss' is the epoch's loss (its mean is printed and recorded).
- `end_epoch(epoch, train_labels)`: the per-epoch updates after epoch `epoch` (from 0).
- `encode_images(x)`, `encode_text(x)`: ±1 codes of a tensor of rows, in eval mode; `code_batch`:
  the rows encoded together where a code depends on its batch (AGAH), else None; `device`: where
  its networks are (rows read from disk are moved there).
- `is_better(mapi2t, mapt2i, best)`: its rule for the kept model.
- `save_best(run_dir)`, `load_best(run_dir, device)`; `state_dict()`, `load_state_dict(state)`.
- `distribute(world, device)`: run under torchrun, or raise the one-line refusal.
- `lr`: its learning rate now (recorded per epoch), and `epoch_limit`: the last epoch its schedule
  allows (None: --max_epoch alone decides).
"""
import torch

from utils.errors import UserError
from utils.progress import bar


class Method:
    NAME = None
    MODEL_FILE = None
    PUBLISHED_FILE = None
    OPTIONS = {}
    DEFAULTS = {}
    DATA_DEFAULTS = {}
    DEMO = {}
    SETTINGS = {}
    PUBLISHED = ()
    STANDARDISE_FEATURES = False
    CENTRE_TEXT = False
    SUBTRACT_AVERAGE_IMAGE = True
    CNN_GEOMETRY = 'published'
    SPLIT = 'ranges'
    code_batch = None
    epoch_limit = None
    lr = None

    @classmethod
    def training_mix(cls, hyper):
        """The weight c of mixed training rows c·a + (1 − c)·b to append before training (AGAH's
        data_enhance), or None."""
        return None

    def distribute(self, world, device):
        raise UserError(f'--model {self.NAME} does not run under torchrun (see the README, '
                        '"Multi-GPU and multi-node"): train it in one process')

    @staticmethod
    def is_better(mapi2t, mapt2i, best):
        """The best mean of the two MAPs so far (DADH's rule, SPEC §6)."""
        return best is None or (mapi2t + mapt2i) / 2 > sum(best) / 2

    def end_epoch(self, epoch, train_labels):
        pass


def rows_per_epoch(num_train, batch_size):
    """A last batch of one sample cannot pass BatchNorm in train mode (SPEC §6): it is dropped."""
    return num_train - 1 if num_train % batch_size == 1 else num_train


def shuffled_batches(num_train, batch_size, generator, device, note):
    """One pass over the training rows in a shuffled order, batch by batch (SPEC §6): DADH's and
    AGAH's epoch. A last batch of one row is dropped (rows_per_epoch), said once through `note`."""
    order = torch.randperm(num_train, generator=generator).to(device)
    used = rows_per_epoch(num_train, batch_size)
    if used < num_train:
        note(f'the last batch of every epoch would hold 1 sample; it is dropped '
             f'(training_size {num_train}, batch_size {batch_size})')
    return [order[first:min(first + batch_size, used)] for first in range(0, used, batch_size)]


def random_batches(num_train, batch_size, steps, generator, device):
    """`steps` batches, each a fresh draw of min(batch_size, num_train) distinct rows (the first of
    a new permutation): rows repeat across steps and some are never drawn (DCMH's, SSAH's passes)."""
    size = min(batch_size, num_train)
    return [torch.randperm(num_train, generator=generator)[:size].to(device) for _ in range(steps)]


def run_steps(step, batches, row_batches, desc, images=True, text=True):
    """step(rows, images, text, labels) for each batch of `row_batches`, reading each through
    `batches`; stops early when it returns None (a stop was asked). Returns {term: values}."""
    losses = []
    progress = bar(row_batches, desc)
    for rows in progress:
        batch = batches(rows, images=images, text=text)
        if batch is None:
            break
        losses.append(step(rows, *batch))
        if len(losses) % 20 == 1:  # reading a value waits for the device: not every batch
            progress.set_postfix(loss=f"{losses[-1]['loss'].item():.4f}")
    return stack_losses(losses)


def stack_losses(losses):
    """[{term: scalar tensor}] per step as {term: 1-D tensor on the CPU} ({} for no step)."""
    if not losses:
        return {}
    table = torch.stack([torch.stack(list(step.values())) for step in losses]).cpu()
    return dict(zip(losses[0], table.T))


@torch.inference_mode()
def encode_in_batches(to_codes, x, size, autocast, desc):
    """to_codes of rows of x, `size` rows at a time, as float codes."""
    with autocast():
        return torch.cat([to_codes(x[s:s + size]).float() for s in bar(range(0, len(x), size), desc)])
