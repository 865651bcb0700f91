"""A hostile relay between the reference PDS and atmx: atmx ends with the PDS's truth.

The relay (hostile_relay.py) changes what the signature does not cover: a commit's op list,
`prevData`, `since`, the seq and the order of events. Each test drives the real PDS, runs
atmx's real `Indexer` (stream, pipeline, writer, gap repair) against the relay, and checks
that what atmx serves (the API's own query) ends equal to what the PDS serves, that the
refusal or the repair is counted in a metric, and that no stale binding is served once the
repair has settled. Each test also says how the attack would succeed against a pipeline
without the defence it exercises, and where cheap shows that the relay really changed what
atmx received.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import asyncpg
import pytest
from devnet_harness import Account, Devnet, PdsClient
from hostile_relay import (
    KEY_PACKAGE,
    KEY_PACKAGE_PATH,
    XMTP,
    XMTP_PATH,
    Delay,
    Duplicate,
    EditCommits,
    HideCommit,
    HostileRelay,
    Isolate,
    Replay,
    SwapAdjacent,
    atmx_bindings,
    drop_op,
    forge_prev_data,
    gate_repairs,
    has_op,
    inverted_prev_data,
    keypackage_record,
    metric,
    metric_total,
    pds_truth,
    poll,
    settled,
    strip_prev_data,
    unique_handle,
    xmtp_record,
)

from atmx.indexer.config import Settings
from atmx.indexer.service import Indexer
from atmx.indexer.store.index_store import Store

pytestmark = pytest.mark.devnet

POST: Final = "app.bsky.feed.post"
DEADLINE = 5.0  # a repair is one getRecord per family from a loopback PDS: well under this


@dataclass
class Atmx:
    pool: asyncpg.Pool
    pds: PdsClient
    relay: HostileRelay
    indexer: Indexer

    async def bindings(self, did: str) -> dict[str, str]:
        return await atmx_bindings(self.pool, did)

    async def truth(self, did: str) -> dict[str, str]:
        return await pds_truth(self.pds, did)

    async def agrees(self, did: str) -> bool:
        return await self.bindings(did) == await self.truth(did)

    async def until_truth(self, *dids: str, deadline: float = DEADLINE) -> None:
        """Wait until atmx serves the PDS's truth for every account, its repairs done."""

        async def check() -> bool:
            for did in dids:
                if not (await settled(self.pool, self.pds, did) and await self.agrees(did)):
                    return False
            return True

        try:
            await poll("atmx serves the PDS's truth", check, deadline)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n" + "\n".join([await self.explain(did) for did in dids])) from None

    async def explain(self, did: str) -> str:
        """What each side holds of an account, for a failure message."""
        latest = await self.pds.query("com.atproto.sync.getLatestCommit", {"did": did})
        account = await self.pool.fetchrow("SELECT rev, data_cid FROM accounts WHERE did = $1", did)
        queued = await self.pool.fetchrow("SELECT reason, attempts FROM resync_queue WHERE did = $1", did)
        rejected = await self.pool.fetch("SELECT kind, reason, detail FROM rejections WHERE did = $1", did)
        sent = [(f.seq, f.rev, f.body.get("since"), f.indexed_ops()) for f in self.relay.sent_commits(did)]
        return (
            f"{did}: PDS rev {latest['rev']} records {await self.truth(did)}; atmx rev"
            f" {account and account['rev']} bindings {await self.bindings(did)} queued {queued and dict(queued)}"
            f" rejections {[dict(r) for r in rejected]}; history {await self.history(did)};"
            f" commits sent (seq, rev, since, ops) {sent}"
        )

    async def history(self, did: str) -> list[tuple[str, str, str | None, str]]:
        """(uri, rev, cid, action) of every binding version atmx ever stored for the account."""
        rows = await self.pool.fetch(
            "SELECT uri, rev, cid, action FROM binding_history WHERE did = $1 ORDER BY id", did
        )
        return [(r["uri"], r["rev"], r["cid"], r["action"]) for r in rows]


@pytest.fixture
async def atmx(devnet: Devnet, db_pool: asyncpg.Pool, pds: PdsClient) -> AsyncIterator[Atmx]:
    """atmx's real indexer (stream, pipeline, writer, gap repair) reading the hostile relay."""
    async with HostileRelay(devnet.firehose_url) as relay:
        settings = Settings(
            relay=relay.url,
            plc_url=devnet.plc_url,
            handle_resolver=devnet.pds_url,
            allow_insecure_http=True,
            stall_timeout=3600,
        )
        async with aiohttp.ClientSession() as session:
            indexer = Indexer(settings, Store(db_pool), session)
            await indexer.start()
            task = asyncio.create_task(indexer.run())
            try:
                await asyncio.wait_for(indexer.stream.connected.wait(), 10)
                await asyncio.wait_for(relay.subscribed.wait(), 10)
                yield Atmx(db_pool, pds, relay, indexer)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        assert relay.reencode_mismatches == 0, "the relay must not change what it does not mean to"


async def indexed_account(atmx: Atmx) -> Account:
    """A new account with an XMTP binding that atmx serves, its chain verified up to the PDS's head."""
    account = await atmx.pds.create_account(unique_handle())
    _, cid = await atmx.pds.put_record(account, XMTP, "self", xmtp_record())
    await atmx.until_truth(account.did)
    assert (await atmx.bindings(account.did)).get(uri(account, XMTP_PATH)) == cid
    return account


def uri(account: Account, path: str) -> str:
    return f"at://{account.did}/{path}"


def delete(collection: str, rkey: str = "self") -> dict[str, Any]:
    return {"$type": "com.atproto.repo.applyWrites#delete", "collection": collection, "rkey": rkey}


def create(collection: str, value: dict[str, Any], rkey: str = "self") -> dict[str, Any]:
    return {"$type": "com.atproto.repo.applyWrites#create", "collection": collection, "rkey": rkey, "value": value}


def update(collection: str, value: dict[str, Any], rkey: str = "self") -> dict[str, Any]:
    return {"$type": "com.atproto.repo.applyWrites#update", "collection": collection, "rkey": rkey, "value": value}


def post(text: str) -> dict[str, Any]:
    return {"$type": POST, "text": text, "createdAt": "2024-01-01T00:00:00.000Z"}


# A fixed record key, so the MST shape (and so which check fires) is the same on every run.
POST_RKEY = "3kaaaaaaaaaa2"


def companion(kind: str) -> dict[str, Any]:
    """The create that shares a commit with the delete the relay drops."""
    if kind == "post":
        return create(POST, post("hi"), POST_RKEY)
    return create(KEY_PACKAGE, keypackage_record())


async def still_true_after_an_honest_commit(atmx: Atmx, account: Account) -> None:
    """Once repaired, the next honest commit chains onto the repaired state: verified, no new
    repair, and nothing stale comes back."""
    repairs = metric_total("atmx_resync_queued_total")
    verified = metric("atmx_verifications_total", kind="commit", reason="ok")
    await atmx.pds.put_record(account, KEY_PACKAGE, "self", keypackage_record("later"))
    await atmx.until_truth(account.did)
    assert metric("atmx_verifications_total", kind="commit", reason="ok") == verified + 1
    assert metric_total("atmx_resync_queued_total") == repairs
    assert uri(account, XMTP_PATH) not in await atmx.bindings(account.did)


# --- the control: an honest relay ---


async def test_an_honest_relay_changes_nothing(atmx: Atmx) -> None:
    """The relay itself is transparent: every frame re-encodes to the PDS's bytes, and atmx
    indexes through it as it would straight from the PDS."""
    alice = await indexed_account(atmx)
    await atmx.pds.put_record(alice, KEY_PACKAGE, "self", keypackage_record())
    await atmx.until_truth(alice.did)
    assert len(await atmx.bindings(alice.did)) == 2
    sent = atmx.relay.sent_commits(alice.did)
    assert [f.body["rev"] for f in sent] == [f.body["rev"] for f in atmx.relay.received_commits(alice.did)]
    assert atmx.relay.received and atmx.relay.reencode_mismatches == 0


async def test_the_cursor_goes_through_the_relay(atmx: Atmx) -> None:
    """atmx reconnects with its cursor in the relay's numbering; the relay asks the PDS for the
    events after the one that seq came from. A commit made while atmx was away arrives from the
    PDS's backlog and chains: nothing lost, nothing repaired."""
    alice = await indexed_account(atmx)
    repairs = metric_total("atmx_resync_queued_total")
    last = atmx.relay.sent[-1].seq
    atmx.relay.admit.clear()
    await atmx.relay.drop_clients()
    await poll("atmx reconnecting", lambda: len(atmx.relay.cursors) == 2)
    await atmx.pds.put_record(alice, KEY_PACKAGE, "self", keypackage_record())
    atmx.relay.admit.set()
    await atmx.until_truth(alice.did)
    assert atmx.relay.cursors == [None, last]
    assert len(await atmx.bindings(alice.did)) == 2
    assert metric_total("atmx_resync_queued_total") == repairs


# --- a dropped op ---


@pytest.mark.parametrize("kind", ["post", "key-package"])
async def test_a_dropped_delete_fails_the_inversion(atmx: Atmx, kind: str) -> None:
    """The relay drops `delete org.xmtp.inbox/self` from a commit that also creates a record.

    The signed tree no longer holds the binding, but the op list says nothing of it: without
    the inversion check (ops inverted back to prevData) the commit would verify op by op and
    the binding would stay. With a post as the other record the edited commit names no indexed
    collection at all, so a pipeline that verified only commits under its collections would
    not even look at it. atmx refuses the commit (`ops_do_not_invert`) and re-fetches the repo
    with proof: the binding disappears (and with a key package beside it, the key package the
    refused commit carried comes from the proof).
    """
    alice = await indexed_account(atmx)
    lie = EditCommits(alice.did, has_op(XMTP_PATH, "delete"), drop_op(XMTP_PATH, "delete"))
    atmx.relay.strategy = lie
    refused = metric("atmx_verifications_total", kind="commit", reason="ops_do_not_invert")
    queued = metric("atmx_resync_queued_total", reason="unverifiable_commit")
    repaired = metric("atmx_backfill_repos_total", job="repair", outcome="ok")

    await atmx.pds.apply_writes(alice, [delete(XMTP), companion(kind)])
    await poll("the binding gone", lambda: absent(atmx, alice, XMTP_PATH))
    await atmx.until_truth(alice.did)

    # the relay lied: atmx received the commit without its delete, prevData untouched
    [original], [edited] = lie.original, lie.edited
    assert original.has_op(XMTP_PATH, "delete") and not edited.has_op(XMTP_PATH)
    assert edited.body["prevData"] == original.body["prevData"]
    assert metric("atmx_verifications_total", kind="commit", reason="ops_do_not_invert") == refused + 1
    assert metric("atmx_resync_queued_total", reason="unverifiable_commit") == queued + 1
    assert metric("atmx_backfill_repos_total", job="repair", outcome="ok") >= repaired + 1
    if kind == "key-package":
        assert uri(alice, KEY_PACKAGE_PATH) in await atmx.bindings(alice.did)
    await still_true_after_an_honest_commit(atmx, alice)


async def test_a_dropped_delete_without_prev_data(atmx: Atmx) -> None:
    """The relay drops the delete and strips `prevData`, so there is nothing to invert to.

    The commit then verifies op by op (the post is in the signed tree) and its `since` chains
    onto the stored rev: a pipeline that took a commit without `prevData` as complete would
    keep the binding. atmx takes the commit's state but cannot show its ops complete
    (`no_prev_data`): it re-fetches the repo with proof, and the binding disappears.
    """
    alice = await indexed_account(atmx)
    lie = EditCommits(alice.did, has_op(XMTP_PATH, "delete"), drop_op(XMTP_PATH, "delete"), strip_prev_data)
    atmx.relay.strategy = lie
    queued = metric("atmx_resync_queued_total", reason="no_prev_data")
    verified = metric("atmx_verifications_total", kind="commit", reason="ok")

    await atmx.pds.apply_writes(alice, [delete(XMTP), companion("post")])
    await poll("the binding gone", lambda: absent(atmx, alice, XMTP_PATH))
    await atmx.until_truth(alice.did)

    [edited] = lie.edited
    assert "prevData" not in edited.body and not edited.has_op(XMTP_PATH)
    assert metric("atmx_verifications_total", kind="commit", reason="ok") >= verified + 1  # the signature held
    assert metric("atmx_resync_queued_total", reason="no_prev_data") == queued + 1
    await still_true_after_an_honest_commit(atmx, alice)


async def test_a_dropped_delete_with_a_forged_prev_data(atmx: Atmx) -> None:
    """The smart liar: drop the delete and set `prevData` to the root the remaining ops invert to.

    The inversion check passes (the relay computed prevData with atmx's own MST code), so only
    the chain check catches it: prevData is not the MST root atmx stored for the last commit.
    Without that comparison the binding would stay. atmx queues a repair (`missed_commit`) and
    the binding disappears.
    """
    alice = await indexed_account(atmx)
    lie = EditCommits(alice.did, has_op(XMTP_PATH, "delete"), drop_op(XMTP_PATH, "delete"), forge_prev_data)
    atmx.relay.strategy = lie
    queued = metric("atmx_resync_queued_total", reason="missed_commit")
    refused = metric_total("atmx_verifications_total", kind="commit", exclude_reason="ok")

    await atmx.pds.apply_writes(alice, [delete(XMTP), companion("post")])
    await poll("the binding gone", lambda: absent(atmx, alice, XMTP_PATH))
    await atmx.until_truth(alice.did)

    [original], [edited] = lie.original, lie.edited
    assert edited.body["prevData"] != original.body["prevData"]
    assert edited.body["prevData"] == inverted_prev_data(edited)  # the inversion check passes
    assert edited.body["since"] == original.body["since"]
    # nothing was refused: the forged commit verified, and the chain check alone sent for the proof
    assert metric_total("atmx_verifications_total", kind="commit", exclude_reason="ok") == refused
    assert metric("atmx_resync_queued_total", reason="missed_commit") == queued + 1
    await still_true_after_an_honest_commit(atmx, alice)


# --- replays ---


async def test_an_old_create_replayed_after_the_delete(atmx: Atmx) -> None:
    """After the binding's delete the relay sends its create commit again, with a fresh seq.

    A pipeline that applied events in seq order would bring the binding back. The replayed
    commit is genuine (its signature verifies), but its rev is not newer than the stored one:
    atmx counts it stale and ignores it.
    """
    alice = await atmx.pds.create_account(unique_handle())
    replay = Replay(alice.did, record=has_op(XMTP_PATH, "create"), after=has_op(XMTP_PATH, "delete"))
    atmx.relay.strategy = replay
    await atmx.pds.put_record(alice, XMTP, "self", xmtp_record())
    await atmx.until_truth(alice.did)
    stale = metric("atmx_stale_events_total", kind="commit")

    await atmx.pds.delete_record(alice, XMTP, "self")
    await poll("the replay counted stale", lambda: metric("atmx_stale_events_total", kind="commit") >= stale + 1)
    await atmx.until_truth(alice.did)
    assert await atmx.bindings(alice.did) == {}

    # the relay sent the create again after the delete, with a higher seq
    sent = atmx.relay.sent_commits(alice.did)
    kinds = [f.indexed_ops() for f in sent if f.indexed_ops()]
    assert kinds == [[("create", XMTP_PATH)], [("delete", XMTP_PATH)], [("create", XMTP_PATH)]]
    create, delete_, again = (f for f in sent if f.indexed_ops())
    assert again.rev == create.rev and again.seq > delete_.seq  # type: ignore[operator]
    # and atmx never stored the binding again after its delete
    actions = [action for u, _, _, action in await atmx.history(alice.did) if u == uri(alice, XMTP_PATH)]
    assert actions == ["create", "delete"]
    await still_true_after_an_honest_commit(atmx, alice)


async def test_an_account_first_seen_through_an_old_commit(atmx: Atmx) -> None:
    """The relay hides everything of an account except its old create commit, which it sends
    only after the PDS has deleted the binding (and hides that delete).

    A pipeline that took the first commit it saw of an account as the account's records would
    serve the binding, and with the delete hidden it would serve it for good. atmx starts the
    account's chain with that commit and takes its records from a proof fetch, which proves
    the binding absent: the binding is never stored, let alone served.
    """
    bob = await atmx.pds.create_account(unique_handle())
    hide = Isolate(bob.did, keep=has_op(XMTP_PATH, "create"))
    atmx.relay.strategy = hide
    await atmx.pds.put_record(bob, XMTP, "self", xmtp_record())
    await atmx.pds.delete_record(bob, XMTP, "self")
    await atmx.pds.create_post(bob, "after the delete")
    await poll("the relay holding the create", lambda: len(hide.held) == 1 and len(hide.dropped) >= 2)
    queued = metric("atmx_resync_queued_total", reason="new_account")
    proofs = metric("atmx_verifications_total", kind="record_proof", reason="ok")

    await atmx.relay.inject(hide.release())

    async def repaired_and_never_served() -> bool:
        assert await atmx.bindings(bob.did) == {}, "atmx served the replayed binding"
        return await settled(atmx.pool, atmx.pds, bob.did)

    await poll("bob's repair settled", repaired_and_never_served)
    assert await atmx.truth(bob.did) == await atmx.bindings(bob.did) == {}
    assert await atmx.history(bob.did) == []  # not even stored for a moment
    assert metric("atmx_resync_queued_total", reason="new_account") == queued + 1
    assert metric("atmx_verifications_total", kind="record_proof", reason="ok") >= proofs + 2  # both families
    # all atmx got of bob's records is the old create (the repo's first, empty commit may have
    # passed before the strategy was set: it names nothing atmx indexes)
    [seen] = [f for f in atmx.relay.sent_commits(bob.did) if f.ops]
    assert seen.indexed_ops() == [("create", XMTP_PATH)]
    assert not any(f.did == bob.did and f.has_op(XMTP_PATH, "delete") for f in atmx.relay.sent)


# --- a lying since ---


@pytest.mark.parametrize("forge", [False, True], ids=["since", "since-and-prev-data"])
async def test_a_hidden_commit_behind_a_lying_since(atmx: Atmx, forge: bool) -> None:
    """The relay hides the commit that deletes the binding and rewrites the next commit's `since`
    (and with `forge` its `prevData` too) to the hidden commit's, so the next commit seems to
    follow the last one atmx verified.

    With `since` alone, prevData is still the hidden commit's root: a pipeline that chained on
    `since` only would keep the binding; atmx sees prevData differ from the stored root
    (`missed_commit`). With prevData forged as well the chain looks whole, but the ops of the
    next commit do not invert to it: without the inversion check the binding would stay;
    atmx refuses the commit (`ops_do_not_invert`). Either way a repair, then the truth.
    """
    alice = await indexed_account(atmx)
    hide = HideCommit(alice.did, has_op(XMTP_PATH, "delete"), forge_prev_data=forge)
    atmx.relay.strategy = hide
    if forge:
        counter = ("atmx_verifications_total", {"kind": "commit", "reason": "ops_do_not_invert"})
    else:
        counter = ("atmx_resync_queued_total", {"reason": "missed_commit"})
    before = metric(counter[0], **counter[1])

    await atmx.pds.delete_record(alice, XMTP, "self")
    await atmx.pds.create_post(alice, "after the hidden delete")
    await poll("the binding gone", lambda: absent(atmx, alice, XMTP_PATH))
    await atmx.until_truth(alice.did)

    assert hide.hidden is not None and hide.patched is not None
    sent = atmx.relay.sent_commits(alice.did)
    assert not any(f.has_op(XMTP_PATH, "delete") for f in sent)
    # the commit after the hidden one claims to follow the commit before it
    previous = sent[next(i for i, f in enumerate(sent) if f is hide.patched) - 1]
    assert hide.patched.body["since"] == hide.hidden.body["since"] == previous.rev
    assert metric(counter[0], **counter[1]) == before + 1
    await still_true_after_an_honest_commit(atmx, alice)


# --- a repair that live commits overtake ---


async def rev_is(atmx: Atmx, did: str, rev: str) -> bool:
    return bool(await atmx.pool.fetchval("SELECT rev FROM accounts WHERE did = $1", did) == rev)


async def test_a_repair_overtaken_by_a_live_commit_still_deletes(atmx: Atmx) -> None:
    """The relay swaps the binding's delete behind the next commit (a post): atmx takes the post
    (a gap: `missed_commit`), counts the delete stale and queues a repair. The repair proves the
    binding absent at the post's rev, but before its write lands the account commits again and
    the live pipeline, chained onto the post, stores that newer rev.

    The repair's proof is now older than the account's stored rev. Dropping it whole (as a stale
    proof of presence must be, lest it bring back a record a live commit deleted) would leave
    the binding served for good: the delete was lost to the reordering, and every later commit
    chains cleanly. A proof of absence older than the stored rev still removes a binding older
    than the proof; a proof the index disagrees with is fetched again.
    """
    alice = await indexed_account(atmx)
    atmx.relay.strategy = Delay(alice.did, has_op(XMTP_PATH, "delete"))
    stale = metric("atmx_stale_events_total", kind="commit")
    again = metric("atmx_resync_queued_total", reason="stale_proof")
    with gate_repairs(atmx.indexer.backfiller) as gate:
        await atmx.pds.delete_record(alice, XMTP, "self")  # held by the relay ...
        await atmx.pds.create_post(alice, "one")  # ... and sent after this one
        fetched = await asyncio.wait_for(gate.fetched.get(), DEADLINE)
        assert XMTP_PATH in [d.path for d in fetched.deletes]  # the repair proved the binding absent
        await atmx.pds.create_post(alice, "two")
        latest = await atmx.pds.query("com.atproto.sync.getLatestCommit", {"did": alice.did})
        await poll("the live commit stored first", lambda: rev_is(atmx, alice.did, latest["rev"]))
        assert fetched.repo_state is not None and fetched.repo_state[0] < latest["rev"]
        gate.release.set()
        await atmx.until_truth(alice.did)
    assert metric("atmx_stale_events_total", kind="commit") == stale + 1  # the delete, behind the post
    assert metric("atmx_resync_queued_total", reason="stale_proof") == again + 1
    await still_true_after_an_honest_commit(atmx, alice)


async def test_a_new_accounts_repair_overtaken_by_a_live_commit(atmx: Atmx) -> None:
    """No lie at all: a new account publishes its binding and at once another record. atmx takes
    the first commit it sees of the account for its chain only and fetches the records with
    proof; the proof shows the binding, but before its write lands the live pipeline has stored
    the second commit, which chains onto the first.

    The proof is older than the stored rev, and the second commit never touched the binding:
    dropping the proof whole would leave an account whose binding atmx never serves. The index
    holds no row to compare with (a live delete since the proof would look the same), so the
    repo is fetched again, and the newer proof stands.
    """
    bob = await atmx.pds.create_account(unique_handle())
    again = metric("atmx_resync_queued_total", reason="stale_proof")
    with gate_repairs(atmx.indexer.backfiller) as gate:
        _, cid = await atmx.pds.put_record(bob, XMTP, "self", xmtp_record())
        fetched = await asyncio.wait_for(gate.fetched.get(), DEADLINE)
        assert [u.path for u in fetched.upserts] == [XMTP_PATH]
        await atmx.pds.create_post(bob, "hello")
        latest = await atmx.pds.query("com.atproto.sync.getLatestCommit", {"did": bob.did})
        await poll("the live commit stored first", lambda: rev_is(atmx, bob.did, latest["rev"]))
        gate.release.set()
        await atmx.until_truth(bob.did)
    assert metric("atmx_resync_queued_total", reason="stale_proof") == again + 1
    assert (await atmx.bindings(bob.did))[uri(bob, XMTP_PATH)] == cid


# --- duplicates and reordering over a mixed workload ---


async def mixed_workload(pds: PdsClient, accounts: list[Account]) -> None:
    """Creates, updates and deletes of both record kinds, several commits in a row per account
    (so that reordering swaps commits of one account), ending in a different state for each."""
    for i, acc in enumerate(accounts):
        await pds.put_record(acc, XMTP, "self", xmtp_record())
        await pds.put_record(acc, KEY_PACKAGE, "self", keypackage_record())
        await pds.put_record(acc, XMTP, "self", xmtp_record())  # an update
        await pds.apply_writes(acc, [delete(KEY_PACKAGE), create(POST, post(f"post {i}"), POST_RKEY)])
        await pds.apply_writes(acc, [update(XMTP, xmtp_record()), create(KEY_PACKAGE, keypackage_record())])
        await pds.delete_record(acc, XMTP, "self")
        await pds.put_record(acc, KEY_PACKAGE, "self", keypackage_record("updated"))
        if i == 0:
            await pds.put_record(acc, XMTP, "self", xmtp_record())  # ends with both
        elif i == 2:
            await pds.delete_record(acc, KEY_PACKAGE, "self")  # ends with none
    for acc in accounts:  # a last round, interleaved across accounts
        await pds.create_post(acc, "done")


async def new_accounts(pds: PdsClient, n: int) -> list[Account]:
    return [await pds.create_account(unique_handle()) for _ in range(n)]


@pytest.mark.parametrize("same_seq", [False, True], ids=["fresh-seq", "same-seq"])
async def test_every_event_duplicated(atmx: Atmx, same_seq: bool) -> None:
    """Every event arrives twice (a relay re-sending, with a fresh seq or the same one).

    A pipeline without the rev guard would apply each commit again: a second history entry and
    change announcement per version, and each XMTP binding's check started over. atmx counts
    the copies stale; its index ends equal to the PDS's, each version recorded once.
    """
    accounts = await new_accounts(atmx.pds, 3)
    atmx.relay.strategy = Duplicate(same_seq=same_seq)
    stale = metric("atmx_stale_events_total", kind="commit")

    await mixed_workload(atmx.pds, accounts)
    await atmx.until_truth(*(a.did for a in accounts), deadline=10.0)

    truths = [await atmx.truth(a.did) for a in accounts]
    assert [len(t) for t in truths] == [2, 1, 0]
    dids = {a.did for a in accounts}
    commits = [f for f in atmx.relay.sent if f.is_commit and f.did in dids and f.ops]  # the workload's
    assert len(commits) == 2 * len({f.body["rev"] for f in commits})  # each sent twice
    if same_seq:
        assert all(a.seq == b.seq for a, b in zip(commits[::2], commits[1::2], strict=True))
    assert metric("atmx_stale_events_total", kind="commit") >= stale + 1
    for acc in accounts:
        versions = await atmx.history(acc.did)
        assert len(versions) == len(set(versions)), "a version was applied twice"
    changes = await atmx.pool.fetch("SELECT did, body FROM changes WHERE kind = 'binding'")
    bodies = [(r["did"], r["body"]) for r in changes]
    assert len(bodies) == len({(d, str(b)) for d, b in bodies}), "a change was announced twice"


async def test_adjacent_events_swapped(atmx: Atmx) -> None:
    """Events arrive in swapped pairs (2, 1, 4, 3, ...), seqs still increasing.

    When a pair holds two commits of one account, the later arrives first: its `since` is not
    the stored rev, and the earlier one is then stale. A pipeline with only a rev guard would
    drop the earlier commit's ops (a create or delete lost for good); one without it would apply
    the older state over the newer. atmx queues a repair (`missed_commit`) and ends with the
    PDS's truth.
    """
    accounts = await new_accounts(atmx.pds, 3)
    swap = SwapAdjacent()
    atmx.relay.strategy = swap
    missed = metric("atmx_resync_queued_total", reason="missed_commit")
    stale = metric("atmx_stale_events_total", kind="commit")

    await mixed_workload(atmx.pds, accounts)
    await atmx.until_truth(*(a.did for a in accounts), deadline=10.0)

    assert [len(await atmx.truth(a.did)) for a in accounts] == [2, 1, 0]
    # the relay really reordered one account's commits, seqs still increasing
    assert any(
        [f.body["rev"] for f in atmx.relay.sent_commits(a.did)]
        != sorted(f.body["rev"] for f in atmx.relay.sent_commits(a.did))
        for a in accounts
    )
    seqs = [f.seq for f in atmx.relay.sent if f.seq is not None]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert metric("atmx_resync_queued_total", reason="missed_commit") >= missed + 1
    assert metric("atmx_stale_events_total", kind="commit") >= stale + 1


# --- helpers ---


async def absent(atmx: Atmx, account: Account, path: str) -> bool:
    return uri(account, path) not in await atmx.bindings(account.did)


async def present(atmx: Atmx, account: Account, path: str) -> bool:
    return uri(account, path) in await atmx.bindings(account.did)
