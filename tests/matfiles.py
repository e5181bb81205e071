"""Write real MATLAB files for the tests: v7 through scipy, v7.3 (HDF5 with MATLAB's 512-byte header,
arrays axis-reversed) through h5py, and the NUS-WIDE three-file folder."""
import os

import h5py
import numpy as np
import scipy.io

MATLAB_CLASS = {np.dtype('float32'): 'single', np.dtype('float64'): 'double',
                np.dtype('uint8'): 'uint8', np.dtype('int32'): 'int32', np.dtype('bool'): 'logical'}


def write_v7(path, arrays):
    scipy.io.savemat(path, arrays)


def write_v73(path, arrays, header=True):
    """HDF5 as MATLAB's save -v7.3 writes it: a user block holding the text header, and every
    array stored transposed (MATLAB is column-major)."""
    with h5py.File(path, 'w', userblock_size=512) as f:
        for key, value in arrays.items():
            value = np.asarray(value)
            stored = value.astype(np.uint8) if value.dtype == bool else value
            dataset = f.create_dataset(key, data=stored.T)
            dataset.attrs['MATLAB_class'] = np.bytes_(MATLAB_CLASS.get(value.dtype, 'double'))
    if header:
        text = b'MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Nov 23 00:00:00 2026 HDF5 schema 1.00 .'
        with open(path, 'r+b') as f:
            f.write(text.ljust(116, b' ') + b'\x00' * 8 + b'\x00\x02' + b'IM')


def write_nus_folder(folder, images, text, labels, v73=False):
    os.makedirs(folder, exist_ok=True)
    write = write_v73 if v73 else write_v7
    for name, key, value in (('nus-wide-tc21-iall.mat', 'IAll', images),
                             ('nus-wide-tc21-yall.mat', 'YAll', text),
                             ('nus-wide-tc21-lall.mat', 'LAll', labels)):
        write(os.path.join(folder, name), {key: value})


def small_dataset(n=300, image_dim=64, text_dim=40, num_label=6, seed=0):
    """Images, 0/1 text and 0/1 labels (every row labelled) that carry the labels in both
    modalities, so a few epochs of training give a MAP well above chance."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, num_label)) < 0.05).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, num_label, n)] = 1
    images = (labels @ rng.standard_normal((num_label, image_dim))
              + 0.5 * rng.standard_normal((n, image_dim))).astype(np.float32)
    words = rng.random((num_label, text_dim)) < 0.2
    text = ((labels @ words) > 0) ^ (rng.random((n, text_dim)) < 0.05)
    return images, text.astype(np.uint8), labels


def write_mir_file(path, n=300, **widths):
    """small_dataset(n, **widths) as a MIRFlickr-layout v7 file (images, YAll, LAll) at `path`."""
    images, text, labels = small_dataset(n, **widths)
    write_v7(path, {'images': images, 'YAll': text, 'LAll': labels})
    return path


def write_vgg_f(path, widths, seed=0, weights_field='weights', normalization='top', average='image'):
    """A MatConvNet model file with the structure of imagenet-vgg-f.mat (a cell array of layer
    structs, weights as {W, b} with W stored H x W x In x Out, and `normalization.averageImage`),
    random weights and the layer widths given (CNN-F's are 64, 256, 256, 256, 256, 4096, 4096).

    The layouts MatConvNet has shipped: weights_field 'weights' ({W, b}) or 'filters' (older
    `filters` and `biases` fields); normalization at the 'top' level or under 'meta'; average
    'image' (224 x 224 x 3) or 'mean' (1 x 1 x 3). Returns the average as stored."""
    rng = np.random.default_rng(seed)
    kernels = {'conv1': 11, 'conv2': 5, 'conv3': 3, 'conv4': 3, 'conv5': 3, 'fc6': 6, 'fc7': 1}
    layers, c_in = [], 3
    for (name, k), c_out in zip(kernels.items(), widths):
        W = (rng.standard_normal((k, k, c_in, c_out)) / np.sqrt(k * k * c_in)).astype(np.float32)
        b = (0.01 * rng.standard_normal((c_out, 1))).astype(np.float32)
        if weights_field == 'weights':
            weights = np.empty((1, 2), dtype=object)
            weights[0, 0], weights[0, 1] = W, b
            conv, relu = {'weights': weights}, {'weights': np.empty((0, 0))}
        else:
            conv, relu = {'filters': W, 'biases': b.T}, {'filters': np.empty((0, 0)),
                                                       'biases': np.empty((0, 0))}
        layers += [{'name': name, 'type': 'conv', **conv},
                   {'name': f'relu{len(layers) // 2 + 1}', 'type': 'relu', **relu}]
        c_in = c_out
    cells = np.empty((1, len(layers)), dtype=object)
    for i, layer in enumerate(layers):
        cells[0, i] = layer
    shape = (224, 224, 3) if average == 'image' else (1, 1, 3)
    average = rng.uniform(100, 130, shape).astype(np.float32)
    norm = {'averageImage': average, 'keepAspect': 1, 'imageSize': np.array([224, 224, 3.0])}
    scipy.io.savemat(path, {'layers': cells, **({'normalization': norm} if normalization == 'top'
                                                 else {'meta': {'normalization': norm}})})
    return average


def raw_image_dataset(n=48, text_dim=40, num_label=6, seed=0):
    """uint8 N x 3 x 224 x 224 images whose colours follow the labels, with text and labels as in
    small_dataset."""
    rng = np.random.default_rng(seed)
    _, text, labels = small_dataset(n, 8, text_dim, num_label, seed)
    colours = rng.uniform(0, 200, (num_label, 3))
    base = labels @ colours / labels.sum(1, keepdims=True)
    images = base[:, :, None, None] + rng.uniform(0, 55, (n, 3, 224, 224))
    return images.astype(np.uint8), text, labels
