"""visdom's page, served offline by `python main.py visdom`, rendered by headless Chromium."""
import json
import re
import shutil
import socket
import urllib.request

import numpy as np
import pytest
import visdom
from PIL import Image

from tests.browser import chromium
from tests.test_main import run_main
from tests.visdom_server import free_port, visdom_server
from utils import visdom_assets

EPOCHS = 3
CURVES = ('loss', 'mapi2t', 'mapt2i')
# {window title: number of plotly points drawn in it}
POINTS_PER_WINDOW = """Object.fromEntries(Array.from(document.querySelectorAll('.window')).map(w =>
    [w.querySelector('.bar div.pull-right').textContent,
     w.querySelectorAll('.scatterlayer .trace .points path').length]))"""
# every file the page fetched, with its HTTP status
RESOURCES = "performance.getEntriesByType('resource').map(e => [e.name, e.responseStatus])"
PLOTLY_BLUE = (31, 119, 180)  # the colour of a first trace


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A short demo run drawing its curves on a live server: (port, its visdom.log)."""
    tmp = tmp_path_factory.mktemp('run')
    with visdom_server(tmp / 'envs') as port:
        result = run_main('train', '--flag', 'demo', '--device', 'cpu', '--max_epoch', EPOCHS,
                          '--hidden_dim', 64, '--bit', 16, '--vis_port', port, '--vis_env', 'live',
                          '--checkpoint_dir', tmp / 'ck', '--data_path', tmp / 'demo.mat')
        assert result.returncode == 0, result.stderr
        assert 'no visdom server' not in result.stderr
        yield port, tmp / 'ck' / 'demo_16' / 'visdom.log'


def check_page(port, env, tmp_path):
    """Open the environment's page; its curves are drawn with one point per epoch, every file it
    fetched came from the server with status 200, and a screenshot shows the curves."""
    with chromium(tmp_path / 'chromium', f'http://127.0.0.1:{port}/env/{env}') as page:
        points = page.wait_for(f"""(p => {json.dumps(CURVES)}.every(w => p[w] >= {EPOCHS}) && p)
                                   ({POINTS_PER_WINDOW})""")
        assert points, page.evaluate(POINTS_PER_WINDOW)
        assert {w: points[w] for w in CURVES} == {w: EPOCHS for w in CURVES}
        resources = page.evaluate(RESOURCES)
        assert any('plotly-plotly.min.js' in name for name, _ in resources)
        assert [(name, status) for name, status in resources if status != 200] == []
        server = f'http://127.0.0.1:{port}/'
        assert [name for name, _ in resources if not name.startswith(server)] == []  # no CDN
        page.screenshot(tmp_path / 'page.png')
    image = np.asarray(Image.open(tmp_path / 'page.png').convert('RGB'))
    assert image.shape[0] > 500 and image.shape[1] > 1000 and image.std() > 0
    # the three curves and their markers, a few hundred pixels each
    assert (np.abs(image.astype(int) - PLOTLY_BLUE).sum(axis=2) < 30).sum() > 300


def test_training_curves_render_in_chromium(trained, tmp_path):
    port, _ = trained
    check_page(port, 'live', tmp_path)


def test_replayed_log_renders_in_chromium(trained, tmp_path):
    _, log = trained
    with visdom_server(tmp_path / 'envs') as port:
        client = visdom.Visdom(port=port, use_incoming_socket=False, raise_exceptions=True)
        client.replay_log(str(log))
        check_page(port, 'live', tmp_path)  # the log names the run's environment


def test_page_and_every_file_it_links_answer_200(tmp_path):
    """What a tornado upgrade broke once: the page itself answered 403."""
    with visdom_server(tmp_path / 'envs') as port:
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/') as answer:
            html = re.sub(r'<!--.*?-->', '', answer.read().decode(), flags=re.S)
        links = re.findall(r'(?:src|href)=["\']?(/[^"\'\s>]+)', html)
        assert len(links) >= 18
        for link in links:
            with urllib.request.urlopen(f'http://127.0.0.1:{port}{link}') as answer:
                assert answer.status == 200, link


def test_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_main('visdom', '--port', port, '--env_path', tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f'error: port {port} on 127.0.0.1 is already in use (--port)']


def test_missing_or_wrong_asset_refuses_the_page_and_install_mends_it(tmp_path):
    static = tmp_path / 'static'
    shutil.copytree(visdom_assets.STATIC_DIR, static)
    (static / 'js' / 'plotly-plotly.min.js').unlink()
    with open(static / 'css' / 'bootstrap.min.css', 'ab') as f:
        f.write(b'\n')
    assert visdom_assets.problems(static) == {'js/plotly-plotly.min.js': 'missing',
                                             'css/bootstrap.min.css': 'has the wrong checksum'}
    result = run_main('visdom', '--port', free_port(), '--env_path', tmp_path,
                      '--static_dir', static, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f'error: visdom page asset {static}/js/plotly-plotly.min.js missing: '
        'run `make visdom-assets`']

    (static / 'js' / 'plotly-plotly.min.js').write_text('half a file')
    result = run_main('visdom', '--port', free_port(), '--env_path', tmp_path,
                      '--static_dir', static, timeout=60)
    assert result.returncode == 2 and 'plotly-plotly.min.js has the wrong checksum' in result.stderr

    # the installer fetches only what is wrong, from npm
    assert visdom_assets.install(static) == 2
    assert visdom_assets.problems(static) == {}
    assert (static / 'version.built').read_text() == visdom.__version__
