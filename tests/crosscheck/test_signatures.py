"""Contributions signed by eth-account, the independent reference for EIP-191, are accepted;
a batch signed by another key, or whose records differ from what was signed, is refused."""

import json

from eth_account import Account
from eth_account.messages import encode_defunct

from conftest import load_rows, load_spec
from reference import merkle_root, record_id


def signed_upload(server, token, account, rows, schema, signer=None):
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    root = merkle_root([record_id(schema, r) for r in rows])
    signed = Account.sign_message(encode_defunct(primitive=root), (signer or account).key)
    headers = {
        "Content-Type": "application/x-ndjson",
        "X-Tributary-Contributor": account.address,
        "X-Tributary-Signature": "0x" + signed.signature.hex().removeprefix("0x"),
    }
    return root, server.request("POST", "/v1/datanets/kitchen-tips/contributions", token=token,
                                headers=headers, raw=body)


def test_eth_account_signature_is_accepted_and_another_key_is_refused(server):
    spec = load_spec(review="auto")
    server.json("POST", "/v1/datanets", spec, token=server.admin, expect=201)
    alice = Account.create()
    token = server.json("POST", "/v1/tokens", {"subject": "alice", "role": "contributor"},
                        token=server.admin, expect=201)["token"]
    rows = load_rows()

    # Signed by another key but claiming to be alice: refused, nothing stored.
    mallory = Account.create()
    _, (status, body, headers) = signed_upload(server, token, alice, rows, spec["schema"], signer=mallory)
    assert status == 403, body
    problem = json.loads(body)
    assert headers["content-type"] == "application/problem+json"
    assert problem["type"] == "urn:tributary:problem:signature-mismatch"
    assert problem["field"] == "signature"
    assert mallory.address in problem["detail"]
    assert server.json("GET", "/v1/datanets/kitchen-tips")["batches"] == 0

    # Signed over different records than those uploaded: refused.
    root_other = merkle_root([record_id(spec["schema"], r) for r in rows[:2]])
    signed = Account.sign_message(encode_defunct(primitive=root_other), alice.key)
    status, body, _ = server.request(
        "POST", "/v1/datanets/kitchen-tips/contributions", token=token,
        headers={"Content-Type": "application/x-ndjson", "X-Tributary-Contributor": alice.address,
                 "X-Tributary-Signature": "0x" + signed.signature.hex().removeprefix("0x")},
        raw="".join(json.dumps(r) + "\n" for r in rows).encode())
    assert status == 403, body

    # Signed by alice herself: accepted, with the root we computed independently.
    root, (status, body, _) = signed_upload(server, token, alice, rows, spec["schema"])
    assert status == 201, body
    batch = json.loads(body)
    assert batch["merkle_root"] == "0x" + root.hex()
    assert batch["contributor"] == alice.address
    assert batch["accepted"] == len(rows)

    # Every record id the server stored is the one the documented encoding gives.
    for row in rows:
        rid = record_id(spec["schema"], row).hex()
        info = server.json("GET", f"/v1/datanets/kitchen-tips/records/{rid}")
        assert info["contributor"] == alice.address

    # The same batch again: every record is a duplicate of batch 1.
    _, (status, body, _) = signed_upload(server, token, alice, rows, spec["schema"])
    assert status == 201, body
    again = json.loads(body)
    assert again["accepted"] == 0 and again["duplicates"] == len(rows)
    assert {d["first_batch"] for d in again["duplicate_examples"]} == {1}


def test_missing_or_malformed_signature_names_the_header(server):
    server.json("POST", "/v1/datanets", load_spec(), token=server.admin, expect=201)
    status, body, _ = server.request(
        "POST", "/v1/datanets/kitchen-tips/contributions?format=jsonl", token=server.admin,
        headers={"X-Tributary-Contributor": Account.create().address, "X-Tributary-Signature": "0x12"},
        raw=b'{"text": "x"}\n')
    assert status == 400
    assert json.loads(body)["field"] == "X-Tributary-Signature"
