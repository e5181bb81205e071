"""A real visdom server for the tests: `python main.py visdom` on a free port of 127.0.0.1."""
import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def visdom_server(env_path, port=None):
    """Start a server storing its environments in `env_path`, wait until it answers, yield its
    port, stop it."""
    port = port or free_port()
    process = subprocess.Popen([sys.executable, 'main.py', 'visdom', '--port', str(port),
                                '--env_path', str(env_path)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(('127.0.0.1', port), 0.2):
                break
            assert process.poll() is None, 'the visdom server exited at start'
            assert time.time() < deadline, 'the visdom server did not answer within 30 s'
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
