"""indexer/index/process.py: deciding one event from memory, or with the I/O it needs.

The store and the resolver are stand-ins here, so each input the processor reads is visible;
the whole path over a real database and loopback PLC/PDS is test_pipeline.py's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from forge import RepoBuilder, SigningKey
from metric_samples import sample
from pipeline_harness import XMTP, xmtp_record

from atmx.indexer.firehose.frames import AccountEvent, CommitEvent, IdentityEvent, SyncEvent, decode_frame
from atmx.indexer.identity.diddoc import DidInfo
from atmx.indexer.identity.resolver import ResolutionError
from atmx.indexer.index import process as process_mod
from atmx.indexer.index.decide import RepoState
from atmx.indexer.index.process import DEFER, EventProcessor

DID = "did:plc:" + "p" * 24


class FakeResolver:
    def __init__(self, info: DidInfo | None, *, cached: bool = False, failures: int = 0) -> None:
        self.info, self.cached, self.failures = info, cached, failures
        self.calls: list[tuple[str, bool]] = []
        self.invalidated: list[str] = []

    def cached_did(self, did: str) -> DidInfo | None:
        return self.info if self.cached else None

    async def resolve_did(self, did: str, *, force_refresh: bool = False) -> DidInfo:
        self.calls.append((did, force_refresh))
        if self.failures:
            self.failures -= 1
            raise ResolutionError("unreachable", "PLC is down")
        if self.info is None:
            raise ResolutionError("not_found", "no such DID")
        return self.info

    def invalidate(self, did: str) -> None:
        self.invalidated.append(did)

    async def verify_handle(self, info: DidInfo, *, force_refresh: bool = False) -> tuple[str | None, bool]:
        return info.handle, True


class FakeStore:
    def __init__(self, states: dict[str, RepoState] | None = None) -> None:
        self.states = states or {}
        self.reads: list[str] = []

    async def repo_state(self, did: str) -> RepoState | None:
        self.reads.append(did)
        return self.states.get(did)


def setup(
    resolver: FakeResolver, store: FakeStore | None = None, tracked: set[str] | None = None
) -> tuple[EventProcessor, dict[str, RepoState]]:
    repos: dict[str, RepoState] = {}
    store_: Any = store or FakeStore()
    resolver_: Any = resolver
    processor = EventProcessor(
        store_, resolver_, tracked=tracked or set(), repos=repos, clock=lambda: datetime.now(UTC)
    )
    return processor, repos


def repo_and_info() -> tuple[RepoBuilder, DidInfo]:
    key = SigningKey.generate()
    return RepoBuilder(DID, key), DidInfo(DID, key.did_key, "https://pds.test", "alice.test")


def commit(msg: Any) -> CommitEvent:
    ev = decode_frame(msg.to_frame(1))
    assert isinstance(ev, CommitEvent)
    return ev


def test_account_events_are_decided_on_the_spot() -> None:
    processor, _ = setup(FakeResolver(None))
    ws = processor.decide_now(AccountEvent(1, DID, "t", False, "suspended"))
    assert ws is not DEFER and ws is not None


def test_commits_wait_for_what_is_not_in_memory() -> None:
    repo, info = repo_and_info()
    ev = commit(repo.put(XMTP, xmtp_record()))
    assert setup(FakeResolver(info, cached=False))[0].decide_now(ev) is DEFER  # no repo state, no document
    processor, repos = setup(FakeResolver(info, cached=True))
    assert processor.decide_now(ev) is DEFER  # the document is there, the repo's state is not
    repos[DID] = RepoState(None, None)
    decided = processor.decide_now(ev)
    assert decided is not DEFER and decided is not None


def test_identity_and_sync_events_always_need_the_network() -> None:
    processor, _ = setup(FakeResolver(None, cached=True))
    assert processor.decide_now(IdentityEvent(1, DID, "t", None)) is DEFER
    assert processor.decide_now(SyncEvent(1, DID, "3kaaa", b"", "t")) is DEFER


async def test_a_new_accounts_first_commit_gets_its_handle_checked() -> None:
    repo, info = repo_and_info()
    processor, _ = setup(FakeResolver(info))
    ws = await processor.process(commit(repo.put(XMTP, xmtp_record())))
    assert ws is not None and ws.create_account and ws.resync_reason == "new_account"
    assert ws.identity is not None and (ws.identity.handle, ws.identity.handle_verified) == ("alice.test", True)


async def test_a_tracked_repos_state_is_read_once() -> None:
    repo, info = repo_and_info()
    first = commit(repo.put("app.bsky.feed.post/1", {"t": 1}))
    store = FakeStore({DID: RepoState("2222222222222", None)})
    processor, repos = setup(FakeResolver(info), store, tracked={DID})
    await processor.process(first)
    await processor.process(commit(repo.put("app.bsky.feed.post/2", {"t": 2})))
    assert store.reads == [DID] and DID in repos


async def test_an_unreachable_plc_is_retried_then_the_repo_is_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_mod, "IDENTITY_RETRY_DELAYS", (0.0, 0.0))
    repo, info = repo_and_info()
    resolver = FakeResolver(info, failures=5)
    processor, _ = setup(resolver)
    ws = await processor.process(commit(repo.put(XMTP, xmtp_record())))
    assert ws is not None and ws.resync_reason == "identity_unavailable"
    assert [force for _, force in resolver.calls] == [False, True, True]  # later attempts skip the cache


async def test_identity_events_re_resolve_and_re_check_the_handle() -> None:
    _, info = repo_and_info()
    resolver = FakeResolver(info)
    processor, _ = setup(resolver)
    ws = await processor.process(IdentityEvent(1, DID, "t", "alice.test"))
    assert resolver.invalidated == [DID] and resolver.calls == [(DID, True)]
    assert ws is not None and ws.identity is not None and ws.identity.pds == "https://pds.test"
    gone = await setup(FakeResolver(None))[0].process(IdentityEvent(2, DID, "t", None))
    assert gone is not None and [r.reason for r in gone.rejections] == ["identity_unavailable"]


def test_internal_errors_are_counted_by_type() -> None:
    processor, _ = setup(FakeResolver(None))
    before = sample("atmx_internal_errors_total", error="ZeroDivisionError")
    ws = processor.internal_error(DID, 9, ZeroDivisionError("oops"))
    assert ws.resync_reason == "internal_error"
    assert sample("atmx_internal_errors_total", error="ZeroDivisionError") == before + 1
