"""Debian's headless Chromium for the tests, driven through the DevTools protocol (websocket-client
comes with visdom)."""
import base64
import contextlib
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import websocket

FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--hide-scrollbars', '--remote-debugging-port=0']


class Page:
    """The one tab of a Chromium process: call DevTools methods, evaluate JavaScript."""

    def __init__(self, socket):
        self.socket, self.last_id = socket, 0

    def call(self, method, **params):
        self.last_id += 1
        self.socket.send(json.dumps({'id': self.last_id, 'method': method, 'params': params}))
        while True:  # no domain is enabled, so only answers arrive, in order
            answer = json.loads(self.socket.recv())
            if answer.get('id') == self.last_id:
                assert 'error' not in answer, f'{method}: {answer["error"]}'
                return answer['result']

    def evaluate(self, expression):
        result = self.call('Runtime.evaluate', expression=expression, returnByValue=True)
        assert 'exceptionDetails' not in result, result['exceptionDetails']
        return result['result'].get('value')

    def wait_for(self, expression, seconds=30):
        """Poll the JavaScript expression until it is truthy; return its last value."""
        deadline = time.time() + seconds
        while not (value := self.evaluate(expression)) and time.time() < deadline:
            time.sleep(0.2)
        return value

    def screenshot(self, path):
        data = self.call('Page.captureScreenshot', format='png')['data']
        Path(path).write_bytes(base64.b64decode(data))


@contextlib.contextmanager
def chromium(profile_dir, url, width=1400, height=900):
    """Open url in a fresh headless Chromium; yield its Page."""
    process = subprocess.Popen(['chromium', *FLAGS, f'--user-data-dir={profile_dir}',
                                f'--window-size={width},{height}', url],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Chromium writes the port it chose, once it listens
        port_file = Path(profile_dir) / 'DevToolsActivePort'
        deadline = time.time() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) == 2):
            assert process.poll() is None, 'chromium exited at start'
            assert time.time() < deadline, 'chromium did not open its DevTools port within 30 s'
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list') as answer:
            target = next(t for t in json.load(answer) if t['type'] == 'page')
        socket = websocket.create_connection(target['webSocketDebuggerUrl'], timeout=30,
                                             suppress_origin=True)
        try:
            yield Page(socket)
        finally:
            socket.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
