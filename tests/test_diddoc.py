import json
from pathlib import Path
from typing import Any

import coincurve
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from atmx.indexer.identity.diddoc import (
    MLS_SERVICE_TYPE,
    DidDocError,
    DidInfo,
    mls_delivery_endpoint,
    parse_did_document,
)

FIXTURES = Path(__file__).parent / "fixtures"
DID_DOCS: dict[str, dict[str, Any]] = json.loads((FIXTURES / "devnet-frames" / "did-docs.json").read_text())
PLC_ALICE = json.loads((FIXTURES / "devnet-frames" / "plc-alice.json").read_text())
SIGNATURE_FIXTURES = json.loads((FIXTURES / "interop" / "crypto" / "signature-fixtures.json").read_text())
K256_DIDKEYS = json.loads((FIXTURES / "interop" / "crypto" / "w3c_didkey_K256.json").read_text())

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"


def b58(data: bytes) -> str:
    # Independent of the module's encoder, so the tests check it rather than mirror it.
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = ALPHABET[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def doc_with_key(did: str, key_type: str, multibase: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": did,
        "alsoKnownAs": ["at://Someone.Example.com"],
        "verificationMethod": [
            {"id": f"{did}#atproto", "type": key_type, "controller": did, "publicKeyMultibase": multibase}
        ],
        "service": [
            {
                "id": "#atproto_pds",
                "type": "AtprotoPersonalDataServer",
                "serviceEndpoint": "https://pds.example.com",
            }
        ],
        **extra,
    }


def k256_key(seed: int) -> coincurve.PrivateKey:
    return coincurve.PrivateKey(seed.to_bytes(32, "big"))


def p256_key(seed: int) -> ec.EllipticCurvePublicKey:
    return ec.derive_private_key(seed, ec.SECP256R1()).public_key()


@pytest.mark.parametrize("did", sorted(DID_DOCS))
def test_reference_plc_documents(did: str) -> None:
    info = parse_did_document(did, DID_DOCS[did])
    assert info.did == did
    assert info.pds == "http://localhost:2583"
    assert info.handle is not None and info.handle.endswith(".test")
    assert info.signing_key is not None and info.signing_key.startswith("did:key:zQ3s")


def test_legacy_k256_key_equals_plc_data_did_key() -> None:
    doc = PLC_ALICE["GET /<did>"]
    expected = PLC_ALICE["GET /<did>/data"]["verificationMethods"]["atproto"]
    info = parse_did_document(doc["id"], doc)
    assert info == DidInfo(doc["id"], expected, "http://localhost:2583", "alice-renamed.test")


@pytest.mark.parametrize("fixture", SIGNATURE_FIXTURES, ids=lambda f: f["comment"])
def test_legacy_compressed_keys_from_interop_vectors(fixture: dict[str, Any]) -> None:
    doc = doc_with_key(DID, fixture["didDocSuite"], fixture["publicKeyMultibase"])
    assert parse_did_document(DID, doc).signing_key == fixture["publicKeyDid"]


@pytest.mark.parametrize("vector", K256_DIDKEYS[:3])
def test_k256_uncompressed_legacy_and_multikey_agree(vector: dict[str, str]) -> None:
    pub = coincurve.PrivateKey(bytes.fromhex(vector["privateKeyBytesHex"])).public_key
    legacy = doc_with_key(DID, "EcdsaSecp256k1VerificationKey2019", "z" + b58(pub.format(compressed=False)))
    multikey = doc_with_key(DID, "Multikey", "z" + b58(b"\xe7\x01" + pub.format(compressed=True)))
    assert parse_did_document(DID, legacy).signing_key == vector["publicDidKey"]
    assert parse_did_document(DID, multikey).signing_key == vector["publicDidKey"]


def test_p256_legacy_uncompressed_and_multikey() -> None:
    pub = p256_key(123456789)
    compressed = pub.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    uncompressed = pub.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    expected = "did:key:z" + b58(b"\x80\x24" + compressed)
    assert expected.startswith("did:key:zDnae")
    legacy = doc_with_key(DID, "EcdsaSecp256r1VerificationKey2019", "z" + b58(uncompressed))
    assert parse_did_document(DID, legacy).signing_key == expected
    multikey = doc_with_key(DID, "Multikey", expected.removeprefix("did:key:"))
    assert parse_did_document(DID, multikey).signing_key == expected


def test_odd_and_even_y_both_compress_correctly() -> None:
    parities = set()
    for seed in range(1, 12):
        pub = k256_key(seed).public_key
        doc = doc_with_key(DID, "EcdsaSecp256k1VerificationKey2019", "z" + b58(pub.format(compressed=False)))
        assert parse_did_document(DID, doc).signing_key == "did:key:z" + b58(b"\xe7\x01" + pub.format(compressed=True))
        parities.add(pub.format(compressed=True)[0])
    assert parities == {2, 3}


def test_did_web_document_with_relative_ids_and_extra_entries() -> None:
    did = "did:web:example.com"
    pub = k256_key(7).public_key
    doc = {
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": did,
        "alsoKnownAs": ["https://example.com", "at://bad_handle", "at://Example.COM", "at://second.example"],
        "verificationMethod": [
            {"id": "#other", "type": "Multikey", "publicKeyMultibase": "zgarbage!"},
            {
                "id": "#atproto",
                "type": "Multikey",
                "publicKeyMultibase": "z" + b58(b"\xe7\x01" + pub.format()),
            },
        ],
        "service": [
            {"id": "#bsky_fg", "type": "BskyFeedGenerator", "serviceEndpoint": "https://feed.example.com"},
            {
                "id": f"{did}#atproto_pds",
                "type": "AtprotoPersonalDataServer",
                "serviceEndpoint": "https://pds.ex",
            },
        ],
    }
    info = parse_did_document(did, doc)
    assert info.handle == "example.com"
    assert info.pds == "https://pds.ex"
    assert info.signing_key == "did:key:z" + b58(b"\xe7\x01" + pub.format())


def test_minimal_document_has_no_key_pds_or_handle() -> None:
    assert parse_did_document(DID, {"id": DID}) == DidInfo(DID, None, None, None)


@pytest.mark.parametrize(
    "service",
    [
        {"id": "#atproto_pds", "type": "SomethingElse", "serviceEndpoint": "https://pds.example.com"},
        {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": {"uri": "https://x"}},
        {
            "id": "#atproto_pds",
            "type": "AtprotoPersonalDataServer",
            "serviceEndpoint": "ftp://pds.example.com",
        },
        {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https:///nohost"},
        {
            "id": "did:plc:someoneelse#atproto_pds",
            "type": "AtprotoPersonalDataServer",
            "serviceEndpoint": "https://x",
        },
    ],
)
def test_unusable_pds_service_gives_none(service: dict[str, Any]) -> None:
    assert parse_did_document(DID, {"id": DID, "service": [service]}).pds is None


def test_handle_ignores_invalid_entries_and_lowercases() -> None:
    doc = {"id": DID, "alsoKnownAs": [42, "at://", "at://nodots", "at://-x.com", "at://Alice.Bsky.Social"]}
    assert parse_did_document(DID, doc).handle == "alice.bsky.social"


def test_wrong_id_is_rejected() -> None:
    doc = DID_DOCS["did:plc:nbcjflbg4exvv7izplf43elu"]
    with pytest.raises(DidDocError) as err:
        parse_did_document("did:plc:vxtj3s3k4d4j4skhbkbxu2e2", doc)
    assert err.value.reason == "id_mismatch"


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"id": 5},
        {"id": DID, "verificationMethod": {"id": "#atproto"}},
        {"id": DID, "verificationMethod": ["#atproto"]},
        {"id": DID, "service": "https://pds"},
        {"id": DID, "service": [None]},
        {"id": DID, "alsoKnownAs": "at://x.com"},
    ],
)
def test_malformed_documents(doc: dict[str, Any]) -> None:
    with pytest.raises(DidDocError) as err:
        parse_did_document(DID, doc)
    assert err.value.reason == "bad_document"


def test_non_mapping_document() -> None:
    with pytest.raises(DidDocError) as err:
        not_a_doc: Any = ["not", "a", "doc"]
        parse_did_document(DID, not_a_doc)
    assert err.value.reason == "bad_document"


def _garbage_keys() -> list[tuple[str, Any]]:
    pub = k256_key(3).public_key
    off_curve_x = bytes(32)  # x = 0 is not on secp256k1 (7 is not a square mod p)
    return [
        ("JsonWebKey2020", "z" + b58(b"\xe7\x01" + pub.format())),
        ("Multikey", "z" + b58(b"\xed\x01" + bytes(32))),  # ed25519: not an atproto curve
        ("Multikey", "z" + b58(b"\xe7\x01" + pub.format(compressed=False))),  # Multikey must be compressed
        ("Multikey", "z" + b58(b"\xe7\x01\x02" + off_curve_x)),
        ("Multikey", "m" + "AAAA"),  # base64 multibase is not accepted
        ("Multikey", "z0OIl"),  # characters outside the base58 alphabet
        ("Multikey", None),
        ("Multikey", "z" + "2" * 500),  # oversized
        ("EcdsaSecp256k1VerificationKey2019", "z" + b58(b"\x04" + bytes(64))),
        ("EcdsaSecp256k1VerificationKey2019", "z" + b58(b"\x05" + pub.format()[1:])),
        ("EcdsaSecp256k1VerificationKey2019", "z" + b58(pub.format()[:20])),
        ("EcdsaSecp256r1VerificationKey2019", "z" + b58(b"\x04" + bytes(64))),
        ("EcdsaSecp256r1VerificationKey2019", "z" + b58(b"\x02" + b"\xff" * 32)),  # x >= p
    ]


@pytest.mark.parametrize(("key_type", "multibase"), _garbage_keys())
def test_garbage_keys_are_rejected(key_type: str, multibase: Any) -> None:
    with pytest.raises(DidDocError) as err:
        parse_did_document(DID, doc_with_key(DID, key_type, multibase))
    assert err.value.reason == "bad_key"


def test_key_controlled_by_someone_else_is_rejected() -> None:
    doc = DID_DOCS["did:plc:nbcjflbg4exvv7izplf43elu"]
    method = {**doc["verificationMethod"][0], "controller": "did:plc:vxtj3s3k4d4j4skhbkbxu2e2"}
    with pytest.raises(DidDocError) as err:
        parse_did_document(doc["id"], {**doc, "verificationMethod": [method]})
    assert err.value.reason == "bad_key"


def test_first_atproto_method_wins() -> None:
    good = DID_DOCS["did:plc:nbcjflbg4exvv7izplf43elu"]["verificationMethod"][0]
    doc = {
        "id": DID,
        "verificationMethod": [{"id": "#atproto", "type": "Bogus"}, {**good, "controller": DID}],
    }
    with pytest.raises(DidDocError):
        parse_did_document(DID, doc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=20,
)
doc_like = st.fixed_dictionaries(
    {"id": st.sampled_from([DID, "did:plc:other", 1])},
    optional={
        "verificationMethod": st.lists(
            st.fixed_dictionaries(
                {"id": st.sampled_from(["#atproto", DID + "#atproto", "#x"])},
                optional={
                    "type": st.sampled_from(
                        [
                            "Multikey",
                            "EcdsaSecp256k1VerificationKey2019",
                            "EcdsaSecp256r1VerificationKey2019",
                            3,
                        ]
                    ),
                    "publicKeyMultibase": st.text(alphabet="z" + ALPHABET + "0", max_size=100) | json_values,
                    "controller": st.sampled_from([DID, "did:plc:other"]) | json_values,
                },
            )
            | json_values,
            max_size=3,
        )
        | json_values,
        "service": st.lists(json_values, max_size=3) | json_values,
        "alsoKnownAs": st.lists(st.text(max_size=30) | json_values, max_size=3) | json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(json_values, doc_like))
def test_arbitrary_json_raises_only_diddoc_error(doc: Any) -> None:
    try:
        info = parse_did_document(DID, doc)
    except DidDocError as exc:
        assert exc.reason in {"id_mismatch", "bad_document", "bad_key"}
    else:
        assert info.did == DID
        assert info.signing_key is None or info.signing_key.startswith("did:key:z")


# --- #atproto_mls (Catbird MLS chat) ----------------------------------------------------------

_MLS = {"id": "#atproto_mls", "type": MLS_SERVICE_TYPE, "serviceEndpoint": "https://mls.catbird.blue"}


@pytest.mark.parametrize(
    ("service", "endpoint"),
    [
        (_MLS, "https://mls.catbird.blue"),
        ({**_MLS, "id": DID + "#atproto_mls"}, "https://mls.catbird.blue"),
        ({**_MLS, "serviceEndpoint": "https://mls.example.com:8443/base"}, "https://mls.example.com:8443/base"),
        ({**_MLS, "id": "did:plc:other#atproto_mls"}, None),
        ({**_MLS, "id": "#atproto_pds"}, None),
        ({**_MLS, "type": "AtprotoMlsService"}, None),
        ({**_MLS, "serviceEndpoint": "http://mls.catbird.blue"}, None),
        ({**_MLS, "serviceEndpoint": "did:web:mls.catbird.blue"}, None),
        ({**_MLS, "serviceEndpoint": "https://"}, None),
        ({**_MLS, "serviceEndpoint": "https://mls.catbird.blue/a b"}, None),
        ({**_MLS, "serviceEndpoint": "https://x.example/" + "a" * 3000}, None),
        ({**_MLS, "serviceEndpoint": ["https://mls.catbird.blue"]}, None),
        ("#atproto_mls", None),
        (None, None),
    ],
)
def test_mls_delivery_endpoint(service: Any, endpoint: str | None) -> None:
    assert mls_delivery_endpoint(DID, service) == endpoint


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(["id", "type", "serviceEndpoint", "x"]), st.text(max_size=30) | st.none()))
def test_mls_delivery_endpoint_never_raises(service: dict[str, Any]) -> None:
    endpoint = mls_delivery_endpoint(DID, service)
    assert endpoint is None or endpoint.startswith("https://")
