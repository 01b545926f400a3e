"""Property-based run of schemathesis over the service's own OpenAPI schema, against a real
uvicorn server: no 5xx, every status code and body as documented."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from rulefinder.settings import Settings
from tests.api_fixtures import LiveServer, data_dir_with_model, npz_bytes

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    data_dir = data_dir_with_model(tmp_path_factory.mktemp("schema"))
    with LiveServer(Settings(data_dir=data_dir, rate_limit_per_minute=1e7, max_upload_bytes=1_000_000)) as server:
        import httpx

        # one real recording, so that the listing has a non-empty body to check
        httpx.post(f"{server.url}/v1/recordings", files=[("files", ("a.npz", npz_bytes(), "x"))]).raise_for_status()
        yield server


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


@pytest.mark.slow
def test_openapi_no_5xx_and_conforms(api_schema, live):
    # Operation by operation with hypothesis directly (schemathesis' pytest plugin does not
    # work with this pytest): a bounded number of generated requests each.
    operations = [r.ok() for r in api_schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def run(case):
            case.call_and_validate(base_url=live.url, checks=CHECKS)

        run()


def test_every_operation_documents_its_errors(api_schema):
    raw = api_schema.raw_schema
    for path, ops in raw["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert any(c.startswith("2") for c in codes), (method, path)
            if path.startswith("/v1/recordings") or path.startswith("/v1/predictions"):
                assert {"401", "429"} <= codes, (method, path, codes)
            for code, resp in op["responses"].items():
                if code.startswith("4"):
                    assert "application/json" in resp.get("content", {}), (method, path, code)
