"""Training curves in a real visdom server, the offline log and its replay, and the PNG plots."""
import json
import re
import time

import pytest

from tests.test_main import TINY, run_main
from tests.visdom_server import free_port, visdom_server

SIZES = ['--db_size', '250', '--training_size', '200', '--max_epoch', '2']


def window_points(port, env, win):
    import visdom
    client = visdom.Visdom(port=port, env=env, use_incoming_socket=False, raise_exceptions=True)
    data = json.loads(client.get_window_data(win, env))
    return [(x, y) for trace in data['content']['data'] for x, y in zip(trace['x'], trace['y'])]


def printed_maps(stdout):
    pattern = r'^epoch .*MAP\(i->t\) (\d\.\d+), MAP\(t->i\) (\d\.\d+)'
    return [tuple(map(float, m)) for m in re.findall(pattern, stdout, re.M)]


def train(data_path, checkpoint_dir, *options):
    tiny = [a for a in TINY if a not in ('--vis_env', 'None')]
    return run_main('train', '--data_path', data_path, '--checkpoint_dir', checkpoint_dir, *tiny,
                    *SIZES, *options)


def test_curves_reach_a_real_server(tmp_path, data_path):
    with visdom_server(tmp_path / 'envs') as port:
        result = train(data_path, tmp_path / 'ck', '--vis_env', 'dadh_test', '--vis_port', port)
        assert result.returncode == 0, result.stderr
        assert 'no visdom server' not in result.stderr
        loss = window_points(port, 'dadh_test', 'loss')
        mapi2t = window_points(port, 'dadh_test', 'mapi2t')
        mapt2i = window_points(port, 'dadh_test', 'mapt2i')
        lr = window_points(port, 'dadh_test', 'lr')
    assert [x for x, _ in loss] == [1, 2] and [x for x, _ in lr] == [1, 2]
    assert lr[0][1] == pytest.approx(1e-3 * 0.8)  # the decay after epoch 0 (SPEC §6)
    printed = printed_maps(result.stdout)
    assert [x for x, _ in mapi2t] == [1, 2] and [x for x, _ in mapt2i] == [1, 2]
    assert [round(y, 4) for _, y in mapi2t] == [m[0] for m in printed]
    assert [round(y, 4) for _, y in mapt2i] == [m[1] for m in printed]


def test_no_server_costs_one_line_and_the_log_replays(tmp_path, data_path):
    start = time.time()
    off = train(data_path, tmp_path / 'off', '--vis_env', 'None')
    assert off.returncode == 0, off.stderr
    off_seconds = time.time() - start
    port = free_port()
    start = time.time()
    result = train(data_path, tmp_path / 'ck', '--vis_env', 'replayed', '--vis_port', port)
    seconds = time.time() - start
    assert result.returncode == 0, result.stderr
    assert result.stderr.count('no visdom server') == 1
    assert seconds < off_seconds + 5
    log = tmp_path / 'ck' / 'flickr25k_16' / 'visdom.log'
    events = [json.loads(line) for line in log.read_text().splitlines()]
    # the epoch's loss, each of DADH's terms (SPEC §4), the learning rate and the MAPs
    assert {msg['win'] for _, msg in events} == {
        'loss', 'lr', 'mapi2t', 'mapt2i', 'loss_triplet', 'loss_quantisation', 'loss_adversarial',
        'loss_discriminator'}

    import visdom
    with visdom_server(tmp_path / 'envs') as server_port:
        client = visdom.Visdom(port=server_port, env='replayed', use_incoming_socket=False,
                               raise_exceptions=True)
        client.replay_log(str(log))
        mapi2t = window_points(server_port, 'replayed', 'mapi2t')
    assert [round(y, 4) for _, y in mapi2t] == [m[0] for m in printed_maps(result.stdout)]
    assert not (tmp_path / 'off' / 'flickr25k_16' / 'visdom.log').exists()


def test_plot_writes_decodable_pngs(tmp_path, data_path):
    pytest.importorskip('matplotlib')
    import matplotlib.image
    common = ['--data_path', data_path, '--checkpoint_dir', tmp_path, *TINY,
              '--db_size', '250', '--training_size', '200']
    assert run_main('train', *common, '--max_epoch', '2').returncode == 0
    assert run_main('test', *common).returncode == 0
    result = run_main('plot', *common)
    assert result.returncode == 0, result.stderr
    for name in ('map.png', 'pr.png', 'p_at_k.png'):
        path = tmp_path / 'flickr25k_16' / name
        assert f'wrote {path}' in result.stdout
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0
