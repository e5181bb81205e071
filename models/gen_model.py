"""The generator of SPEC §2: an MLP per modality and a tanh hash head per modality."""
import torch
from torch import nn


class BatchDropout(nn.Module):
    """Dropout whose mask is drawn for the whole global batch, of which x holds rows
    [first, first + len(x)): K processes drop what one process drops. The mask is drawn as
    F.dropout draws it on the CPU (bernoulli_ on a tensor like x), so one process gets F.dropout's
    numbers there."""

    def __init__(self, p):
        super().__init__()
        self.p, self.share = p, None  # share: (first, global batch size); None: x is the batch

    def forward(self, x):
        if not self.training:
            return x
        first, total = self.share or (0, len(x))
        keep = x.new_empty(total, *x.shape[1:]).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * keep[first:first + len(x)]


def mlp(in_dim, hidden_dim, dropout):
    """Linear -> BatchNorm1d -> ReLU (-> Dropout(0.5)), three times: widths h, h/2, h/4."""
    widths = [in_dim, hidden_dim, hidden_dim // 2, hidden_dim // 4]
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(BatchDropout(0.5))
    return nn.Sequential(*layers)


def forward_keeping_bn_inputs(net, x):
    """Run a Sequential and also return what went into each of its BatchNorm layers."""
    bn_inputs = []
    for layer in net:
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):  # also SyncBatchNorm
            bn_inputs.append(x)
        x = layer(x)
    return x, bn_inputs


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
        """The training passes (what DDP runs): f_i, h_i, f_t, h_t and the inputs of the text
        net's BatchNorm layers."""
        f_i = self.image_net(images)
        f_t, text_bn_inputs = forward_keeping_bn_inputs(self.text_net, text)
        return f_i, self.image_hash(f_i), f_t, self.text_hash(f_t), text_bn_inputs

    def set_batch_share(self, first, total):
        """This process runs rows [first, ...) of a global batch of `total` (dropout masks)."""
        for layer in self.modules():
            if isinstance(layer, BatchDropout):
                layer.share = (first, total)

    def image_codes(self, images):
        return torch.sign(self.image_hash(self.image_net(images)))

    def text_codes(self, text):
        return torch.sign(self.text_hash(self.text_net(text)))
