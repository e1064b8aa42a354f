"""An exported version read back by pyarrow and DuckDB: rows, types and record ids; and its
Merkle root and proofs checked by OpenZeppelin's own merkle-tree library."""

import json
import os
import subprocess

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from eth_account import Account
from eth_account.messages import encode_defunct

from conftest import load_rows, load_spec
from reference import merkle_root, record_id

NODE_DIR = os.path.join(os.path.dirname(__file__))


def publish_example(server, tmp_path):
    spec = load_spec(review="auto")
    server.json("POST", "/v1/datanets", spec, token=server.admin, expect=201)
    account = Account.create()
    rows = load_rows()
    ids = [record_id(spec["schema"], r) for r in rows]
    signed = Account.sign_message(encode_defunct(primitive=merkle_root(ids)), account.key)
    status, body, _ = server.request(
        "POST", "/v1/datanets/kitchen-tips/contributions?format=jsonl", token=server.admin,
        headers={"X-Tributary-Contributor": account.address,
                 "X-Tributary-Signature": "0x" + signed.signature.hex().removeprefix("0x")},
        raw="".join(json.dumps(r) + "\n" for r in rows).encode())
    assert status == 201, body
    version = server.json("POST", "/v1/datanets/kitchen-tips/versions", token=server.admin, expect=201)
    status, data, headers = server.request("GET", "/v1/datanets/kitchen-tips/versions/1/export")
    assert status == 200
    assert headers["content-type"] == "application/vnd.apache.parquet"
    path = tmp_path / "v1.parquet"
    path.write_bytes(data)
    return spec, rows, ids, account, version, path


def test_pyarrow_and_duckdb_read_the_export(server, tmp_path):
    spec, rows, ids, account, version, path = publish_example(server, tmp_path)
    table = pq.read_table(path)
    assert table.num_rows == len(rows)
    schema = table.schema
    assert schema.field("text").type == pa.string() and not schema.field("text").nullable
    assert schema.field("difficulty").type == pa.int64()
    assert schema.field("verified").type == pa.bool_()
    assert schema.field("written_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("keywords").type == pa.list_(pa.string())
    assert schema.field("_record_id").type == pa.string()
    assert schema.field("_batch").type == pa.uint64()
    assert schema.field("_quality").type == pa.float64()
    assert sorted(table.column("_record_id").to_pylist()) == sorted(i.hex() for i in ids)
    assert set(table.column("_contributor").to_pylist()) == {account.address}
    by_text = {r["text"]: r for r in table.to_pylist()}
    for row in rows:
        got = by_text[row["text"]]
        for k, v in row.items():
            if k == "written_at":
                continue
            assert got[k] == v, (k, got[k], v)
    assert "0x" + merkle_root(ids).hex() == version["merkle_root"]

    con = duckdb.connect()
    count, pasta, contributors = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE topic = 'pasta'), count(DISTINCT _contributor) "
        f"FROM read_parquet('{path}')").fetchone()
    assert (count, pasta, contributors) == (len(rows), 2, 1)


def test_openzeppelin_library_agrees_on_root_and_proofs(server, tmp_path):
    spec, rows, ids, account, version, path = publish_example(server, tmp_path)
    proofs = [server.json("GET", f"/v1/datanets/kitchen-tips/versions/1/proofs/{i.hex()}") for i in ids]
    script = """
const { StandardMerkleTree } = require('@openzeppelin/merkle-tree');
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const tree = StandardMerkleTree.of(input.ids.map(v => [v]), ['bytes32']);
const verified = input.proofs.map(p => StandardMerkleTree.verify(p.root, ['bytes32'], [p.value], p.proof));
console.log(JSON.stringify({ root: tree.root, verified }));
"""
    payload = {"ids": ["0x" + i.hex() for i in ids],
               "proofs": [{"root": p["root"], "value": "0x" + p["record_id"], "proof": p["proof"]} for p in proofs]}
    out = subprocess.run(["node", "-e", script], input=json.dumps(payload), capture_output=True, text=True,
                         cwd=NODE_DIR, check=True)
    result = json.loads(out.stdout)
    assert result["root"] == version["merkle_root"]
    assert all(result["verified"]) and len(result["verified"]) == len(ids)
