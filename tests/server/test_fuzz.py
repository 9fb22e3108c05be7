"""Bad input never crashes the server: random bodies to every write endpoint answer 4xx
with a message, and the server keeps serving."""

from __future__ import annotations

import json

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdpcore import records
from cdpcore.api import API_PREFIX, Role

JSON_PATHS = ["/hosts/web1/chunks/missing", "/hosts/web1/pages/fetch", "/hosts/web1/points",
              "/hosts", "/hosts/web1/retention"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.sampled_from(["ids", "point_id", "created", "volumes", "manifest", "name", "root",
                         "size", "block_size", "height", "keep_last", "stats", "parent"])
        | st.text(max_size=8), inner, max_size=6),
    max_leaves=20)
record_streams = st.sampled_from(list(records.BY_MEDIA_TYPE.values())).flatmap(
    lambda form: st.tuples(st.just(form), st.one_of(
        st.binary(max_size=300),
        st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.binary(max_size=200)),
                 max_size=4).map(lambda items: records.encode_records(items, form)))))
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _session(server, token: str) -> requests.Session:  # type: ignore[no-untyped-def]
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    s.verify = str(server.ca_path)
    s.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
    return s


@pytest.fixture
def web1(cdp_server):  # type: ignore[no-untyped-def]
    """Made once per test function (hypothesis runs every example inside it)."""
    return cdp_server.add_host("web1")


@FUZZ
@given(body=json_values, path=st.sampled_from(JSON_PATHS))
def test_random_json_is_a_4xx(cdp_server, web1, body, path) -> None:  # type: ignore[no-untyped-def]
    s = _session(cdp_server, cdp_server.admin_token)
    method = "PUT" if path.endswith("retention") else "POST"
    resp = s.request(method, cdp_server.url + API_PREFIX + path, data=json.dumps(body),
                     headers={"Content-Type": "application/json"}, timeout=30)
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        assert resp.json()["detail"]


@FUZZ
@given(stream=record_streams, kind=st.sampled_from(["chunks", "pages"]))
def test_random_records_are_refused_cleanly(cdp_server, web1, stream, kind) -> None:  # type: ignore[no-untyped-def]
    form, body = stream
    s = _session(cdp_server, web1[Role.agent])
    resp = s.post(f"{cdp_server.url}{API_PREFIX}/hosts/web1/{kind}", data=body,
                  headers={"Content-Type": form.media_type}, timeout=30)
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        assert resp.json()["detail"]
    assert s.get(cdp_server.url + API_PREFIX + "/health", timeout=30).ok
