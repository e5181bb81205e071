"""AGAH (SPEC-AGAH.md): its loss terms and per-epoch updates against hand-computed values and plain
loops, and two-epoch runs through main.py on a raw-image v7.3 file and on a feature file."""
import math
import re

import pytest
import torch
from torch import nn

from datasets.data_handler import RawImages, load_data
from models.codes import update_code_map, update_feature_map
from models.losses import agah_loss, critic_loss, plain_triplet_loss
from tests.matfiles import raw_image_dataset, small_dataset, write_mir_file, write_v7, write_v73, write_vgg_f
from tests.test_main import MAP_LINE, run_main
from utils.errors import UserError

R = 1 / math.sqrt(2)


def test_plain_triplet_loss_by_hand():
    # Samples 0 and 2 share label 0, sample 1 has label 1. d = 1 − cos(src_j, tgt_k) is
    # [[0, 1, 1 − r], [1, 0, 1 − r], [0, 1, 1 − r]], r = 1/√2. With margin 0.8 the positive
    # triplets are (0, 2, 1) and (2, 2, 1): 0.8 − r each, and (1, 1, 2): r − 0.2.
    source = torch.tensor([[1., 0.], [0., 1.], [1., 0.]], dtype=torch.float64)
    target = torch.tensor([[1., 0.], [0., 1.], [1., 1.]], dtype=torch.float64)
    labels = torch.tensor([[1., 0.], [0., 1.], [1., 0.]], dtype=torch.float64)
    loss = plain_triplet_loss(source, target, labels, margin=0.8)
    assert loss.item() == pytest.approx(2 * (0.8 - R) + (R - 0.2), rel=1e-12)
    # An anchor without labels has no positives: it adds nothing.
    unlabelled = labels.clone()
    unlabelled[1] = 0
    assert plain_triplet_loss(source, target, unlabelled, margin=0.8).item() == pytest.approx(
        2 * (0.8 - R), rel=1e-12)


def test_agah_loss_terms_by_hand():
    h_i = torch.tensor([[0.5, -0.5]], dtype=torch.float64)
    h_t = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([[1.0]], dtype=torch.float64)
    code_map = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    class_i, class_t = torch.tensor([[0.0]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)
    total, terms = agah_loss(h_i, h_t, class_i, class_t, labels, code_map,
                             torch.tensor(0.25, dtype=torch.float64), margin=0.3, alpha=1,
                             beta=0.5, gamma=0.1, eta=2, mu=3)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))
    expected = {
        'triplet': 0.0,  # one sample: no negatives
        'balance': sigmoid(-1) + sigmoid(-R),  # cos(|h_i|, 1) = 1, cos(|h_t|, 1) = 1/√2
        'classification': -math.log(sigmoid(0)) - math.log(sigmoid(2)),
        'code_map': (1 - 2) ** 2 + (1 - 2) ** 2,  # hMᵀ = 1 for both, target bit·(2y − 1) = 2
        'quantisation': 0.25 + 0.25 + 0 + 0,  # sign(0) = 0
        'adversarial': 0.25,
    }
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-12), name
    weights = {'triplet': 1, 'balance': 1, 'classification': 0.5, 'code_map': 0.1,
               'quantisation': 2, 'adversarial': 3}
    assert total.item() == pytest.approx(sum(weights[k] * v for k, v in expected.items()), rel=1e-12)


def test_critic_loss_of_a_linear_critic_by_hand():
    # D(x) = w·x has gradient w everywhere: the penalty is 10 (‖w‖ − 1)² = 160 for w = (3, 4).
    critic = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[3.0, 4.0]]))
    real = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    fake = torch.tensor([[0.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    loss = critic_loss(critic, real, fake)
    assert loss.item() == pytest.approx(-(3 + 6) / 2 + (4 + 12) / 2 + 160, rel=1e-12)


def code_map_loop(M, H_i, H_t, L):
    """The code-map update written out entry by entry, in place over the bits."""
    M = M.clone()
    K, bit = M.shape
    U, V = torch.sign(H_i), torch.sign(H_t)
    S = 2 * torch.eye(K, dtype=M.dtype) - 1
    Q = 2 * bit * (L.T @ (U + V) + S @ M)
    for k in range(bit):
        column = []
        for r in range(K):
            acc = 0.0
            for j in range(bit):
                if j != k:
                    acc += M[r, j] * ((U[:, j] * U[:, k]).sum() + (V[:, j] * V[:, k]).sum()
                                      + (M[:, j] * M[:, k]).sum())
            column.append(torch.sign(Q[r, k] - 2 * acc))
        M[:, k] = torch.stack(column)  # bit k is done: the next bits see it
    return M


def test_code_map_update_matches_the_loop_and_its_order_matters():
    g = torch.Generator().manual_seed(3)
    n, K, bit = 30, 5, 8
    L = (torch.rand(n, K, generator=g) < 0.3).double()
    H_i, H_t = torch.randn(n, bit, generator=g, dtype=torch.float64), torch.randn(n, bit, generator=g, dtype=torch.float64)
    M = torch.sign(torch.randn(K, bit, generator=g, dtype=torch.float64))
    expected = code_map_loop(M, H_i, H_t, L)
    updated = update_code_map(M.clone(), H_i, H_t, L)
    assert torch.equal(updated, expected)
    # All bits from the old M at once (not in place) gives another map: the order is part of it.
    U, V = torch.sign(H_i), torch.sign(H_t)
    S = 2 * torch.eye(K, dtype=M.dtype) - 1
    Q = 2 * bit * (L.T @ (U + V) + S @ M)
    simultaneous = M.clone()
    for k in range(bit):
        rest = [j for j in range(bit) if j != k]
        simultaneous[:, k] = torch.sign(Q[:, k] - 2 * M[:, rest] @ (
            U[:, rest].T @ U[:, k] + V[:, rest].T @ V[:, k] + M[:, rest].T @ M[:, k]))
    assert not torch.equal(simultaneous, expected)


def test_feature_map_update_by_hand():
    # Label 0: samples 0 and 1; label 1: sample 1; label 2: nobody (keeps its row).
    L = torch.tensor([[1., 0., 0.], [1., 1., 0.], [0., 0., 0.]])
    F_i = torch.tensor([[1., 0.], [0., 1.], [5., 5.]])
    F_t = torch.tensor([[1., 0.], [0., 1.], [9., 9.]])
    old = torch.tensor([[7., 7.], [7., 7.], [0.6, 0.8]])
    new = update_feature_map(F_i, F_t, L, old)
    torch.testing.assert_close(new, torch.tensor([[R, R], [0., 1.], [0.6, 0.8]]))


def test_raw_images_are_read_from_disk_batch_by_batch(tmp_path):
    images, text, labels = raw_image_dataset(n=12)
    path = tmp_path / 'raw.mat'
    write_v73(path, {'images': images.T, 'YAll': text, 'LAll': labels})  # MATLAB: 224x224x3xN
    data = load_data(str(path), ('images', 'YAll', 'LAll'), 4096, 40, 6)
    assert isinstance(data.images, RawImages) and data.images.shape == (12, 3, 224, 224)
    batch = data.images[torch.tensor([7, 2, 9])]
    assert batch.dtype == torch.float32
    assert torch.equal(batch, torch.from_numpy(images[[7, 2, 9]]).float())
    assert torch.equal(data.images[torch.arange(4, 8)], torch.from_numpy(images[4:8]).float())
    assert torch.equal(data.images[4:8][torch.tensor([1])], torch.from_numpy(images[[5]]).float())
    # The same images in a v7 file (scipy) come out the same way.
    write_v7(tmp_path / 'raw7.mat', {'images': images.T, 'YAll': text, 'LAll': labels})
    data7 = load_data(str(tmp_path / 'raw7.mat'), ('images', 'YAll', 'LAll'), 4096, 40, 6)
    assert torch.equal(data7.images[torch.tensor([7, 2, 9])], batch)


def test_raw_images_of_another_size_are_refused(tmp_path):
    images, text, labels = raw_image_dataset(n=4)
    write_v73(tmp_path / 'small.mat', {'images': images[:, :, :100, :100].T, 'YAll': text,
                                       'LAll': labels})
    with pytest.raises(UserError, match=r'small.mat: images holds images of shape 3 x 100 x 100, '
                                        r'expected 3 x 224 x 224'):
        load_data(str(tmp_path / 'small.mat'), ('images', 'YAll', 'LAll'), 4096, 40, 6)


AGAH_TINY = ['--model', 'agah', '--bit', '16', '--emb_dim', '32', '--hidden_dim', '64', '--batch_size', '16',
             '--max_epoch', '2', '--valid_freq', '1', '--device', 'cpu', '--vis_env', 'None',
             '--text_dim', '40', '--num_label', '6']


def train_and_test(tmp_path, *options):
    train = run_main('train', '--checkpoint_dir', tmp_path / 'ck', *options)
    assert train.returncode == 0, train.stderr
    test = run_main('test', '--checkpoint_dir', tmp_path / 'ck', *options)
    assert test.returncode == 0, test.stderr
    assert MAP_LINE.search(test.stdout), test.stdout
    return train, test


@pytest.fixture(scope='module')
def raw_file(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('raw')
    images, text, labels = raw_image_dataset(n=48)
    write_v73(tmp_path / 'raw.mat', {'images': images.T, 'YAll': text, 'LAll': labels})
    write_vgg_f(tmp_path / 'vgg-f.mat', [8, 16, 16, 16, 16, 32, 24])
    return tmp_path


def test_agah_on_raw_images(tmp_path, raw_file):
    train, _ = train_and_test(tmp_path, *AGAH_TINY, '--data_path', raw_file / 'raw.mat',
                              '--pretrain_model_path', raw_file / 'vgg-f.mat',
                              '--query_size', 12, '--db_size', 36, '--training_size', 24)
    assert 'training 24, query 12, database 36' in train.stdout
    assert 'CNN-F (published geometry) from' in train.stdout and '24-d fc7' in train.stdout
    run = tmp_path / 'ck' / 'flickr25k_16_agah'
    model = torch.load(run / 'AGAH_module.pth', weights_only=True)
    assert model['image_net.0.features.0.weight'].shape == (8, 3, 11, 11)  # CNN-F, fine-tuned
    assert torch.load(run / 'feature_map.pth', weights_only=True).shape == (6, 32)
    assert len(re.findall(r'epoch \d/2: loss [\d.]+, .*MAP\(i->t\)', train.stdout)) == 2


def test_dadh_on_raw_images_uses_cnn_f_with_the_average_image(tmp_path, raw_file):
    train, _ = train_and_test(tmp_path, '--data_path', raw_file / 'raw.mat', '--pretrain_model_path',
                              raw_file / 'vgg-f.mat', '--hidden_dim', '64', '--bit', '16',
                              '--batch_size', '16', '--max_epoch', '2', '--device', 'cpu',
                              '--vis_env', 'None', '--text_dim', '40', '--num_label', '6',
                              '--db_size', 36, '--training_size', 24)
    model = torch.load(tmp_path / 'ck' / 'flickr25k_16' / 'GEN_module.pth', weights_only=True)
    assert model['image_net.0.average_image'].shape == (3, 224, 224)


def test_agah_on_a_feature_file_with_data_enhance(tmp_path):
    write_mir_file(tmp_path / 'mir.mat')
    options = [*AGAH_TINY, '--data_path', tmp_path / 'mir.mat', '--image_dim', '64',
               '--query_size', 50, '--db_size', 250, '--training_size', 200, '--batch_size', 50]
    train, test = train_and_test(tmp_path, *options, '--data_enhance', 'True')
    assert 'CNN-F is taken as already applied' in train.stdout
    assert 'data_enhance: 300 training samples' in train.stdout
    run = tmp_path / 'ck' / 'flickr25k_16_agah'
    assert (run / 'AGAH_module.pth').stat().st_size > 0 and (run / 'feature_map.pth').exists()
    # test reloads model and F and reproduces the last best validation.
    best = re.findall(r'MAP\(i->t\) (\d\.\d{4}), MAP\(t->i\) (\d\.\d{4}) \(best: saved\)', train.stdout)[-1]
    assert MAP_LINE.search(test.stdout).groups() == best


def test_agah_state_dict_continues_exactly():
    import copy
    import config
    from models.agah import AGAH
    cfg = config.parse({'model': 'agah', 'image_dim': 64, 'text_dim': 40, 'num_label': 6,
                        'emb_dim': 32, 'bit': 16, 'batch_size': 16, 'device': 'cpu'})
    images, text, labels = (torch.from_numpy(x).float() for x in small_dataset(n=32))
    cpu = torch.device('cpu')
    torch.manual_seed(0)
    first = AGAH(32, cpu, **cfg.hyper())
    for rows in (torch.arange(16), torch.arange(16, 32)):
        first.train_step(rows, images[rows], text[rows], labels[rows])
    first.end_epoch(0, labels)
    state = copy.deepcopy(first.state_dict())
    torch.manual_seed(1)
    second = AGAH(32, cpu, **cfg.hyper())
    second.load_state_dict(state)
    assert second.lr == pytest.approx(1e-4 * 0.6)  # the decay after epoch 0 came along
    rows = torch.arange(8, 24)
    losses = []
    for method in (first, second):
        torch.manual_seed(2)  # the gradient penalty's interpolation draws
        losses.append(method.train_step(rows, images[rows], text[rows], labels[rows]))
        method.end_epoch(1, labels)
    assert all(torch.equal(losses[0][k], losses[1][k]) for k in losses[0])
    for name, value in first.state_dict()['net'].items():
        assert torch.equal(value, second.state_dict()['net'][name]), name
    assert torch.equal(first.code_map, second.code_map)
    assert torch.equal(first.feature_map, second.feature_map)
