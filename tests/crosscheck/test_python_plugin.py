"""The plugin interface is language-neutral: a validator written in Python and built with
componentize-py (plugins/python-keyword) installs in a real server through the CLI, is attached
to a Datanet, and judges a contribution signed with eth-account."""

import json
import os
import subprocess
import sys

from eth_account import Account

from conftest import BIN
from test_signatures import signed_upload

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PLUGIN = os.path.join(ROOT, "plugins", "python-keyword")
COMPONENTIZE = os.path.join(os.path.dirname(sys.executable), "componentize-py")

SPEC = {
    "id": "kitchen-tips", "name": "Notes", "license": "CC0-1.0", "review": "auto",
    "invalid_rows": "skip",
    "schema": {"text_field": "text", "fields": [{"name": "text", "type": "string", "required": True}]},
}


def test_a_python_validator_loads_and_judges_a_contribution(server, tmp_path):
    component = tmp_path / "python_keyword.wasm"
    subprocess.run(
        [COMPONENTIZE, "-d", os.path.join(ROOT, "wit", "0.1.0"), "-w", "validator",
         "componentize", "-p", PLUGIN, "app", "-o", str(component)],
        check=True, capture_output=True, cwd=tmp_path)

    env = dict(os.environ, TRIBUTARY_URL=server.url, TRIBUTARY_TOKEN=server.admin)
    installed = subprocess.run([BIN, "plugin", "install", PLUGIN, "--component", str(component)],
                               env=env, check=True, capture_output=True, text=True)
    info = json.loads(installed.stdout)
    assert info["id"] == "python-keyword"
    # componentize-py components carry no SDK stamp: the version comes from the export.
    assert info["api_version"] == "0.1.0"

    spec = dict(SPEC, validators=[{"plugin": "python-keyword", "config": {"blocked": ["spam"]}}])
    server.json("POST", "/v1/datanets", spec, token=server.admin, expect=201)
    alice = Account.create()
    token = server.json("POST", "/v1/tokens", {"subject": "alice", "role": "contributor"},
                        token=server.admin, expect=201)["token"]
    rows = [{"text": "buy cheap spam today"},
            {"text": "let dough rest overnight in the fridge for a deeper flavour"}]
    _, (status, body, _) = signed_upload(server, token, alice, rows, spec["schema"])
    assert status == 201, body
    batch = json.loads(body)
    assert (batch["accepted"], batch["invalid"]) == (1, 1), batch
    assert batch["errors"]["errors"][0] == {
        "row": 1, "message": "python-keyword: contains the blocked word 'spam'"}
