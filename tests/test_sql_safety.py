"""No value reaches SQL unparameterised: every statement in indexer/store/
is built from literals and module-level constants only, and hostile API parameters change nothing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from seed import seed_account, seed_xmtp
from source_ast import parse_source

from atmx.api.app import create_app
from atmx.api.params import encode_cursor

ROOT = Path(__file__).resolve().parent.parent
SQL_MODULES = sorted(
    p for p in (ROOT / "indexer" / "store").glob("*.py") if any(f".{c}(" in p.read_text() for c in ("fetch", "execute"))
)
SQL_CALLS = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare", "cursor"}
SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|WHERE|VALUES|FROM|SET)\b")


def _is_const(node: ast.expr, consts: set[str]) -> bool:
    """A value fixed when the module is written: literals, module constants, and joins of them."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id in consts
    if isinstance(node, ast.Tuple | ast.List):
        return all(_is_const(e, consts) for e in node.elts)
    if isinstance(node, ast.JoinedStr):
        return all(_is_const(v, consts) for v in node.values)
    if isinstance(node, ast.FormattedValue):
        return _is_const(node.value, consts)
    if isinstance(node, ast.BinOp):
        return _is_const(node.left, consts) and _is_const(node.right, consts)
    if isinstance(node, ast.IfExp):  # a choice between constant statements; the test is not SQL text
        return _is_const(node.body, consts) and _is_const(node.orelse, consts)
    if isinstance(node, ast.Call):  # only "sep".join(<constant>), or the schema file shipped in the package
        func = node.func
        if isinstance(func, ast.Name) and func.id == "schema_sql" and not node.args:
            return True
        return (
            isinstance(func, ast.Attribute)
            and func.attr == "join"
            and isinstance(func.value, ast.Constant)
            and len(node.args) == 1
            and not node.keywords
            and _is_const(node.args[0], consts)
        )
    return False


def _module_constants(tree: ast.Module, imported: dict[str, set[str]] | None = None) -> set[str]:
    consts: set[str] = set()
    for stmt in tree.body:  # constants of another store module, imported by name
        if isinstance(stmt, ast.ImportFrom) and stmt.module and imported and stmt.module in imported:
            consts |= {a.asname or a.name for a in stmt.names if a.name in imported[stmt.module]}
    for stmt in tree.body:  # in order: a constant may only use constants defined above it
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
        if isinstance(stmt, ast.AnnAssign):
            target = stmt.target
        value = stmt.value if isinstance(stmt, ast.Assign | ast.AnnAssign) else None
        if isinstance(target, ast.Name) and value is not None and _is_const(value, consts):
            consts.add(target.id)
    # a name assigned anywhere else (a function, a loop) is not a constant
    rebound = {
        t.id
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for inner in ast.walk(node)
        if isinstance(inner, ast.Assign | ast.AnnAssign | ast.AugAssign)
        for t in (inner.targets if isinstance(inner, ast.Assign) else [inner.target])
        if isinstance(t, ast.Name)
    }
    return consts - rebound


def _literal_text(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_literal_text(v) for v in node.values if isinstance(v, ast.Constant))
    return ""


def store_constants() -> dict[str, set[str]]:
    """Each store module's constants, by module name, for the modules that import them."""
    return {
        f"atmx.indexer.store.{p.stem}": _module_constants(parse_source(p.read_text()))
        for p in (ROOT / "indexer" / "store").glob("*.py")
    }


def sql_violations(source: str, imported: dict[str, set[str]] | None = None) -> list[str]:
    """Statements built from runtime values (f-string, .format, %, +) or run from a non-constant."""
    tree = parse_source(source)
    consts = _module_constants(tree, imported)
    found: list[str] = []
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.JoinedStr) and SQL_WORDS.search(_literal_text(node)) and not _is_const(node, consts):
            found.append(f"{where}: f-string SQL with a runtime value")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format"
            and SQL_WORDS.search(_literal_text(node.func.value))
        ):
            found.append(f"{where}: str.format on SQL")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
            text = _literal_text(node.left) + _literal_text(node.right)
            if SQL_WORDS.search(text) and not _is_const(node, consts):
                found.append(f"{where}: SQL built with {type(node.op).__name__}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS:
            if node.args and not _is_const(node.args[0], consts):
                found.append(f"{where}: .{node.func.attr}() runs a statement that is not a constant")
    return found


@pytest.mark.parametrize("path", SQL_MODULES, ids=lambda p: p.name)
def test_every_statement_is_a_constant(path: Path) -> None:
    source = path.read_text()
    assert sum(source.count(f".{call}(") for call in SQL_CALLS) >= 1  # the scan sees real statements
    assert sql_violations(source, store_constants()) == []


def test_the_checker_catches_each_way_of_building_sql_from_values() -> None:
    imported = (
        'from atmx.indexer.store.queries import VISIBLE\nQ = f"SELECT a FROM t WHERE {VISIBLE}"\nawait c.fetch(Q)\n'
    )
    assert sql_violations(imported, {"atmx.indexer.store.queries": {"VISIBLE"}}) == []
    assert sql_violations(imported, {"atmx.indexer.store.queries": set()}) != []  # only the other's constants
    good = 'T = "t"\nCOLS = ("a", "b")\nQ = f"SELECT {\', \'.join(COLS)} FROM {T} WHERE x = $1"\nawait c.fetch(Q, v)\n'
    assert sql_violations(good) == []
    bad = [
        "async def f(c, v):\n    await c.fetch(f\"SELECT * FROM t WHERE x = '{v}'\")\n",
        'async def f(c, v):\n    await c.fetch("SELECT * FROM t WHERE x = {}".format(v))\n',
        'async def f(c, v):\n    await c.fetch("SELECT * FROM t WHERE x = %s" % v)\n',
        'async def f(c, v):\n    await c.fetch("SELECT * FROM t WHERE x = " + v)\n',
        'async def f(c, v):\n    q = "SELECT 1"\n    await c.execute(q)\n',
        'Q = "SELECT 1"\nasync def f(c, v):\n    global Q\n    Q = v\n    await c.execute(Q)\n',
    ]
    for source in bad:
        assert sql_violations(source), source


HOSTILE = [
    "did:plc:x' OR '1'='1",
    "'; DROP TABLE accounts; --",
    "did:plc:%",
    "did:plc:____________________",
    "alice.test' --",
    'did:plc:"',
    "did:plc:a\x00b",
    "\\x27",
]


async def test_hostile_parameters_are_refused_or_inert(db_pool: asyncpg.Pool) -> None:
    await seed_account(db_pool, "did:plc:alice", handle="alice.test")
    await seed_xmtp(db_pool, "did:plc:alice")
    before = await db_pool.fetchval("SELECT count(*) FROM bindings")
    ns = "/xrpc/directory.atmx."
    async with TestClient(TestServer(create_app(pool_provider=lambda: db_pool, version="1"))) as client:
        requests = []
        for value in HOSTILE:
            requests += [
                (f"{ns}getIdentity", {"actor": value}),
                (f"{ns}getIdentities", [("actors", value), ("actors", "did:plc:alice")]),
                (f"{ns}resolveXmtpInbox", {"inboxId": value}),
                (f"{ns}resolveXmtpInboxes", {"inboxIds": value}),
                (f"{ns}listBindings", {"protocol": value}),
                (f"{ns}listBindings", {"protocol": "xmtp", "limit": value}),
                (f"{ns}listBindings", {"protocol": "xmtp", "cursor": value}),
                (f"{ns}listBindings", {"protocol": "xmtp", "cursor": encode_cursor(value)}),
            ]
        for path, params in requests:
            resp = await client.get(path, params=params)
            body = await resp.json()
            assert resp.status in (200, 400), (path, params, resp.status, body)
            if resp.status == 400:
                assert body["error"] in ("InvalidRequest", "IdentityNotFound"), body
            elif path.endswith("getIdentities"):  # only the honest actor matched; wildcards match nothing
                assert [i["did"] for i in body["identities"]] == ["did:plc:alice"], body
            else:
                assert "did:plc:alice" not in str(body) or path.endswith("listBindings"), body
    assert await db_pool.fetchval("SELECT count(*) FROM bindings") == before
    assert await db_pool.fetchval("SELECT count(*) FROM accounts") == 1
