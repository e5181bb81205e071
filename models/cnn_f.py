"""CNN-F (VGG-F, Chatfield et al. 2014) up to fc7, with MatConvNet's `imagenet-vgg-f.mat` weights.

Two geometries, the same layers and parameter names:
- 'published': SPEC §2's port, which DADH's and AGAH's code runs: LRN over 2 channels (torch's
  LocalResponseNorm(2, k=2)), and pool1 after a zero pad of one row and column at the bottom
  and right AND a padding of 1 on every side (28 x 28 out).
- 'matconvnet': MatConvNet's own, which DCMH's and SSAH's code runs (SPEC-DCMH §3, SPEC-SSAH §3):
  LRN y = x (k + alpha sum x^2)^-beta over a centred window of 5 channels, alpha not divided by the
  window (k 2, alpha 1e-4, beta 0.75, or the file's norm layers' param), and pool1 after the zero
  pad at the bottom and right only (27 x 27 out).

Only raw-image data needs it; the feature pipeline never reads the weight file. The layers' widths
are read from the file, so a file of the same structure with other widths loads too (the tests
use small ones); kernel sizes, strides and pads are CNN-F's.
"""
import os

import numpy as np
import torch
from torch import nn

from utils.errors import UserError

# name: (kernel size, stride, padding) of the convolutional layers; fc6 and fc7 are convolutions too.
LAYERS = {'conv1': (11, 4, 0), 'conv2': (5, 1, 2), 'conv3': (3, 1, 1), 'conv4': (3, 1, 1),
          'conv5': (3, 1, 1), 'fc6': (6, 1, 0), 'fc7': (1, 1, 0)}
GEOMETRIES = ('published', 'matconvnet')
MATCONVNET_LRN = (5, 2.0, 1e-4, 0.75)  # window, k, alpha, beta: imagenet-vgg-f.mat's norm layers


def matconvnet_lrn(window, k, alpha, beta):
    """MatConvNet's vl_nnnormalize, y = x (k + alpha sum_window x^2)^-beta over a centred window
    clipped at the ends: torch's LocalResponseNorm, whose alpha is divided by the window."""
    return nn.LocalResponseNorm(int(window), alpha=alpha * window, beta=beta, k=k)


class CNNF(nn.Module):
    """N x 3 x 224 x 224 images -> N x fc7 features (after ReLU), in one of GEOMETRIES."""

    def __init__(self, widths, average_image=None, geometry='published', lrn=MATCONVNET_LRN):
        super().__init__()
        if geometry not in GEOMETRIES:
            raise UserError(f"the CNN-F geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
        conv = {name: nn.Conv2d(c_in, c_out, k, stride=s, padding=p)
                for (name, (k, s, p)), c_in, c_out in zip(LAYERS.items(), [3] + widths[:-1], widths)}
        relu = lambda: nn.ReLU(inplace=True)
        if geometry == 'published':  # SPEC §2
            norm = lambda: nn.LocalResponseNorm(size=2, k=2)
            pool1 = nn.MaxPool2d(3, stride=2, padding=1)  # 55 -> 28
        else:  # matconvnet-cnnf, tf-lrn (SPEC-DCMH §3, SPEC-SSAH §3)
            norm = lambda: matconvnet_lrn(*lrn)
            pool1 = nn.MaxPool2d(3, stride=2)  # 55 -> 27
        self.geometry = geometry
        self.features = nn.Sequential(
            conv['conv1'], relu(), norm(), nn.ZeroPad2d((0, 1, 0, 1)), pool1,
            conv['conv2'], relu(), norm(), nn.MaxPool2d(3, stride=2),
            conv['conv3'], relu(), conv['conv4'], relu(), conv['conv5'], relu(),
            nn.MaxPool2d(3, stride=2),
            conv['fc6'], relu(), conv['fc7'], relu())
        self.convs = conv
        self.out_dim = widths[-1]
        self.register_buffer('average_image', None if average_image is None
                             else torch.as_tensor(average_image, dtype=torch.float32))

    def forward(self, images):
        if self.average_image is not None:
            images = images - self.average_image
        return self.features(images).flatten(1)

    @classmethod
    def from_matconvnet(cls, path, subtract_mean=True, geometry='published'):
        """Load `imagenet-vgg-f.mat` into `geometry`. MatConvNet's arrays are axis-reversed as the
        reference does (numpy .transpose()): weights H x W x In x Out become Out x In x W x H, the
        average image H x W x 3 becomes 3 x W x H, matching images read from v7.3 files (SPEC §2).
        The matconvnet geometry's LRN takes the param [window k alpha beta] of the file's norm
        layers where it has them."""
        import scipy.io
        if not os.path.isfile(path):
            raise UserError(f'{path}: no such file (the CNN-F weights imagenet-vgg-f.mat are needed '
                            'for raw-image data: set --pretrain_model_path)')
        try:
            data = scipy.io.loadmat(path)
            layers = {str(layer[0][0]['name'][0]): layer[0][0] for layer in data['layers'][0]}
        except Exception as e:
            raise UserError(f'{path}: not a MatConvNet model file ({type(e).__name__}: {e})') from None
        weights = {}
        for name, (kernel, _, _) in LAYERS.items():
            if name not in layers:
                raise UserError(f'{path}: no layer {name!r} (found {", ".join(layers)})')
            layer = layers[name]
            if 'weights' in layer.dtype.names:  # MatConvNet beta-8 and later: weights = {W, b}
                W, b = layer['weights'][0][0], layer['weights'][0][1]
            elif 'filters' in layer.dtype.names and 'biases' in layer.dtype.names:  # older releases
                W, b = layer['filters'], layer['biases']
            else:
                raise UserError(f'{path}: layer {name} has neither weights nor filters/biases')
            W = np.asarray(W, dtype=np.float32).transpose()
            if W.ndim != 4 or W.shape[2:] != (kernel, kernel):
                raise UserError(f'{path}: layer {name} has weights of shape {W.shape[::-1]}, '
                                f'expected {kernel} x {kernel} x In x Out')
            weights[name] = W, np.asarray(b, dtype=np.float32).reshape(-1)
        widths = [weights[name][0].shape[0] for name in LAYERS]
        for (name, (W, _)), c_in in zip(weights.items(), [3] + widths[:-1]):
            if W.shape[1] != c_in:
                raise UserError(f'{path}: layer {name} takes {W.shape[1]} channels, but the layer '
                                f'before gives {c_in}')
        average = average_image(path, data) if subtract_mean else None
        model = cls(widths, average, geometry, lrn_param(path, layers))
        with torch.no_grad():
            for name, (W, b) in weights.items():
                model.convs[name].weight.copy_(torch.from_numpy(W))
                model.convs[name].bias.copy_(torch.from_numpy(b))
        return model


def lrn_param(path, layers):
    """[window, k, alpha, beta] of the file's first norm layer (MatConvNet's `param`), or
    MATCONVNET_LRN when it has none; two norm layers that differ are refused."""
    params = {tuple(np.asarray(layer['param'], dtype=np.float64).ravel()) for layer in layers.values()
              if 'param' in layer.dtype.names and str(np.asarray(layer['type']).ravel()[0]) in ('lrn', 'normalize')}
    if not params:
        return MATCONVNET_LRN
    if len(params) > 1 or len(next(iter(params))) != 4:
        raise UserError(f'{path}: its norm layers have params {sorted(params)}, expected one '
                        '[window k alpha beta]')
    return next(iter(params))


def average_image(path, data):
    """The average image of a loaded MatConvNet file as 3 x W x H (224 x 224 x 3 axis-reversed) or
    3 x 1 x 1 (a 1 x 1 x 3 or 3-vector mean, which broadcasts over the image); `normalization` sits
    at the top level in older files and under `meta` in newer ones."""
    try:
        normalization = (data['normalization'] if 'normalization' in data
                         else data['meta'][0][0]['normalization'])[0][0]
        average = np.asarray(normalization['averageImage'], dtype=np.float32)
    except (KeyError, ValueError, IndexError):
        raise UserError(f'{path}: no normalization.averageImage (looked at the top level and under '
                        'meta)') from None
    if average.size == 3:
        return average.reshape(3, 1, 1)
    if average.shape != (224, 224, 3):
        raise UserError(f'{path}: normalization.averageImage has shape {average.shape}, expected '
                        '224 x 224 x 3 or 1 x 1 x 3')
    return average.transpose()
