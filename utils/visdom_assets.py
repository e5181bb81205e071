"""visdom 0.2.4's web page assets, from npm instead of the CDNs its server downloads them from.

ASSETS names every file `visdom.server.build.download_scripts` puts under visdom's `static/`, the
pinned npm package that publishes the same file, and its sha256. `python -m utils.visdom_assets
[STATIC_DIR]` (`make visdom-assets`) installs the files that are missing or wrong, with one `npm
pack` of the packages they come from (npm keeps the tarballs in its cache), and writes visdom's
"already built" marker. `check` is what `python main.py visdom` runs before serving the page.
"""
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import visdom

from utils.checkpoint import sha256 as file_sha256
from utils.errors import UserError

STATIC_DIR = Path(visdom.__file__).parent / 'static'
# `download_scripts` skips its downloads when this file holds visdom's version
BUILT_MARKER = 'version.built'

# (file under static/, npm package@version, file in that package, sha256). download_scripts saves
# the glyphicons SVG as 'glyphicons-halflings-regular.svg#glyphicons_halflingsregular' (a URL
# fragment taken for a file name); it goes here under the name bootstrap's stylesheet requests.
ASSETS = [
    ('js/jquery.min.js', 'jquery@3.1.1', 'dist/jquery.min.js',
     '85556761a8800d14ced8fcd41a6b8b26bf012d44a318866c0d81a62092efd9bf'),
    ('js/bootstrap.min.js', 'bootstrap@3.3.7', 'dist/js/bootstrap.min.js',
     '53964478a7c634e8dad34ecc303dd8048d00dce4993906de1bacf67f663486ef'),
    ('js/react-react.min.js', 'react@16.2.0', 'umd/react.production.min.js',
     'c28b91922bca297037cba02ec85c1c0dc179d1a942355f0b6e085f6021fa67df'),
    ('js/react-dom.min.js', 'react-dom@16.2.0', 'umd/react-dom.production.min.js',
     'f61ac9c43e0842c58774da732e424a606898fd211914925252ac9e64f34a77c8'),
    ('js/react-modal.min.js', 'react-modal@3.1.10', 'dist/react-modal.min.js',
     '096ce258905585d06758012ec6261a5dc52b11d82e112450670666109bbc6f35'),
    ('js/plotly-plotly.min.js', 'plotly.js-dist-min@2.11.1', 'plotly.min.js',
     'dd146b2db18d4ced4743018fa65ada14b723bf1aae08b559a5576ba8116cd889'),
    ('js/sjcl.js', 'sjcl@1.0.7', 'sjcl.js',
     'd09a8688f37c7442bb1e6699b46efb191d9281ef05a492586fa0f54dc4e5110a'),
    ('js/layout-bin-packer.js.map', 'layout-bin-packer@1.4.0', 'dist/layout-bin-packer.js.map',
     '7f39df86278f0cd247daee3ef579a09df79078e1c585bc7b8ef968266e06c0b5'),
    ('js/layout_bin_packer.js', 'layout-bin-packer@1.4.0', 'dist/layout-bin-packer.js',
     '312ed1834f78f497ac3c9e943ce4657679d26ad8cd62d7f722912d26c9d0ed29'),
    ('js/d3.v3.min.js', 'd3@3.5.17', 'd3.min.js',
     '76c39718d1c0a3fb321676b3b7e29306c0907919a5716d5728bd1b08ae0169e7'),
    ('js/d3-selection-multi.v1.js', 'd3-selection-multi@1.0.1', 'build/d3-selection-multi.js',
     '22f89270afc6f231f8b974e37172a15525f28035276ca960f8ccdce622700315'),
    ('js/saveSvgAsPng.js', 'save-svg-as-png@1.4.17', 'lib/saveSvgAsPng.js',
     '71c46f2411daf6ba2a4e38ec563d92f1da42f88da9247a2bdd5c8a10bde93ae3'),
    ('css/react-resizable-styles.css', 'react-resizable@1.4.6', 'css/styles.css',
     '7c9122a97c86b4be7839fd3d23c37d06aec1ece3ef830f8bae3a8c121056d528'),
    ('css/react-grid-layout-styles.css', 'react-grid-layout@0.16.3', 'css/styles.css',
     '4ec035a50c31ec008bab5794e88ef056043e63aaa8dcbb24d36e5a73780b4dbc'),
    ('css/bootstrap.min.css', 'bootstrap@3.3.7', 'dist/css/bootstrap.min.css',
     'f75e846cc83bd11432f4b1e21a45f31bc85283d11d372f7b19accd1bf6a2635c'),
    ('fonts/classnames', 'classnames@2.2.5', 'index.js',
     '89f83f030d5f5234436502f5d3ecfb01c1baaabe2a82785016563eb5800b674e'),
    ('fonts/glyphicons-halflings-regular.eot',
     'bootstrap@3.3.7', 'dist/fonts/glyphicons-halflings-regular.eot',
     '13634da87d9e23f8c3ed9108ce1724d183a39ad072e73e1b3d8cbf646d2d0407'),
    ('fonts/glyphicons-halflings-regular.woff2',
     'bootstrap@3.3.7', 'dist/fonts/glyphicons-halflings-regular.woff2',
     'fe185d11a49676890d47bb783312a0cda5a44c4039214094e7957b4c040ef11c'),
    ('fonts/glyphicons-halflings-regular.woff',
     'bootstrap@3.3.7', 'dist/fonts/glyphicons-halflings-regular.woff',
     'a26394f7ede100ca118eff2eda08596275a9839b959c226e15439557a5a80742'),
    ('fonts/glyphicons-halflings-regular.ttf',
     'bootstrap@3.3.7', 'dist/fonts/glyphicons-halflings-regular.ttf',
     'e395044093757d82afcb138957d06a1ea9361bdcf0b442d06a18a8051af57456'),
    ('fonts/glyphicons-halflings-regular.svg',
     'bootstrap@3.3.7', 'dist/fonts/glyphicons-halflings-regular.svg',
     '42f60659d265c1a3c30f9fa42abcbb56bd4a53af4d83d316d6dd7a36903c43e5'),
    ('js/mathjax/2.7.5/MathJax.js', 'mathjax@2.7.5', 'MathJax.js',
     '9ef249bfdc162849bcf2abe8425f5e90bd89fa4fd1588b1a492731c65b2bbfc9'),
    ('js/mathjax/2.7.5/config/Safe.js', 'mathjax@2.7.5', 'config/Safe.js',
     'c3d9f149afb82798a73d14a9737a82b5cb8bb8d217de631030a702d4ae0c1d8e'),
    ('js/mathjax/2.7.5/config/TeX-AMS-MML_HTMLorMML.js',
     'mathjax@2.7.5', 'config/TeX-AMS-MML_HTMLorMML.js',
     'f380ca5d5257b34fc5f0e4cccd7e1447dd3dfa3b65e06ed23f2a4f6af17e19f0'),
    ('js/mathjax/2.7.5/extensions/Safe.js', 'mathjax@2.7.5', 'extensions/Safe.js',
     '1b44a7b48d991ab692da9074fe8582cd47d438b57445af064ce30d2eac3871dd'),
    ('js/mathjax/2.7.5/jax/output/SVG/config.js', 'mathjax@2.7.5', 'jax/output/SVG/config.js',
     'd680518add37c0d1bf50dea3c93a4cd2aa703d5e1d3e2748a0e016c26aee253c'),
    ('js/mathjax/2.7.5/jax/output/SVG/jax.js', 'mathjax@2.7.5', 'jax/output/SVG/jax.js',
     '39d9a95fcde78f560cb5fcf11bb434ca5ad2349d74737b71160c8f473861fb5d'),
    ('js/mathjax/2.7.5/jax/output/SVG/fonts/TeX/fontdata.js',
     'mathjax@2.7.5', 'jax/output/SVG/fonts/TeX/fontdata.js',
     'c23d4bebe304610f617983eaeab7f8aa5e13a45391318f30ccf2650fbff939e1'),
    ('js/mathjax/2.7.5/jax/output/SVG/fonts/TeX/Size1/Regular/Main.js',
     'mathjax@2.7.5', 'jax/output/SVG/fonts/TeX/Size1/Regular/Main.js',
     '3e1c830e9c05a62f9caf86f9e13d926c38c5136b1eba8f6171953e839ce3941f'),
]


def problems(static_dir=STATIC_DIR):
    """{file under static_dir: 'missing' or 'has the wrong checksum'} for each misplaced asset."""
    found = {}
    for name, _, _, sha256 in ASSETS:
        path = Path(static_dir) / name
        if not path.is_file():
            found[name] = 'missing'
        elif file_sha256(path) != sha256:
            found[name] = 'has the wrong checksum'
    return found


def check(static_dir=STATIC_DIR):
    """Raise a UserError naming the first asset that is missing or wrong."""
    found = problems(static_dir)
    if found:
        name, problem = next(iter(found.items()))
        raise UserError(f'visdom page asset {Path(static_dir) / name} {problem}: '
                        f'run `make visdom-assets`')


def _npm_pack(packages, folder):
    """Download the packages' tarballs into folder; {package@version: tarball path}."""
    if shutil.which('npm') is None:
        raise UserError('npm not found: the visdom page assets come from the npm registry '
                        '(install Node.js and npm, then `make visdom-assets`)')
    result = subprocess.run(['npm', 'pack', '--json', '--pack-destination', str(folder),
                             *packages], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        try:  # with --json npm reports its error on stdout
            reason = json.loads(result.stdout)['error']['summary']
        except (ValueError, KeyError, TypeError):
            reason = (result.stderr.strip().splitlines() or ['no message'])[-1]
        raise UserError(f'npm pack {" ".join(packages)} failed: {reason}')
    return {f'{p["name"]}@{p["version"]}': Path(folder) / p['filename']
            for p in json.loads(result.stdout)}


def install(static_dir=STATIC_DIR):
    """Put every missing or wrong asset in place, write the built marker; return how many."""
    static_dir = Path(static_dir)
    wanted = problems(static_dir)
    if wanted:
        with tempfile.TemporaryDirectory() as folder:
            tarballs = _npm_pack(sorted({p for n, p, _, _ in ASSETS if n in wanted}), folder)
            for name, package, member, sha256 in ASSETS:
                if name in wanted:
                    with tarfile.open(tarballs[package]) as tarball:
                        data = tarball.extractfile(f'package/{member}').read()
                    if hashlib.sha256(data).hexdigest() != sha256:
                        raise UserError(f'{package} {member} from npm does not match its sha256 '
                                        f'in utils/visdom_assets.py')
                    path = static_dir / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    partial = path.with_name(path.name + '.partial')
                    partial.write_bytes(data)
                    partial.replace(path)
    (static_dir / BUILT_MARKER).write_text(visdom.__version__)
    return len(wanted)


if __name__ == '__main__':
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else STATIC_DIR
    try:
        count = install(folder)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    print(f'visdom page assets: {count} installed, all {len(ASSETS)} in place in {folder}')
