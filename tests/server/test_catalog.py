"""The SQLite catalog on its own: the damaged chunks every point asks for come from an
index of only the damaged objects (a missing index is an error, never a silent scan),
and healing takes an object out of it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cdp_server.sqlite_catalog import SqliteCatalog
from cdpcore.api import ObjectKind, Role
from cdpcore.errors import NotFoundError, ServerError


def test_damaged_chunks_come_from_their_index_and_healing_removes_them(tmp_path: Path) -> None:
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite")
    ids = sorted(os.urandom(32) for _ in range(40))
    catalog.create_host("web1", {})
    catalog.create_host("db1", {})

    def add(host: str, kind: ObjectKind, pack: str, objects: list[bytes]) -> int:
        catalog.begin_pack(pack, 10 * len(objects))
        added, _ = catalog.add_objects(
            host, kind, pack, [(oid, 10 * n, 10, bytes(32)) for n, oid in enumerate(objects)],
            time.time())
        return added

    add("web1", ObjectKind.chunks, "packs/a.pack", ids)
    add("web1", ObjectKind.pages, "packs/b.pack", ids[:5])
    add("db1", ObjectKind.chunks, "packs/c.pack", ids[:5])
    assert catalog.damaged("web1") == []
    catalog.mark_damaged("web1", ObjectKind.chunks, [ids[7], ids[3]])
    catalog.mark_damaged("web1", ObjectKind.pages, [ids[1]])  # a page: not a chunk
    catalog.mark_damaged("db1", ObjectKind.chunks, [ids[2]])  # another host's
    assert catalog.damaged("web1") == [ids[3], ids[7]]
    assert catalog.damaged("db1") == [ids[2]]
    # The next backup uploads the chunk again: it replaces the damaged copy.
    assert add("web1", ObjectKind.chunks, "packs/d.pack", [ids[3]]) == 1
    assert catalog.damaged("web1") == [ids[7]]


def test_present_in_parts_that_hold_all_some_or_none(tmp_path: Path) -> None:
    """present() counts each part of 900 IDs before it lists any: a part wholly present,
    one partly present, one absent, duplicates in the question, and damaged objects, of
    this host and kind only, taken out."""
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite")
    catalog.create_host("web1", {})
    catalog.create_host("db1", {})
    stored = [os.urandom(32) for _ in range(1400)]
    absent = [os.urandom(32) for _ in range(1000)]
    for host, kind in (("web1", ObjectKind.chunks), ("db1", ObjectKind.chunks),
                       ("web1", ObjectKind.pages)):
        pack = f"packs/{host}-{kind.value}.pack"
        catalog.begin_pack(pack, 10 * len(stored))
        catalog.add_objects(host, kind, pack,
                            [(oid, 10 * n, 10, bytes(4)) for n, oid in enumerate(stored)],
                            time.time())
    # parts of 900 unique IDs: all stored; 500 stored and 400 absent; all absent
    question = stored[:900] + stored[:10] + stored[900:] + absent
    assert catalog.present("web1", ObjectKind.chunks, question) == set(stored)
    assert catalog.present("web1", ObjectKind.chunks, absent) == set()
    catalog.mark_damaged("db1", ObjectKind.chunks, stored[:3])  # another host's
    catalog.mark_damaged("web1", ObjectKind.pages, stored[3:6])  # pages, not chunks
    assert catalog.present("web1", ObjectKind.chunks, question) == set(stored)
    catalog.mark_damaged("web1", ObjectKind.chunks, [stored[5], stored[1300]])
    assert catalog.present("web1", ObjectKind.chunks, question) == \
        set(stored) - {stored[5], stored[1300]}
    assert catalog.present("db1", ObjectKind.chunks, stored[:10]) == set(stored[3:10])
    assert catalog.present("other", ObjectKind.chunks, stored) == set()


def test_objects_of_a_pack_forgotten_meanwhile_are_refused(tmp_path: Path) -> None:
    """GC forgets a pending pack after its timeout (and deletes the file): an upload that
    slow must fail whole, not add rows that point at no pack."""
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite")
    catalog.create_host("web1", {})
    oid = os.urandom(32)
    catalog.begin_pack("packs/slow.pack", 10)
    catalog.forget_pending(["packs/slow.pack"])
    with pytest.raises(ServerError, match=r"pack packs/slow\.pack is no longer registered") as err:
        catalog.add_objects("web1", ObjectKind.chunks, "packs/slow.pack",
                            [(oid, 0, 10, bytes(32))], time.time())
    assert err.value.status == 503
    assert catalog.present("web1", ObjectKind.chunks, [oid]) == set()
    assert catalog.status()["chunks"] == 0


def test_a_token_cannot_be_issued_to_a_host_removed_meanwhile(tmp_path: Path) -> None:
    """The reissue checks, in its own transaction, that the host still has tokens: a
    removal between the caller's checks and the insert must not leave a removed host
    with a live token."""
    catalog = SqliteCatalog(tmp_path / "catalog.sqlite")
    catalog.create_host("web1", {Role.agent: "a1", Role.restore: "r1"})
    assert catalog.replace_tokens("web1", Role.agent, "a2") == 1
    assert catalog.retire_host("web1") == 0
    with pytest.raises(NotFoundError, match="host 'web1' was removed"):
        catalog.replace_tokens("web1", Role.agent, "a3")
    assert (catalog.token("a3"), catalog.host_retired("web1")) == (None, True)
    assert catalog.replace_tokens(None, Role.admin, "admin2") == 0  # admin: no host
