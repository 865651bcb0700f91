"""Schema-driven testing of every XRPC method with schemathesis, from the OpenAPI document that
api/openapi.py generates from the lexicons, against the running API on loopback with a real,
seeded database: no 5xx, every error in XRPC form, responses conform to the lexicons.

CI runs a bounded number of cases per method; ATMX_LONG=1 runs many more.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from benchmark_modules import load_benchmark
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from atmx.api.app import MAX_REQUEST_LINE
from atmx.api.openapi import openapi_document
from atmx.indexer.store.database import create_pool

try:
    import schemathesis
    from schemathesis.checks import CHECKS
except ImportError as exc:  # a missing tool must fail loudly, not skip
    raise ImportError(
        "schemathesis is required for tests/test_api_schema.py: pip install 'schemathesis>=4,<5'"
    ) from exc

LONG = os.environ.get("ATMX_LONG") == "1"
EXAMPLES = 1000 if LONG else 60
ACCOUNTS = 50
bench = load_benchmark()

# Strategies for the atproto formats, so that most generated requests are well-formed and reach
# the database (seeded DIDs, handles and inbox ids included), not only the parameter checks.
_did = st.one_of(
    st.integers(0, ACCOUNTS * 2).map(bench.account_did),
    st.from_regex(r"did:[a-z]{1,8}:[a-zA-Z0-9._:%-]{0,40}[a-zA-Z0-9._-]", fullmatch=True),
)
_handle = st.one_of(
    st.integers(0, ACCOUNTS * 2).map(lambda i: f"user{i}.load.test"),
    st.from_regex(r"([a-z0-9]{1,10}\.){1,3}[a-z]{2,6}", fullmatch=True),
)
schemathesis.openapi.format("did", _did)
schemathesis.openapi.format("handle", _handle)
schemathesis.openapi.format("at-identifier", st.one_of(_did, _handle))

# requestIndex fetches from PDSes: its contract is tested against the reference PDS (test_follow_devnet)
schema = schemathesis.openapi.from_dict(openapi_document("schema-test")).exclude(path_regex="requestIndex")
ERROR_STATUSES = {400, 404, 405, 429, 501, 503}
# The handlers are deliberately stricter than the lexicons where the lexicons only describe a
# syntax in prose (inbox ids are 64 *hex* characters, actors are DIDs or handles, cursors are
# opaque), so "the API rejected schema-compliant data" is expected and not checked.
EXCLUDED = {c for c in CHECKS.get_all() if c.__name__ == "positive_data_acceptance"}


@pytest.fixture
async def api_url(db_dsn: str) -> AsyncIterator[str]:
    pool = await create_pool(db_dsn, max_size=2)
    try:
        await bench.seed(pool, ACCOUNTS)
    finally:
        await pool.close()
    async with bench.api_server(db_dsn) as (base, _pid):
        yield base


def assert_xrpc_error(response: Any) -> None:
    assert response.status_code in ERROR_STATUSES, (response.status_code, response.text)
    content_type = {k.lower(): v for k, v in response.headers.items()}.get("content-type", [""])
    assert content_type[0].startswith("application/json"), (response.headers, response.text)
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"][:1].isupper(), body
    assert isinstance(body.get("message"), str), body


CASES: dict[str, int] = {}


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_method_conforms(case: schemathesis.Case, api_url: str) -> None:
    response = case.call(base_url=api_url, timeout=30)
    CASES[case.operation.label] = CASES.get(case.operation.label, 0) + 1
    assert response.status_code < 500, (response.status_code, response.text)
    # schemathesis also probes other HTTP methods: OPTIONS is a CORS preflight (204) and HEAD has no body
    if len(response.request.url) > MAX_REQUEST_LINE - 100:  # refused by the HTTP parser, before any XRPC code
        assert response.status_code == 400
        return
    if response.status_code != 200 and case.method.upper() not in ("OPTIONS", "HEAD"):
        assert_xrpc_error(response)
    case.validate_response(response, excluded_checks=list(EXCLUDED))
