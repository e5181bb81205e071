"""The data of a run as tensors on the training device, with its split's rows (datasets/split.py)
as index tensors, and AGAH's mixed training rows."""
import torch

from datasets.data_handler import RawImages
from utils.errors import UserError


class Splits:
    """Images, text and labels on `device` (one copy each; raw images stay on disk as RawImages)
    and the rows of a Split (datasets/split.py) as index tensors on the device: train_rows, query,
    database and held_out (or None)."""

    def __init__(self, data, split, device):
        split.check(len(data))
        self.split = split
        self.train_rows, self.query, self.database = (
            torch.from_numpy(rows).to(device) for rows in (split.training, split.query, split.database))
        self.held_out = None if split.held_out is None else torch.from_numpy(split.held_out).to(device)
        self.raw_images = isinstance(data.images, RawImages)
        # from_numpy shares the arrays' memory on the CPU; .to() copies once onto a GPU.
        self.images = (data.images.to(device) if self.raw_images
                       else torch.from_numpy(data.images).to(device))
        self.text = torch.from_numpy(data.text).to(device)
        self.labels = torch.from_numpy(data.labels).to(device)

    def sizes(self):
        return {'train': len(self.train_rows), 'query': len(self.query),
                'database': len(self.database),
                'held_out': 0 if self.held_out is None else len(self.held_out)}

    def held_out_positions(self):
        """(positions of the held-out rows in the database, positions of the other database rows):
        the held-out rows query the rest of the database, so none retrieves itself."""
        held = torch.isin(self.database, self.held_out).cpu()
        positions = torch.arange(len(self.database))
        return positions[held], positions[~held]

    def append_mixed_training(self, generator, c=0.5):
        """AGAH's data_enhance: n/2 more training samples c·a + (1 − c)·b, a and b from two random
        permutations of the first half of the training rows, for images, text and labels alike."""
        if self.raw_images:
            raise UserError('--data_enhance True needs a feature file: it mixes image rows in memory')
        half = self.train_rows[:len(self.train_rows) // 2]
        a, b = (half[torch.randperm(len(half), generator=generator).to(half.device)] for _ in range(2))
        first_new = len(self.labels)
        for name in ('images', 'text', 'labels'):
            x = getattr(self, name)
            setattr(self, name, torch.cat([x, c * x[a] + (1 - c) * x[b]]))
        self.train_rows = torch.cat([self.train_rows, torch.arange(first_new, first_new + len(half),
                                                                   device=half.device)])
