"""The aiohttp application: XRPC routing, JSON errors, CORS, latency hook, /metrics."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from atmx.api.auth import ServiceAuth, auth_middleware
from atmx.api.errors import DATABASE_UNAVAILABLE, XrpcError, invalid_request
from atmx.api.handlers import METHODS, Handler, HandleResolver, health, methods
from atmx.api.openapi import openapi_document
from atmx.api.ratelimit import FixedWindowLimiter, IpNetwork, add_rate_limit_headers, rate_limit_middleware
from atmx.api.request_index import NSID as REQUEST_INDEX
from atmx.api.request_index import RequestIndexer
from atmx.api.responses import Blob
from atmx.api.subscription import HUB, ChangeHub, subscribe_bindings
from atmx.api.subscription_frames import NSID as SUBSCRIBE_BINDINGS
from atmx.api.well_known import did_json_handler

log = logging.getLogger(__name__)

PoolProvider = Callable[[], asyncpg.Pool]
MetricsHook = Callable[[str, int, float], None]

POOL_PROVIDER: web.AppKey[PoolProvider] = web.AppKey("pool_provider")
METRICS_HOOK: web.AppKey[MetricsHook] = web.AppKey("metrics_hook")
VERSION = web.AppKey("version", str)
REQUEST_INDEXER: web.AppKey[RequestIndexer] = web.AppKey("request_indexer")
METHOD_TABLE: web.AppKey[Mapping[str, Handler]] = web.AppKey("methods")
MAX_INPUT = 4096

HEALTH = "_health"
ALLOWED_METHODS = "GET, HEAD, POST, OPTIONS"
CORS_MAX_AGE = "86400"
MAX_REQUEST_LINE = 65536
# A comma-separated list of header names (RFC 9110 tokens): all a preflight may ask for.
_HEADER_NAMES = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*,[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")

STATIC_DIR = Path(__file__).resolve().parent / "static"
LEXICONS_DIR = Path(__file__).resolve().parent / "lexicons"
STATUS_PAGE = (STATIC_DIR / "index.html").read_bytes()
# The page only talks to this origin and renders data as text; the policy enforces both.
STATUS_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}

ROBOTS_TXT = "# Public directory API; crawling is allowed.\nUser-agent: *\nAllow: /\n"
BANNER = r"""
        _
   __ _| |_ _ __ ___ __  __
  / _` | __| '_ ` _ \\ \/ /
 | (_| | |_| | | | | |>  <
  \__,_|\__|_| |_| |_/_/\_\

atmx: a verified AT Protocol directory of messaging identities (XMTP inboxes, DIDComm).

XRPC methods:
""".lstrip("\n")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        content_type="application/json",
        headers=headers,
    )


def _error(status: int, name: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json(status, {"error": name, "message": message}, headers)


async def _xrpc(request: web.Request) -> web.StreamResponse:
    nsid = request.match_info["nsid"]
    if nsid == SUBSCRIBE_BINDINGS and HUB in request.app:
        if request.method != "GET":
            return _error(405, "InvalidRequest", f"Incorrect HTTP method ({request.method}) expected GET")
        return await subscribe_bindings(request)
    if nsid == REQUEST_INDEX:
        indexer = request.app.get(REQUEST_INDEXER)
        if indexer is None:
            return _error(501, "MethodNotImplemented", "This server does not index on request")
        if request.method != "POST":
            return _error(405, "InvalidRequest", f"Incorrect HTTP method ({request.method}) expected POST")
        return _json(200, await indexer(request, await _json_input(request)))
    if nsid == HEALTH:
        handler = None
    else:
        found = request.app[METHOD_TABLE].get(nsid)
        if found is None:
            return _error(501, "MethodNotImplemented", "Method Not Implemented")
        handler = found
    if request.method not in ("GET", "HEAD"):
        return _error(
            405,
            "InvalidRequest",
            f"Incorrect HTTP method ({request.method}) expected GET",
            {"Allow": ALLOWED_METHODS},
        )
    if handler is None:
        status, body = await health(request.app[POOL_PROVIDER], request.app[VERSION])
        return _json(status, body)
    result = await handler(request.app[POOL_PROVIDER](), request.query)
    if isinstance(result, Blob):
        return web.Response(body=result.body, content_type=result.content_type, headers=result.headers)
    return _json(200, result)


async def _json_input(request: web.Request) -> Any:
    """A procedure's JSON input, capped; InvalidRequest for anything else."""
    if request.content_type != "application/json":
        raise invalid_request("input must be application/json")
    if request.content_length is not None and request.content_length > MAX_INPUT:
        raise invalid_request(f"input over {MAX_INPUT} bytes")
    raw = await request.content.read(MAX_INPUT + 1)
    if len(raw) > MAX_INPUT:
        raise invalid_request(f"input over {MAX_INPUT} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise invalid_request("input is not JSON") from None


async def _metrics(_request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _openapi(request: web.Request) -> web.Response:
    return _json(200, openapi_document(request.app[VERSION]))


async def _robots(_request: web.Request) -> web.Response:
    return web.Response(text=ROBOTS_TXT)


async def _banner(request: web.Request) -> web.Response:
    # Browsers get the status page; curl and friends (no text/html in Accept) keep the text banner.
    if "text/html" in request.headers.get("Accept", ""):
        return web.Response(body=STATUS_PAGE, content_type="text/html", charset="utf-8", headers=STATUS_PAGE_HEADERS)
    return web.Response(text=BANNER + "".join(f"  /xrpc/{nsid}\n" for nsid in sorted(METHODS)))


def _metric_label(request: web.Request) -> str:
    """A bounded label: the NSID when it is one we serve, the route path otherwise."""
    nsid = request.match_info.get("nsid")
    if nsid is not None:
        return nsid if nsid in METHODS or nsid == HEALTH else "unknown"
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unknown"


def _preflight(request: web.Request) -> web.Response:
    # Echo the names asked for (a "*" does not cover Authorization), but never other text.
    asked = request.headers.get("Access-Control-Request-Headers", "").strip()
    headers = {
        "Access-Control-Allow-Methods": ALLOWED_METHODS,
        "Access-Control-Allow-Headers": asked if _HEADER_NAMES.fullmatch(asked) else "*",
        "Access-Control-Max-Age": CORS_MAX_AGE,
    }
    return web.Response(status=204, headers=headers)


async def _respond(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.method == "OPTIONS":
        return _preflight(request)
    try:
        return await handler(request)
    except XrpcError as exc:
        return _error(exc.status, exc.name, exc.message)
    except web.HTTPException as exc:  # the router's own 404 / 405
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _error(exc.status, "NotFound" if exc.status == 404 else "InvalidRequest", exc.reason, allow)
    except DATABASE_UNAVAILABLE as exc:
        log.warning("database unavailable during %s: %r", request.path, exc)
        return _error(503, "DatabaseUnavailable", "Database unavailable, retry later")
    except Exception:
        log.exception("unhandled error in %s", request.path)
        return _error(500, "InternalServerError", "Internal Server Error")


def _middleware(metrics_hook: MetricsHook | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        start = time.perf_counter()
        response = await _respond(request, handler)
        if metrics_hook is not None:
            try:
                metrics_hook(_metric_label(request), response.status, time.perf_counter() - start)
            except Exception:  # metrics must never break serving
                log.exception("metrics hook failed")
        return response

    return middleware


async def _cors(_request: web.Request, response: web.StreamResponse) -> None:
    # A signal, not the middleware, so that every response gets it, whatever produced it.
    response.headers["Access-Control-Allow-Origin"] = "*"


def create_app(
    *,
    pool_provider: PoolProvider,
    version: str,
    metrics_hook: MetricsHook | None = None,
    rate_limiter: FixedWindowLimiter | None = None,
    trusted_proxies: tuple[IpNetwork, ...] = (),
    service_did: str | None = None,
    service_endpoint: str | None = None,
    service_auth: ServiceAuth | None = None,
    change_stream: bool = True,
    request_indexer: RequestIndexer | None = None,
    handle_resolver: HandleResolver | None = None,
) -> web.Application:
    """The API; with `handle_resolver`, a lookup by handle answers only with the account the
    handle resolves to now, not only the one the index last verified."""
    middlewares = [_middleware(metrics_hook)]
    if rate_limiter is not None:  # inside the metrics middleware, so 429s are counted
        middlewares.append(rate_limit_middleware(rate_limiter, trusted_proxies))
    if service_auth is not None:  # inside the metrics middleware, so refused tokens are counted
        middlewares.append(auth_middleware(service_auth))
    app = web.Application(middlewares=middlewares)
    app[POOL_PROVIDER] = pool_provider
    app[VERSION] = version
    app[METHOD_TABLE] = methods(handle_resolver)
    if metrics_hook is not None:  # also for requests too malformed to reach the middleware
        app[METRICS_HOOK] = metrics_hook
    app.router.add_route("*", "/xrpc/{nsid}", _xrpc)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/robots.txt", _robots)
    app.router.add_get("/", _banner)
    app.router.add_static("/static/", STATIC_DIR)  # the status page's script and style
    app.router.add_static("/lexicons/", LEXICONS_DIR, show_index=True)  # the API's schemas, linked from the page
    if service_did is not None:
        app.router.add_get("/.well-known/did.json", did_json_handler(service_did, service_endpoint or ""))
    app.router.add_get("/openapi.json", _openapi)
    app.on_response_prepare.append(_cors)
    app.on_response_prepare.append(add_rate_limit_headers)
    if change_stream:
        hub = app[HUB] = ChangeHub(pool_provider)
        app.on_startup.append(lambda _app: hub.start())
        app.on_shutdown.append(lambda _app: hub.stop())
    if request_indexer is not None:
        app[REQUEST_INDEXER] = request_indexer
    return app


class _XrpcRequestHandler(web.RequestHandler):
    """aiohttp's connection protocol, answering HTTP it cannot parse the way atmx answers errors.

    A request aiohttp cannot parse (a request line or header over the limits, a bad
    Content-Length, TLS sent to the plain port) never reaches the application: aiohttp calls
    `handle_error`, which logs an ERROR with a traceback and answers text/plain. It is the
    client's mistake, so here it gets a debug line, a metric (label "malformed") and the XRPC
    JSON error with the CORS header every other answer carries.
    """

    __slots__ = ("metrics_hook",)
    metrics_hook: MetricsHook | None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)  # a failure of ours: aiohttp's path
        log.debug("malformed HTTP request from %s: %s", request.remote, type(exc).__name__)
        status = status if 400 <= status < 500 else 400
        hook: MetricsHook | None = getattr(self, "metrics_hook", None)
        if hook is not None:
            try:
                hook("malformed", status, 0.0)
            except Exception:
                log.exception("metrics hook failed")
        what = "request line or header too long" if isinstance(exc, LineTooLong) else "malformed HTTP request"
        response = _error(status, "InvalidRequest", what[0].upper() + what[1:])
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.force_close()  # the parser's state after garbage is unknown: do not reuse the connection
        return response


class _XrpcServer(web.Server):
    """`web.Server` whose connections are `_XrpcRequestHandler`s."""

    metrics_hook: MetricsHook | None = None

    def __call__(self) -> web.RequestHandler:
        handler = _XrpcRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.metrics_hook = self.metrics_hook
        return handler


class _XrpcAppRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        base = await super()._make_server()  # the app's own server: same handler, factory, settings
        server = _XrpcServer(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        server.metrics_hook = self.app.get(METRICS_HOOK)
        return server


async def run_api(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving; the caller stops with `await runner.cleanup()`."""
    # 64 KiB request lines leave room for a full batch of 100 long identifiers (aiohttp's default is 8 KiB)
    runner = _XrpcAppRunner(app, access_log=None, max_line_size=MAX_REQUEST_LINE)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()  # what start-up started (the change hub, sessions) stops with it
        raise
    return runner
