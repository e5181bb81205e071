"""Training curves in visdom, and a log in visdom's own format that can be replayed later.

Every event is appended to `log_path` (visdom's `log_to_filename` format: one `[endpoint, message]`
JSON list per line), whether or not a server listens; `Visdom().replay_log(log_path)` sends them to
a server afterwards. The server is looked for once, at the start: when it cannot be reached the run
says so in one line and never waits on the network again.
"""
import socket
from urllib.parse import urlparse

import numpy as np

from utils.errors import warn


def start_server(port=8097, hostname='127.0.0.1', env_path=None):
    """Run a visdom server until interrupted, without `python -m visdom.server`'s start-up download
    of the web page's scripts (which crashes offline). The plotting API works at once; the page in a
    browser needs those scripts, which an online `python -m visdom.server` fetches once."""
    from visdom.server.defaults import DEFAULT_ENV_PATH
    from visdom.server.run_server import start_server as run
    print(f'visdom server on http://{hostname}:{port} (Ctrl-C stops it)', flush=True)
    run(port=port, hostname=hostname, base_url='', env_path=env_path or DEFAULT_ENV_PATH)


def _listening(server, port, timeout=1.0):
    host = urlparse(server if '://' in server else f'http://{server}').hostname or 'localhost'
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Visualizer:
    def __init__(self, env='main', server='http://localhost', port=8097, log_path=None):
        self.vis = None
        if env in (None, '', 'None'):
            return
        import visdom
        self.env, self.log_path = env, None if log_path is None else str(log_path)
        if _listening(server, port):
            try:
                self.vis = visdom.Visdom(server=server, port=port, env=env, raise_exceptions=True,
                                         use_incoming_socket=False, log_to_filename=self.log_path)
                return
            except Exception:
                pass
        warn(f'no visdom server at {server}:{port}; training goes on without it'
             + (f' and logs the curves to {self.log_path} (replay: see README)' if self.log_path else ''))
        self._go_offline()

    def _go_offline(self):
        import visdom
        self.vis = (visdom.Visdom(env=self.env, offline=True, log_to_filename=self.log_path)
                    if self.log_path else None)

    def plot(self, win, x, y):
        """Append the point (x, y) to the line window `win`, creating it the first time."""
        if self.vis is None:
            return
        try:
            self.vis.line(X=np.array([x]), Y=np.array([y]), win=win, update='append',
                          opts=dict(title=win, xlabel='epoch'))
        except Exception as e:
            warn(f'visdom server stopped answering ({type(e).__name__}); logging to '
                 f'{self.log_path} from now on')
            self._go_offline()
