"""Uploading chunks against the real CDP server: when the agent asks what the server lacks
and when it sends without asking (transfer.Asking), and that what it counts as new is what
the server stored, also when it sent duplicates unasked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cdpcore.api import ObjectKind, UploadResult
from hotcopy.backup import backup
from hotcopy.remote import Remote
from hotcopy.transfer import (
    ASK_ABOVE,
    Asking,
    RetryPolicy,
    Sender,
    Throttle,
    UploadStats,
    send_new_chunks,
)

from .conftest import Agent

BS = 16 * 1024


class _Recording:
    """The agent's real server client, recording which calls it made; `old` answers
    uploads as a server from before `stored_bytes` did."""

    def __init__(self, remote: Remote, *, old: bool = False) -> None:
        self._remote, self._old = remote, old
        self.calls: list[str] = []

    def missing(self, host: str, kind: ObjectKind, ids: list[bytes]) -> set[bytes]:
        self.calls.append("missing")
        return self._remote.missing(host, kind, ids)

    def upload(self, host: str, kind: ObjectKind, items: list[tuple[bytes, bytes]]) -> Any:
        self.calls.append("upload")
        result: UploadResult = self._remote.upload(host, kind, items)
        return result.model_copy(update={"stored_bytes": None}) if self._old else result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._remote, name)


def _chunks(agent: Agent, n: int) -> dict[bytes, bytes]:
    return dict(agent.codec.seal_block(os.urandom(BS)) for _ in range(n))


def _sender(agent: Agent, remote: _Recording, stats: UploadStats) -> Sender:
    return Sender(remote, agent.host, RetryPolicy(attempts=1), Throttle(0),  # type: ignore[arg-type]
                  stats)


def test_new_chunks_go_up_unasked_and_count_exactly(agent: Agent) -> None:
    remote, stats = _Recording(agent.remote), UploadStats()
    chunks = _chunks(agent, 10)
    asking = Asking(present_share=0.0)
    send_new_chunks(_sender(agent, remote, stats), chunks, set(), asking)
    assert remote.calls == ["upload"]
    assert (stats.new_chunks, stats.new_bytes) == (10, sum(map(len, chunks.values())))
    assert agent.remote.missing(agent.host, ObjectKind.chunks, list(chunks)) == set()
    assert not asking.wanted()


def test_duplicates_sent_unasked_are_not_counted_and_bring_the_question_back(
        agent: Agent) -> None:
    known = _chunks(agent, 10)
    agent.remote.upload(agent.host, ObjectKind.chunks, list(known.items()))
    new = _chunks(agent, 2)
    remote, stats = _Recording(agent.remote), UploadStats()
    asking = Asking(present_share=0.0)
    sender = _sender(agent, remote, stats)
    send_new_chunks(sender, known | new, set(), asking)
    assert remote.calls == ["upload"]
    assert (stats.new_chunks, stats.new_bytes) == (2, sum(map(len, new.values())))
    assert asking.present_share > ASK_ABOVE and asking.wanted()
    # The next batch is asked about, and only what the server lacks goes up.
    newer = _chunks(agent, 3)
    send_new_chunks(sender, known | newer, set(), asking)
    assert remote.calls == ["upload", "missing", "upload"]
    assert stats.new_chunks == 5


def test_a_question_answered_all_new_stops_the_questions(agent: Agent) -> None:
    remote, stats = _Recording(agent.remote), UploadStats()
    asking = Asking()
    assert asking.wanted()  # by default the first batch is asked about
    sender = _sender(agent, remote, stats)
    send_new_chunks(sender, _chunks(agent, 4), set(), asking)
    send_new_chunks(sender, _chunks(agent, 4), set(), asking)
    assert remote.calls == ["missing", "upload", "upload"]
    assert stats.new_chunks == 8


def test_a_server_that_does_not_report_stored_bytes_is_always_asked(agent: Agent) -> None:
    remote, stats = _Recording(agent.remote, old=True), UploadStats()
    asking = Asking(present_share=0.0)
    sender = _sender(agent, remote, stats)
    for _ in range(3):
        send_new_chunks(sender, _chunks(agent, 2), set(), asking)
    assert remote.calls == ["upload", "missing", "upload", "missing", "upload"]
    assert not asking.measurable and stats.new_chunks == 6


def test_a_first_point_after_a_failed_one_counts_only_what_it_stored(
        agent: Agent, tmp_path: Path) -> None:
    """A host's first point sends without asking; chunks a failed attempt left on the
    server are then sent again but not counted as new, and the point is exact."""
    blocks = [os.urandom(BS) for _ in range(96)]
    image = tmp_path / "plain.img"
    image.write_bytes(b"".join(blocks))
    left = dict(agent.codec.seal_block(b) for b in blocks[:40])
    agent.remote.upload(agent.host, ObjectKind.chunks, list(left.items()))
    info = backup(agent.remote, agent.host, agent.codec, [str(image)], agent.state_dir,
                  workers=2)
    assert info.stats.new_chunks == 56
    stored = agent.remote.fetch(agent.host, ObjectKind.chunks,
                                [agent.codec.keys.chunk_id(b) for b in blocks[40:]])
    assert info.stats.new_bytes == sum(map(len, stored.values()))


def test_joined_answers_ask_if_any_uploader_would() -> None:
    asking = Asking(present_share=0.0)
    asking.join(Asking(present_share=0.01))
    assert not asking.wanted()
    asking.join(Asking(present_share=0.5))
    asking.join(Asking(present_share=0.0))  # a later uploader that saw all new
    assert asking.wanted() and asking.present_share == 0.5
    quiet = Asking(present_share=0.0)
    quiet.join(Asking(present_share=0.0, measurable=False))
    quiet.join(Asking(present_share=0.0))  # an older server stays one
    assert quiet.wanted()
