"""Webhook signatures: ImageKit's official test vector and both schemes."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from imagekit_bgremove.signatures import (
    SignatureMalformed,
    SignatureMismatch,
    SignatureMissing,
    SignatureStale,
    has_signature,
    sign_legacy,
    sign_standard,
    signature_headers,
    verify,
    verify_callback,
)

# The official test vector (ImageKit's Node SDK tests), exactly as in the contract.
SECRET = "whsec_xeO2UNkfKMQnfJf7Q/Qx+fYptL1wabXd"
T = 1655788406333
SIGNATURE = "d30758f47fcb31e1fa0109d3b3e2a6c623e699aaf1461cba6bd462ef58ea4b31"
HEADER = f"t={T},v1={SIGNATURE}"
BODY = (
    b'{"type":"video.transformation.accepted","id":"58e6d24d-6098-4319-be8d-40c3cb0a402d",'
    b'"created_at":"2022-06-20T11:59:58.461Z","request":{"x_request_id":'
    b'"fa98fa2e-d6cd-45b4-acf5-bc1d2bbb8ba9","url":'
    b'"http://ik.imagekit.io/demo/sample-video.mp4?tr=f-webm,q-10","user_agent":'
    b'"Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:101.0) Gecko/20100101 Firefox/101.0"},'
    b'"data":{"asset":{"url":"http://ik.imagekit.io/demo/sample-video.mp4"},"transformation":'
    b'{"type":"video-transformation","options":{"video_codec":"vp9","audio_codec":"opus",'
    b'"auto_rotate":true,"quality":10,"format":"webm"}}}}'
)
NOW = T / 1000


def test_vector_body_is_intact():
    # Guard against the vector being mangled: one line, no trailing newline, the known digest.
    assert b"\n" not in BODY and len(BODY) == 578
    key = SECRET.encode()  # the raw whsec_ string is the key, not its base64 decoding
    assert hmac.new(key, f"{T}.".encode() + BODY, hashlib.sha256).hexdigest() == SIGNATURE


def test_official_vector_verifies():
    result = verify(BODY, {"x-ik-signature": HEADER}, [SECRET], now=NOW)
    assert result.scheme == "legacy"
    assert result.timestamp == pytest.approx(NOW)
    assert sign_legacy(BODY, SECRET, T) == HEADER


def test_official_vector_with_callable_now():
    assert verify(BODY, {"x-ik-signature": HEADER}, [SECRET], now=lambda: NOW).scheme == "legacy"


@pytest.mark.parametrize(
    ("body", "header", "secret"),
    [
        (BODY.replace(b'quality":10', b'quality":11'), HEADER, SECRET),  # altered body
        (BODY + b"\n", HEADER, SECRET),  # a trailing newline changes the body
        (BODY, f"t={T + 1},v1={SIGNATURE}", SECRET),  # t + 1
        (BODY, HEADER, "whsec_xeO2UNkfKMQnfJf7Q/Qx+fYptL1wabXe"),  # another secret
        (BODY, HEADER, "xeO2UNkfKMQnfJf7Q/Qx+fYptL1wabXd"),  # the secret without its prefix
        (BODY, f"t={T},v1={'0' * 64}", SECRET),
    ],
)
def test_official_vector_changes_fail(body, header, secret):
    with pytest.raises(SignatureMismatch) as info:
        verify(body, {"x-ik-signature": header}, [secret], now=NOW)
    assert info.value.reason == "mismatch"


def test_uppercase_hex_signature_is_accepted():
    header = f"t={T},v1={SIGNATURE.upper()}"
    assert verify(BODY, {"x-ik-signature": header}, [SECRET], now=NOW).scheme == "legacy"


@pytest.mark.parametrize("offset", [301, -301, 3600])
def test_stale_legacy_timestamp(offset):
    with pytest.raises(SignatureStale) as info:
        verify(BODY, {"x-ik-signature": HEADER}, [SECRET], now=NOW + offset)
    assert info.value.reason == "stale"


def test_tolerance_boundary_and_custom_tolerance():
    assert verify(BODY, {"x-ik-signature": HEADER}, [SECRET], now=NOW + 299)
    with pytest.raises(SignatureStale):
        verify(BODY, {"x-ik-signature": HEADER}, [SECRET], now=NOW + 60, tolerance=30)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"v1={SIGNATURE}",  # no timestamp
        f"t={T}",  # no signature
        f"t=abc,v1={SIGNATURE}",
        f"t=-{T},v1={SIGNATURE}",
        f"t=²,v1={SIGNATURE}",  # a Unicode digit int() refuses
        f"t={'9' * 5000},v1={SIGNATURE}",  # longer than int() accepts
        f"t={'9' * 400},v1={SIGNATURE}",  # too large for a float
        f"t={T};v1={SIGNATURE}",
    ],
)
def test_malformed_legacy_headers(header):
    with pytest.raises(SignatureMalformed) as info:
        verify(BODY, {"x-ik-signature": header}, [SECRET], now=NOW)
    assert info.value.reason == "malformed"


def test_non_ascii_signature_is_a_mismatch_not_a_crash():
    with pytest.raises(SignatureMismatch):
        verify(BODY, {"x-ik-signature": f"t={T},v1=é{SIGNATURE[1:]}"}, [SECRET], now=NOW)


def test_no_signature_headers():
    assert not has_signature({"content-type": "application/json"})
    with pytest.raises(SignatureMissing) as info:
        verify(BODY, {"content-type": "application/json"}, [SECRET], now=NOW)
    assert info.value.reason == "missing"


def test_no_secret_configured():
    with pytest.raises(SignatureMismatch):
        verify(BODY, {"x-ik-signature": HEADER}, [], now=NOW)


# --- Standard Webhooks -------------------------------------------------------------------------

NOW_S = 1_700_000_000
WEBHOOK_ID = "msg_2abc"


def standard_headers(
    body: bytes = BODY, secret: str = SECRET, *, ts: int = NOW_S
) -> dict[str, str]:
    return {
        "webhook-id": WEBHOOK_ID,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign_standard(body, secret, WEBHOOK_ID, ts),
    }


def test_standard_round_trip():
    headers = standard_headers()
    signed = f"{WEBHOOK_ID}.{NOW_S}.".encode() + BODY
    expected = base64.b64encode(hmac.new(SECRET.encode(), signed, hashlib.sha256).digest())
    assert headers["webhook-signature"] == "v1," + expected.decode()
    result = verify(BODY, headers, [SECRET], now=NOW_S)
    assert (result.scheme, result.timestamp, result.webhook_id) == ("standard", NOW_S, WEBHOOK_ID)


@pytest.mark.parametrize(
    "change",
    [
        {"body": BODY + b" "},
        {"webhook-id": "msg_other"},
        {"webhook-timestamp": str(NOW_S + 1)},
        {"secret": "whsec_another"},
    ],
)
def test_standard_changes_fail(change):
    headers = standard_headers()
    body = change.pop("body", BODY)
    secret = change.pop("secret", SECRET)
    headers.update(change)
    with pytest.raises(SignatureMismatch):
        verify(body, headers, [secret], now=NOW_S)


def test_standard_stale():
    with pytest.raises(SignatureStale):
        verify(BODY, standard_headers(ts=NOW_S - 1000), [SECRET], now=NOW_S)


@pytest.mark.parametrize(
    "change",
    [
        {"webhook-id": ""},
        {"webhook-timestamp": "soon"},
        {"webhook-timestamp": "1700000000.5"},
        {"webhook-timestamp": "٣"},  # Arabic-Indic digit
        {"webhook-timestamp": "9" * 5000},
        {"webhook-signature": "v1"},  # no comma
        {"webhook-signature": "v2,abc"},  # no v1 entry
    ],
)
def test_standard_malformed(change):
    headers = standard_headers()
    headers.update(change)
    if not headers["webhook-id"]:
        del headers["webhook-id"]
    with pytest.raises(SignatureMalformed):
        verify(BODY, headers, [SECRET], now=NOW_S)


def test_several_space_separated_signatures():
    headers = standard_headers()
    good = headers["webhook-signature"]
    headers["webhook-signature"] = f"v1,bm90LXRoaXM= v1a,ignored {good}"
    assert verify(BODY, headers, [SECRET], now=NOW_S).scheme == "standard"
    headers["webhook-signature"] = "v1,bm90LXRoaXM= v1,YWxzby1ub3Q="
    with pytest.raises(SignatureMismatch):
        verify(BODY, headers, [SECRET], now=NOW_S)
    headers["webhook-signature"] = "v1,é"
    with pytest.raises(SignatureMismatch):
        verify(BODY, headers, [SECRET], now=NOW_S)


def test_rotation_two_secrets():
    old, new = "whsec_old_secret", "whsec_new_secret"
    # Signed with either secret: verifies while both are configured, in any order.
    for signer in (old, new):
        legacy = {"x-ik-signature": sign_legacy(BODY, signer, T)}
        assert verify(BODY, legacy, [old, new], now=NOW).scheme == "legacy"
        assert verify(BODY, legacy, [new, old], now=NOW).scheme == "legacy"
        standard = standard_headers(secret=signer)
        assert verify(BODY, standard, [new, old], now=NOW_S).scheme == "standard"
    # Once the old secret is retired, its signatures fail.
    with pytest.raises(SignatureMismatch):
        verify(BODY, {"x-ik-signature": sign_legacy(BODY, old, T)}, [new], now=NOW)
    # A sender signing with both secrets at once (as during rotation) passes either check.
    both = signature_headers(BODY, [old, new], now=NOW_S, webhook_id=WEBHOOK_ID)
    assert both["x-ik-signature"].count("v1=") == 2
    assert len(both["webhook-signature"].split()) == 2
    assert verify(BODY, both, [new], now=NOW_S).scheme == "standard"
    only_legacy = {"x-ik-signature": both["x-ik-signature"]}
    assert verify(BODY, only_legacy, [old], now=NOW_S).scheme == "legacy"


def test_header_names_are_case_insensitive():
    upper = {"X-IK-Signature": HEADER}
    assert has_signature(upper)
    assert verify(BODY, upper, [SECRET], now=NOW).scheme == "legacy"
    mixed = {k.upper(): v for k, v in standard_headers().items()}
    assert verify(BODY, mixed, [SECRET], now=NOW_S).scheme == "standard"


def test_signature_headers_helper_round_trips_both_schemes():
    headers = signature_headers(BODY, SECRET, now=NOW_S)
    assert headers["webhook-id"].startswith("msg_")
    assert verify(BODY, headers, [SECRET], now=NOW_S).scheme == "standard"
    legacy = {"x-ik-signature": headers["x-ik-signature"]}
    assert verify(BODY, legacy, [SECRET], now=NOW_S).scheme == "legacy"


def test_one_good_scheme_is_enough_and_failures_prefer_standard():
    headers = standard_headers()
    headers["x-ik-signature"] = HEADER  # legacy valid at NOW
    headers["webhook-signature"] = "v1,bm9wZQ=="  # standard wrong
    assert verify(BODY, headers, [SECRET], now=NOW).scheme == "legacy"
    headers["x-ik-signature"] = f"t={T},v1={'0' * 64}"
    headers["webhook-timestamp"] = str(int(NOW))
    with pytest.raises(SignatureMismatch) as info:
        verify(BODY, headers, [SECRET], now=NOW)
    assert "webhook-signature" in str(info.value)


def test_django_request_headers_work(rf):
    request = rf.post(
        "/hook", data=BODY, content_type="application/json", headers={"X-IK-Signature": HEADER}
    )
    assert verify(request.body, request.headers, [SECRET], now=NOW).scheme == "legacy"


def test_callback_policy_checks_what_it_can_and_what_is_required():
    signed = {"x-ik-signature": HEADER}
    # Unsigned callbacks are normal for ImageKit: accepted unchecked unless signatures are required.
    assert verify_callback(BODY, {}, [SECRET], required=False, now=NOW) is None
    with pytest.raises(SignatureMissing):
        verify_callback(BODY, {}, [SECRET], required=True, now=NOW)
    # Signed, but no secret to check it with: nothing checked (the token still authenticates).
    assert verify_callback(BODY, signed, [], required=False, now=NOW) is None
    # Signed and a secret held: checked, whether required or not.
    assert verify_callback(BODY, signed, [SECRET], required=False, now=NOW).scheme == "legacy"
    with pytest.raises(SignatureMismatch):
        verify_callback(BODY + b" ", signed, [SECRET], required=False, now=NOW)
