"""The generator of SPEC §2: an MLP per modality and a tanh hash head per modality."""
import torch
from torch import nn


def mlp(in_dim, hidden_dim, dropout):
    """Linear -> BatchNorm1d -> ReLU (-> Dropout(0.5)), three times: widths h, h/2, h/4."""
    widths = [in_dim, hidden_dim, hidden_dim // 2, hidden_dim // 4]
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(0.5))
    return nn.Sequential(*layers)


class GEN(nn.Module):
    """Image net, text net and their hash heads, with PyTorch's default initialisation (SPEC §2).
    On raw images, `cnn` (CNN-F to fc7) goes first in the image net."""

    def __init__(self, image_dim, text_dim, hidden_dim, bit, dropout=False, cnn=None):
        super().__init__()
        self.image_net = mlp(cnn.out_dim if cnn else image_dim, hidden_dim, dropout)
        if cnn:
            self.image_net = nn.Sequential(cnn, *self.image_net)
        self.text_net = mlp(text_dim, hidden_dim, dropout)
        self.image_hash = nn.Sequential(nn.Linear(hidden_dim // 4, bit), nn.Tanh())
        self.text_hash = nn.Sequential(nn.Linear(hidden_dim // 4, bit), nn.Tanh())

    def forward(self, images, text):
        f_i, f_t = self.image_net(images), self.text_net(text)
        return f_i, f_t, self.image_hash(f_i), self.text_hash(f_t)

    def image_codes(self, images):
        return torch.sign(self.image_hash(self.image_net(images)))

    def text_codes(self, text):
        return torch.sign(self.text_hash(self.text_net(text)))
