"""org.xmtp.inbox record validation."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atmx.indexer.records.envelope import RecordError
from atmx.indexer.records.xmtp_inbox import XmtpInbox, validate_xmtp_inbox

FIXTURES = Path(__file__).parent / "fixtures"
VECTORS = json.loads((FIXTURES / "xmtp-vectors.json").read_text())
SIG_B64 = VECTORS["sign_with_installation_key_vectors"][0]["signature_b64"]
SIG_HEX = VECTORS["sign_with_installation_key_vectors"][0]["signature_hex"]
INBOX_ID = VECTORS["inbox_id_vectors"][0]["inbox_id"]


def _record(**changes: object) -> dict[str, Any]:
    record: dict[str, Any] = {
        "$type": "org.xmtp.inbox",
        "id": INBOX_ID,
        "verificationSignature": SIG_B64,
        "createdAt": "2026-11-22T09:57:49.458Z",
    }
    for key, value in changes.items():
        if value is DELETE:
            record.pop(key, None)
        else:
            record[key] = value
    return record


DELETE = object()


def _reason(record: Any, rkey: str = "self") -> str:
    with pytest.raises(RecordError) as info:
        validate_xmtp_inbox(record, rkey)
    return str(info.value.reason)


def test_valid_record_from_libxmtp_vectors() -> None:
    inbox = validate_xmtp_inbox(_record(), "self")
    assert inbox == XmtpInbox(INBOX_ID, SIG_B64, bytes.fromhex(SIG_HEX), "2026-11-22T09:57:49.458Z")
    assert len(inbox.signature_bytes) == 64


def test_type_is_optional() -> None:
    assert validate_xmtp_inbox(_record(**{"$type": DELETE}), "self").inbox_id == INBOX_ID


def test_every_record_published_on_the_devnet_validates() -> None:
    index = json.loads((FIXTURES / "devnet-frames" / "index.json").read_text())
    seen = 0
    for frame in index["frames"]:
        for op in frame.get("ops", []):
            if op.get("path", "").startswith("org.xmtp.inbox/") and "record" in op:
                rkey = op["path"].split("/", 1)[1]
                if rkey == "self":
                    assert validate_xmtp_inbox(op["record"], rkey).created_at == op["record"]["createdAt"]
                else:  # the load-test batch used TID keys, which the lexicon (literal:self) forbids
                    with pytest.raises(RecordError, match="self"):
                        validate_xmtp_inbox(op["record"], rkey)
                seen += 1
    assert seen >= 8


@pytest.mark.parametrize("rkey", ["3n2ve4kmdcl2t", "Self", "self ", ""])
def test_bad_rkey(rkey: str) -> None:
    assert _reason(_record(), rkey) == "bad_rkey"


@pytest.mark.parametrize("value", ["app.bsky.feed.post", "org.xmtp.inboxid", None, 1])
def test_bad_type(value: object) -> None:
    assert _reason(_record(**{"$type": value})) == "bad_type"


def test_not_a_dict() -> None:
    assert _reason(["id"]) == "bad_type"


@pytest.mark.parametrize("field", ["id", "verificationSignature", "createdAt"])
def test_missing_field(field: str) -> None:
    assert _reason(_record(**{field: DELETE})) == "missing_field"


@pytest.mark.parametrize(
    "value",
    [
        INBOX_ID.upper(),
        INBOX_ID[:-1],
        INBOX_ID + "0",
        "0x" + INBOX_ID[2:],
        INBOX_ID[:-1] + "g",
        INBOX_ID + "\n",
        int(INBOX_ID, 16),
        None,
        "",
    ],
)
def test_bad_inbox_id(value: object) -> None:
    assert _reason(_record(id=value)) == "bad_inbox_id"


_SIG = bytes.fromhex(SIG_HEX)


@pytest.mark.parametrize(
    "value",
    [
        base64.urlsafe_b64encode(b"\xff" * 64).decode(),  # urlsafe alphabet
        SIG_B64.rstrip("="),  # padding dropped
        SIG_B64[:40] + "\n" + SIG_B64[40:],  # whitespace
        " " + SIG_B64,
        SIG_B64 + "\n",
        base64.b64encode(_SIG[:63]).decode(),  # 63 bytes
        base64.b64encode(_SIG + b"\0").decode(),  # 65 bytes
        _SIG.hex(),  # hex, not base64
        SIG_B64[:-3] + "h==",  # non-zero padding bits: same bytes, different string
        "",
        None,
        list(_SIG),
    ],
)
def test_bad_signature_encoding(value: object) -> None:
    assert _reason(_record(verificationSignature=value)) == "bad_signature_encoding"


def test_non_canonical_signature_decodes_to_the_same_bytes() -> None:
    # Guard that the case above is really about canonical form, not a different signature.
    tweaked = SIG_B64[:-3] + "h=="
    assert base64.b64decode(tweaked) == _SIG


@pytest.mark.parametrize(
    "value", ["2026-11-22", "2026-11-22T09:57:49", "2026-11-22t09:57:49Z", "yesterday", 1700000000, None]
)
def test_bad_created_at(value: object) -> None:
    assert _reason(_record(createdAt=value)) == "bad_created_at"


def test_extra_fields_are_ignored() -> None:
    assert validate_xmtp_inbox(_record(env="production"), "self").inbox_id == INBOX_ID


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=100) | st.binary(max_size=70),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(["$type", "id", "verificationSignature", "createdAt", "other"]),
        _json | st.sampled_from([INBOX_ID, SIG_B64, "org.xmtp.inbox", "2026-11-22T09:57:49Z"]),
    ),
    st.sampled_from(["self", "other"]) | st.text(max_size=5),
)
def test_arbitrary_records_only_raise_record_error(record: dict[str, Any], rkey: str) -> None:
    try:
        inbox = validate_xmtp_inbox(record, rkey)
    except RecordError as exc:
        assert exc.reason in {
            "bad_rkey",
            "bad_type",
            "bad_inbox_id",
            "bad_signature_encoding",
            "bad_created_at",
            "missing_field",
        }
    else:
        assert len(inbox.signature_bytes) == 64 and rkey == "self"
