"""Training curves in visdom, and a log in visdom's own format that can be replayed later.

Every event is appended to `log_path` (visdom's `log_to_filename` format: one `[endpoint, message]`
JSON list per line), whether or not a server listens; `Visdom().replay_log(log_path)` sends them to
a server afterwards. The server is looked for once, at the start: when it cannot be reached the run
says so in one line and never waits on the network again.
"""
import errno
import posixpath
import socket
from urllib.parse import urlparse

import numpy as np

from utils.errors import UserError, warn


def start_server(port=8097, hostname='127.0.0.1', env_path=None, static_dir=None):
    """Serve visdom's page and API on hostname:port until interrupted: visdom's own application,
    without `python -m visdom.server`'s start-up download of the page's scripts (which crashes
    offline), after checking that `make visdom-assets` put every one in `static_dir`."""
    import tornado.web
    from tornado.ioloop import IOLoop
    from visdom.server import app as visdom_app
    from visdom.server.defaults import DEFAULT_ENV_PATH

    from utils import visdom_assets

    class StaticFiles(tornado.web.StaticFileHandler):
        """visdom 0.2.4's index.html links `static_url("../user/style.css")`, a page outside
        static/ that tornado >= 6.6 refuses to version, answering 403 for the whole page: link it
        unversioned, as older tornado did (the user settings handler serves /user/style.css)."""
        @classmethod
        def make_static_url(cls, settings, path, include_version=True):
            if path.startswith('../'):
                return posixpath.normpath(settings['static_url_prefix'] + path)
            return super().make_static_url(settings, path, include_version)

    static_dir = str(static_dir or visdom_assets.STATIC_DIR)
    visdom_assets.check(static_dir)
    # visdom's Application passes these module-level settings to tornado
    visdom_app.tornado_settings.update(static_path=static_dir, template_path=static_dir,
                                       static_handler_class=StaticFiles)
    app = visdom_app.Application(port=port, env_path=env_path or DEFAULT_ENV_PATH)
    try:
        app.listen(port, address=hostname, max_buffer_size=1024 ** 3)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(f'port {port} on {hostname} is already in use (--port)') from None
        raise
    print(f'visdom server on http://{hostname}:{port} (Ctrl-C stops it)', flush=True)
    IOLoop.current().start()


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

    def plot(self, win, x, y, log_y=False):
        """Append the point (x, y) to the line window `win`, creating it the first time; `log_y`
        for values that a linear axis shows as a flat line (a learning rate of 5e-5)."""
        if self.vis is None:
            return
        try:
            # a marker on each point: validations can be sparse (AGAH's every 20 epochs)
            self.vis.line(X=np.array([x]), Y=np.array([y]), win=win, update='append',
                          opts=dict(title=win, xlabel='epoch', markers=True, markersize=4,
                                    ytype='log' if log_y else 'linear'))
        except Exception as e:
            warn(f'visdom server stopped answering ({type(e).__name__}); logging to '
                 f'{self.log_path} from now on')
            self._go_offline()
