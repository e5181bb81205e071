"""CNN-F and its MatConvNet weight loader, on a small file of imagenet-vgg-f.mat's structure."""
import numpy as np
import pytest
import scipy.io
import torch

from models.cnn_f import CNNF
from tests.matfiles import write_vgg_f
from utils.errors import UserError

WIDTHS = [8, 16, 16, 16, 16, 32, 24]


def test_weights_are_axis_reversed_into_the_layers(tmp_path):
    path = tmp_path / 'vgg-f.mat'
    average = write_vgg_f(path, WIDTHS)
    cnn = CNNF.from_matconvnet(path)
    layers = scipy.io.loadmat(path)['layers'][0]
    conv2 = next(layer[0][0] for layer in layers if layer[0][0]['name'][0] == 'conv2')
    W = conv2['weights'][0][0]  # 5 x 5 x 8 x 16 (H x W x In x Out)
    assert cnn.convs['conv2'].weight.shape == (16, 8, 5, 5)
    assert torch.equal(cnn.convs['conv2'].weight, torch.from_numpy(W.transpose()))
    assert torch.equal(cnn.convs['conv2'].bias, torch.from_numpy(conv2['weights'][0][1].ravel()))
    assert torch.equal(cnn.average_image, torch.from_numpy(average.transpose()))  # 3 x W x H
    assert cnn.out_dim == 24


def test_forward_subtracts_the_average_image_only_when_asked(tmp_path):
    path = tmp_path / 'vgg-f.mat'
    write_vgg_f(path, WIDTHS)
    with_mean, without_mean = CNNF.from_matconvnet(path), CNNF.from_matconvnet(path, subtract_mean=False)
    assert without_mean.average_image is None
    images = torch.rand(2, 3, 224, 224) * 255
    out = with_mean(images)
    assert out.shape == (2, 24) and (out >= 0).all()  # fc7 after its ReLU
    torch.testing.assert_close(out, without_mean(images - with_mean.average_image))
    assert not torch.allclose(out, without_mean(images))


def spatial_sizes(cnn):
    """The width of a 224 x 224 image after each convolution and pooling of `cnn`."""
    sizes, x = [], torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        for layer in cnn.features:
            x = layer(x)
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
                sizes.append(x.shape[-1])
    return sizes


def test_spatial_sizes_follow_cnn_f():
    # 224 -> conv1 54 -> pad 55 -> pool 28 -> conv2 28 -> pool 13 -> conv3..5 13 -> pool 6 -> fc6 1
    cnn = CNNF([64, 256, 256, 256, 256, 4096, 4096])
    assert spatial_sizes(cnn) == [54, 28, 28, 13, 13, 13, 13, 6, 1, 1]
    # conv1..conv5, fc6 (4096 x 256 x 6 x 6) and fc7, with biases
    assert sum(p.numel() for p in cnn.parameters()) == (23_296 + 409_856 + 3 * 590_080 + 37_752_832
                                                         + 16_781_312)


def test_missing_or_wrong_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r'no such file .*--pretrain_model_path'):
        CNNF.from_matconvnet(tmp_path / 'none.mat')
    scipy.io.savemat(tmp_path / 'other.mat', {'x': np.zeros(3)})
    with pytest.raises(UserError, match='not a MatConvNet model file'):
        CNNF.from_matconvnet(tmp_path / 'other.mat')
    write_vgg_f(tmp_path / 'bad.mat', [8, 16, 16, 16, 16, 32, 24])
    data = {k: v for k, v in scipy.io.loadmat(tmp_path / 'bad.mat').items() if not k.startswith('__')}
    data['layers'] = data['layers'][:, 2:]  # drop conv1 and relu1
    scipy.io.savemat(tmp_path / 'bad.mat', data)
    with pytest.raises(UserError, match="no layer 'conv1'"):
        CNNF.from_matconvnet(tmp_path / 'bad.mat')


@pytest.mark.parametrize('weights_field, normalization, average', [
    ('weights', 'top', 'image'), ('filters', 'top', 'image'), ('weights', 'meta', 'image'),
    ('weights', 'meta', 'mean'), ('filters', 'top', 'mean')])
def test_every_matconvnet_layout_loads_the_same_network(tmp_path, weights_field, normalization, average):
    write_vgg_f(tmp_path / 'ref.mat', WIDTHS)
    reference = CNNF.from_matconvnet(tmp_path / 'ref.mat', subtract_mean=False)
    stored = write_vgg_f(tmp_path / 'layout.mat', WIDTHS, weights_field=weights_field,
                         normalization=normalization, average=average)
    cnn = CNNF.from_matconvnet(tmp_path / 'layout.mat')
    for name, conv in cnn.convs.items():  # same seed: the same weights whatever the layout
        assert torch.equal(conv.weight, reference.convs[name].weight)
        assert torch.equal(conv.bias, reference.convs[name].bias)
    assert torch.equal(cnn.average_image, torch.from_numpy(stored.transpose()))
    images = torch.rand(2, 3, 224, 224) * 255
    torch.testing.assert_close(cnn(images), reference(images - torch.from_numpy(stored.transpose())))


def test_matconvnet_geometry_pools_to_27_and_normalises_over_five_channels():
    """SPEC-DCMH §3, SPEC-SSAH §3: pool1 after a zero pad at the bottom and right only (54 -> 55 ->
    27), and y = x (k + alpha sum x^2)^-beta over a centred window of 5 channels, clipped at the
    ends, alpha not divided by the window."""
    cnn = CNNF([64, 256, 256, 256, 256, 4096, 4096], geometry='matconvnet')
    assert spatial_sizes(cnn) == [54, 27, 27, 13, 13, 13, 13, 6, 1, 1]
    lrn = cnn.features[2]
    x = torch.rand(2, 7, 3, 3, dtype=torch.float64) * 40
    expected = torch.empty_like(x)
    for c in range(7):
        window = x[:, max(0, c - 2):c + 3]
        expected[:, c] = x[:, c] * (2 + 1e-4 * (window ** 2).sum(1)) ** -0.75
    torch.testing.assert_close(lrn(x), expected, rtol=1e-12, atol=0)
    assert isinstance(cnn.features[7], torch.nn.LocalResponseNorm)


@pytest.mark.parametrize('weights_field, normalization, average', [
    ('weights', 'top', 'image'), ('filters', 'meta', 'mean')])
def test_matconvnet_geometry_loads_every_layout_with_the_same_weights(tmp_path, weights_field,
                                                                      normalization, average):
    write_vgg_f(tmp_path / 'ref.mat', WIDTHS)
    write_vgg_f(tmp_path / 'layout.mat', WIDTHS, weights_field=weights_field,
                normalization=normalization, average=average)
    published = CNNF.from_matconvnet(tmp_path / 'ref.mat')
    cnn = CNNF.from_matconvnet(tmp_path / 'layout.mat', geometry='matconvnet')
    assert cnn.geometry == 'matconvnet'
    for name, conv in cnn.convs.items():
        assert torch.equal(conv.weight, published.convs[name].weight)
    images = torch.rand(2, 3, 224, 224) * 255
    assert cnn(images).shape == published(images).shape == (2, 24)
    assert not torch.allclose(cnn(images), published(images))  # another geometry, other features


def test_matconvnet_lrn_takes_the_files_norm_param(tmp_path):
    write_vgg_f(tmp_path / 'vgg-f.mat', WIDTHS)
    data = {k: v for k, v in scipy.io.loadmat(tmp_path / 'vgg-f.mat').items() if not k.startswith('__')}
    cells = np.empty((1, data['layers'].shape[1] + 1), dtype=object)
    for i in range(data['layers'].shape[1]):
        cells[0, i] = data['layers'][0, i]
    cells[0, -1] = {'name': 'norm1', 'type': 'lrn', 'param': np.array([5, 1.0, 2e-5, 0.75])}
    data['layers'] = cells
    scipy.io.savemat(tmp_path / 'vgg-f.mat', data)
    lrn = CNNF.from_matconvnet(tmp_path / 'vgg-f.mat', geometry='matconvnet').features[2]
    assert (lrn.size, lrn.k, lrn.beta) == (5, 1.0, 0.75) and lrn.alpha == pytest.approx(1e-4)
    with pytest.raises(UserError, match='the CNN-F geometry must be one of published, matconvnet'):
        CNNF(WIDTHS, geometry='tf')
