"""A real `tributary serve` for the cross-check tests, on a loopback port over a temp dir."""

import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest

BIN = os.environ.get("TRIBUTARY_BIN", "target/debug/tributary")
EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "quickstart")


class Server:
    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        assert line.startswith("listening on "), line
        self.url = line[len("listening on "):]
        with open(os.path.join(data_dir, "admin-token")) as f:
            self.admin = f.read().strip()

    def request(self, method, path, body=None, token=None, headers=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def json(self, method, path, body=None, token=None, expect=200, **kw):
        status, data, _ = self.request(method, path, body, token, **kw)
        assert status == expect, (status, data)
        return json.loads(data)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "data")
    yield s
    s.stop()


def load_spec(**changes):
    with open(os.path.join(EXAMPLES, "datanet.json")) as f:
        spec = json.load(f)
    spec.update(changes)
    return spec


def load_rows():
    with open(os.path.join(EXAMPLES, "tips.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
