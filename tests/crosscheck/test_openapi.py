"""The server's /openapi.json is a valid OpenAPI document by an independent validator, and the
problem reports the server sends match the schema it documents for them."""

import json

from jsonschema import validate
from openapi_spec_validator import validate as validate_spec

from conftest import load_spec


def test_openapi_document_is_valid(server):
    status, body, headers = server.request("GET", "/openapi.json")
    assert status == 200
    doc = json.loads(body)
    validate_spec(doc)
    assert doc["openapi"].startswith("3.")
    assert "/v1/datanets/{id}/contributions" in doc["paths"]


def test_problem_reports_match_the_documented_schema(server):
    doc = json.loads(server.request("GET", "/openapi.json")[1])
    problem_schema = doc["components"]["schemas"]["Problem"]
    spec = load_spec()
    spec["schema"]["fields"][0]["type"] = "uint8"
    status, body, headers = server.request("POST", "/v1/datanets", spec, token=server.admin)
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    validate(problem, problem_schema)
    assert problem["field"] == "schema.fields[0].type"
