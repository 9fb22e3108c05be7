"""Upload, missing and fetch over HTTPS; bad and oversized bodies."""

from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest
import requests

from cdpcore import index, records
from cdpcore.api import (
    API_PREFIX,
    MAX_FETCH_BYTES,
    MAX_UPLOAD_BYTES,
    ObjectKind,
    Role,
)
from cdpcore.errors import NotFoundError, ServerError

from .points import build_point, flip_stored_byte, new_codec


@pytest.fixture
def host(cdp_server):  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    return cdp_server.client(tokens[Role.agent]), tokens


def _post(server, token: str, path: str, data: bytes,  # type: ignore[no-untyped-def]
          ctype: str = records.CURRENT.media_type) -> requests.Response:
    return requests.post(server.url + API_PREFIX + path, data=data, verify=str(server.ca_path),
                         headers={"Authorization": f"Bearer {token}", "Content-Type": ctype},
                         timeout=60)


def test_upload_missing_fetch_round_trip(host) -> None:  # type: ignore[no-untyped-def]
    agent, _ = host
    codec = new_codec()
    blocks = [os.urandom(4096) for _ in range(50)]
    items = [codec.seal_block(b) for b in blocks]
    ids = [i for i, _ in items]
    assert agent.missing("web1", ObjectKind.chunks, ids) == set(ids)
    result = agent.upload("web1", ObjectKind.chunks, items[:20])  # type: ignore[arg-type]
    assert (result.stored, result.duplicates) == (20, 0)
    assert result.stored_bytes == sum(len(b) for _, b in items[:20])
    assert agent.missing("web1", ObjectKind.chunks, ids) == set(ids[20:])
    result = agent.upload("web1", ObjectKind.chunks, items)  # type: ignore[arg-type]
    assert (result.stored, result.duplicates) == (30, 20)
    assert result.stored_bytes == sum(len(b) for _, b in items[20:])
    assert agent.missing("web1", ObjectKind.chunks, ids) == set()
    got = agent.fetch("web1", ObjectKind.chunks, ids)
    assert [codec.open_block(i, got[i]) for i in ids] == blocks
    # pages and chunks are separate namespaces
    assert agent.missing("web1", ObjectKind.pages, ids[:3]) == set(ids[:3])


def test_a_forked_child_opens_its_own_connection(host) -> None:  # type: ignore[no-untyped-def]
    """The agent's sealing workers upload through the client they inherit by fork: the
    child must start without the parent's pooled sessions (a request on an inherited TLS
    socket would break the parent's stream), and both must keep working."""
    agent, _ = host
    codec = new_codec()
    first, second = os.urandom(4096), os.urandom(4096)
    (first_id, first_blob), (child_id, child_blob) = map(codec.seal_block, (first, second))
    agent.upload("web1", ObjectKind.chunks, [(first_id, first_blob)])  # pools a connection
    assert agent._local.session is not None
    pid = os.fork()
    if pid == 0:  # the child: report by exit status only
        ok = getattr(agent._local, "session", None) is None
        try:
            ok = ok and agent.upload("web1", ObjectKind.chunks, [(child_id, child_blob)]).stored == 1
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert agent.missing("web1", ObjectKind.chunks, [first_id, child_id]) == set()
    got = agent.fetch("web1", ObjectKind.chunks, [child_id])
    assert codec.open_block(child_id, got[child_id]) == second


def test_fetch_larger_than_one_answer_is_split(cdp_server, host) -> None:  # type: ignore[no-untyped-def]
    """One answer carries at most MAX_FETCH_BYTES: the server refuses a larger fetch
    (413) instead of building it in memory, and the client asks again for halves."""
    agent, tokens = host
    codec = new_codec()
    blocks = [os.urandom(4 * 1024 * 1024) for _ in range(MAX_FETCH_BYTES // (4 << 20) + 1)]
    items = [codec.seal_block(b) for b in blocks]
    ids = [i for i, _ in items]
    for item in items:
        agent.upload("web1", ObjectKind.chunks, [item])  # type: ignore[list-item]
    resp = _post(cdp_server, tokens[Role.agent], "/hosts/web1/chunks/fetch",
                 json.dumps({"ids": [i.hex() for i in ids]}).encode(), "application/json")
    assert resp.status_code == 413, resp.text
    assert "ask for fewer" in resp.json()["detail"]
    got = agent.fetch("web1", ObjectKind.chunks, ids)
    assert [codec.open_block(i, got[i]) for i in ids] == blocks


def test_fetch_names_missing_objects(host) -> None:  # type: ignore[no-untyped-def]
    agent, _ = host
    codec = new_codec()
    cid, blob = codec.seal_block(os.urandom(4096))
    agent.upload("web1", ObjectKind.chunks, [(cid, blob)])
    absent = hashlib.sha256(b"nothing").digest()
    with pytest.raises(NotFoundError) as exc:
        agent.fetch("web1", ObjectKind.chunks, [cid, absent])
    assert absent.hex() in str(exc.value)
    assert "1 chunks missing" in str(exc.value)


def test_v1_records_of_older_clients_are_stored_checked_and_served(cdp_server, host) -> None:  # type: ignore[no-untyped-def]
    """A client that predates v2 records uploads SHA-256 records and reads answers as v1;
    current clients use CRC-32 (v2). Both kinds of object are served in either version
    and checked at rest against the checksum their upload carried."""
    agent, tokens = host
    assert agent.health().records == [1, 2]
    assert agent.upload_format() is records.V2
    codec = new_codec()
    old = [codec.seal_block(os.urandom(4096)) for _ in range(3)]
    new = [codec.seal_block(os.urandom(4096)) for _ in range(3)]
    resp = _post(cdp_server, tokens[Role.agent], "/hosts/web1/chunks",
                 records.encode_records(old, records.V1), ctype=records.V1.media_type)  # type: ignore[arg-type]
    assert resp.json()["stored"] == 3
    assert agent.upload("web1", ObjectKind.chunks, new).stored == 3  # type: ignore[arg-type]
    ids = [oid for oid, _ in old + new]
    for accept, form in ((records.V2.media_type, records.V2), ("*/*", records.V1),
                         (f"{records.V1.media_type}, {records.V2.media_type}; q=0",
                          records.V1)):
        resp = requests.post(
            f"{cdp_server.url}{API_PREFIX}/hosts/web1/chunks/fetch",
            data=json.dumps({"ids": [i.hex() for i in ids]}), verify=str(cdp_server.ca_path),
            headers={"Authorization": f"Bearer {tokens[Role.restore]}", "Accept": accept,
                     "Content-Type": "application/json"}, timeout=60)
        assert (resp.headers["Content-Type"], resp.headers["Vary"]) == (form.media_type,
                                                                      "Accept")
        # decode_records checks every record's checksum
        assert {oid: blob for oid, _, blob in records.decode_records(resp.content, form)} == \
            dict(old + new)
    flip_stored_byte(cdp_server.data_dir, "chunks", old[0][0])
    flip_stored_byte(cdp_server.data_dir, "chunks", new[0][0])
    for bad in (old[0][0], new[0][0]):
        with pytest.raises(NotFoundError, match="0 chunks missing and 1 damaged"):
            agent.fetch("web1", ObjectKind.chunks, [bad])
    assert agent.fetch("web1", ObjectKind.chunks, ids[1:3] + ids[4:]) == \
        dict(old[1:] + new[1:])


def test_batches_are_split_transparently(host) -> None:  # type: ignore[no-untyped-def]
    agent, _ = host
    ids = [hashlib.sha256(str(i).encode()).digest() for i in range(5000)]  # > 4096 per request
    assert agent.missing("web1", ObjectKind.chunks, ids) == set(ids)


def test_corrupt_records_are_refused(cdp_server, host) -> None:  # type: ignore[no-untyped-def]
    agent, tokens = host
    token = tokens[Role.agent]
    codec = new_codec()
    cid, blob = codec.seal_block(os.urandom(4096))
    assert blob is not None
    good = records.encode_record(cid, blob)
    flipped = good[:100] + bytes([good[100] ^ 1]) + good[101:]
    resp = _post(cdp_server, token, "/hosts/web1/chunks", flipped)
    assert resp.status_code == 422
    assert resp.json()["detail"] == f"record {cid.hex()[:16]}… does not match its checksum"
    resp = _post(cdp_server, token, "/hosts/web1/chunks", good[:-5])
    assert resp.status_code == 400
    assert "truncated" in resp.json()["detail"]
    resp = _post(cdp_server, token, "/hosts/web1/chunks", good, ctype="application/json")
    assert resp.status_code == 415
    # a page must be a page and be named by its SHA-256
    pid, page = index.encode_page(0, os.urandom(64))
    assert page is not None
    resp = _post(cdp_server, token, "/hosts/web1/pages",
                 records.encode_record(hashlib.sha256(b"x").digest(), page))
    assert resp.status_code == 422
    assert "has wrong content" in resp.json()["detail"]
    resp = _post(cdp_server, token, "/hosts/web1/pages", records.encode_record(
        hashlib.sha256(blob).digest(), blob))
    assert resp.status_code == 400
    assert "not an index page" in resp.json()["detail"]
    resp = _post(cdp_server, token, "/hosts/web1/chunks",
                 records.encode_record(bytes(32), blob))
    assert resp.status_code == 400
    # nothing of that was stored
    assert agent.missing("web1", ObjectKind.chunks, [cid]) == {cid}
    assert agent.missing("web1", ObjectKind.pages, [pid]) == {pid}


def test_oversize_and_malformed_requests(cdp_server, host) -> None:  # type: ignore[no-untyped-def]
    _, tokens = host
    token = tokens[Role.agent]
    big = b"\0" * (MAX_UPLOAD_BYTES + 2 * 1024 * 1024)
    resp = _post(cdp_server, token, "/hosts/web1/chunks", big)
    assert resp.status_code == 413
    assert "larger than" in resp.json()["detail"]

    def chunked():  # type: ignore[no-untyped-def]
        for _ in range(80):
            yield b"\0" * (1024 * 1024)

    resp = _post(cdp_server, token, "/hosts/web1/chunks", chunked())  # type: ignore[arg-type]
    assert resp.status_code == 413
    resp = _post(cdp_server, token, "/hosts/web1/chunks/missing", b"{not json",
                 ctype="application/json")
    assert resp.status_code == 422
    resp = _post(cdp_server, token, "/hosts/web1/chunks/missing", b'{"ids": ["xyz"]}',
                 ctype="application/json")
    assert resp.status_code == 422
    assert resp.json()["detail"] == "bad ID 'xyz': 64 lower-case hex digits expected"
    too_many = ('{"ids": [' + ",".join(['"' + "ab" * 32 + '"'] * 4097) + "]}").encode()
    resp = _post(cdp_server, token, "/hosts/web1/chunks/missing", too_many,
                 ctype="application/json")
    assert resp.status_code == 422
    assert "at most 4096" in resp.json()["detail"]
    resp = _post(cdp_server, token, "/hosts/web1/blobs/missing", b'{"ids": []}',
                 ctype="application/json")
    assert resp.status_code in (404, 405, 422)


def test_concurrent_uploads_of_the_same_objects(cdp_server, host) -> None:  # type: ignore[no-untyped-def]
    _, tokens = host
    codec = new_codec()
    items = [codec.seal_block(os.urandom(4096)) for _ in range(200)]
    results = []
    errors: list[BaseException] = []

    client = cdp_server.client(tokens[Role.agent])  # one client shared by every thread

    def send() -> None:
        try:
            results.append(client.upload("web1", ObjectKind.chunks, items))  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(r.stored for r in results) == 200
    assert all(r.stored + r.duplicates == 200 for r in results)
    reader = cdp_server.client(tokens[Role.restore])
    got = reader.fetch("web1", ObjectKind.chunks, [i for i, _ in items])
    assert all(got[i] == b for i, b in items)


def test_point_objects_round_trip(cdp_server, host) -> None:  # type: ignore[no-untyped-def]
    agent, tokens = host
    codec = new_codec()
    built = build_point(codec, "web1", {"disk": os.urandom(300 * 4096)})
    agent.upload("web1", ObjectKind.pages, list(built.pages.items()))
    got = cdp_server.client(tokens[Role.restore]).fetch("web1", ObjectKind.pages,
                                                        list(built.pages))
    assert got == built.pages


def test_upload_error_message_reaches_the_client(host) -> None:  # type: ignore[no-untyped-def]
    agent, _ = host
    with pytest.raises(ServerError) as exc:
        agent.upload("web1", ObjectKind.pages, [(hashlib.sha256(b"a" * 40).digest(), b"a" * 40)])
    assert exc.value.status == 400
    assert "not an index page" in str(exc.value)


def test_a_chunked_json_body_over_the_limit_is_413(cdp_server, host) -> None:  # type: ignore[no-untyped-def]
    """FastAPI turns any error while reading a JSON body into 400 "There was an error
    parsing the body": the body limit's 413 must still be what the client sees."""
    _, tokens = host

    def chunked():  # type: ignore[no-untyped-def]
        yield b'{"ids": ["'
        for _ in range(70):
            yield b"a" * (1024 * 1024)
        yield b'"]}'

    resp = _post(cdp_server, tokens[Role.agent], "/hosts/web1/chunks/missing",
                 chunked(), ctype="application/json")  # type: ignore[arg-type]
    assert resp.status_code == 413, resp.text
    assert resp.json()["detail"] == f"request body larger than {MAX_UPLOAD_BYTES + 2**20} bytes"
