"""HTTP plumbing shared by every fetch of untrusted bytes: capped body reads.

A DID document, a handle's well-known file or a PDS's CAR comes from a host a stranger
controls, so nothing is read without a byte cap: a declared `Content-Length` over the cap
is refused before the first byte, and a body without one is counted as it streams in
(after decompression, so a small gzip bomb cannot get past the cap either).
"""

from __future__ import annotations

import aiohttp

__all__ = ["BodyTooLarge", "read_capped"]

_CHUNK = 1 << 16


class BodyTooLarge(ValueError):
    """A response body over the caller's cap; `size` is the declared length when there was one."""

    def __init__(self, url: str, limit: int, size: int | None = None) -> None:
        what = f"body of {size} bytes" if size is not None else "body"
        super().__init__(f"{url}: {what} exceeds {limit} bytes")
        self.limit = limit
        self.size = size


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of `resp`, at most `limit` bytes; raises BodyTooLarge past the cap."""
    if resp.content_length is not None and resp.content_length > limit:
        raise BodyTooLarge(str(resp.url), limit, resp.content_length)
    body = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(str(resp.url), limit)
    return bytes(body)
