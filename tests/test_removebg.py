"""What the app knows about remove-bg: every validation rule of RemoveBgOptions, the request
item, its status in an answer and which version of a file is its result."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError
from django.http import QueryDict

from imagekit_bgremove.callback import RemoteFile
from imagekit_bgremove.removebg import (
    MAX_URL_LENGTH,
    NON_FIELD,
    OptionsError,
    RemoveBgOptions,
    extension_status,
    is_result,
)


def errors_of(data, **kwargs) -> dict[str, list[str]]:
    with pytest.raises(OptionsError) as info:
        RemoveBgOptions.from_dict(data, **kwargs)
    return info.value.errors


def test_defaults_are_remove_bg_defaults():
    options = RemoveBgOptions.from_dict(None)
    assert options == RemoveBgOptions() == RemoveBgOptions.from_dict({})
    assert options.add_shadow is False and options.semitransparency is True
    assert options.bg_color is None and options.bg_image_url is None
    assert options.explicit() == {}
    assert str(options) == "defaults"


def test_unknown_keys_are_listed_with_the_allowed_ones():
    errors = errors_of({"shadow": True, "bg_colour": "fff", "add_shadow": True})
    assert list(errors) == [NON_FIELD]
    (message,) = errors[NON_FIELD]
    assert "Unknown options 'bg_colour', 'shadow'" in message
    assert "allowed: add_shadow, bg_color, bg_image_url, semitransparency" in message
    (single,) = errors_of({"size": "auto"})[NON_FIELD]
    assert single.startswith("Unknown option 'size';")


@pytest.mark.parametrize("value", [1, 0, "true", "false", "on", None, [], "1"])
@pytest.mark.parametrize("name", ["add_shadow", "semitransparency"])
def test_booleans_are_strict_in_dicts(name, value):
    errors = errors_of({name: value})
    assert list(errors) == [name]
    assert errors[name] == [f"{name} must be true or false, not {value!r}."]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("on", True), ("true", True), ("True", True), ("1", True), ("yes", True), (" on ", True),
        ("off", False), ("false", False), ("0", False), ("no", False), ("", False), (True, True),
        (False, False),
    ],
)  # fmt: skip
def test_form_strings_are_accepted_with_from_form(value, expected):
    options = RemoveBgOptions.from_form({"add_shadow": value, "semitransparency": value})
    assert options.add_shadow is expected and options.semitransparency is expected


def test_from_form_rejects_nonsense_and_ignores_other_fields():
    with pytest.raises(OptionsError) as info:
        RemoveBgOptions.from_form({"add_shadow": "maybe"})
    assert list(info.value.errors) == ["add_shadow"]
    data = QueryDict("title=Cat&csrfmiddlewaretoken=x&opt-add_shadow=on&opt-bg_color=%23ABC")
    options = RemoveBgOptions.from_form(data, prefix="opt-")
    assert options == RemoveBgOptions(add_shadow=True, bg_color="abc")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("fff", "fff"), ("#fff", "fff"), ("FfF", "fff"), ("#ABCD", "abcd"), ("81d4fa", "81d4fa"),
        ("#81D4FA", "81d4fa"), ("81d4fa80", "81d4fa80"), ("#81D4FA80", "81d4fa80"),
        (" #abc ", "abc"), ("bad", "bad"), ("green", "green"), ("Green", "green"),
        ("REBECCAPURPLE", "rebeccapurple"), ("", None), (None, None),
    ],
)  # fmt: skip
def test_colours_are_normalised(value, expected):
    assert RemoveBgOptions.from_dict({"bg_color": value}).bg_color == expected


@pytest.mark.parametrize(
    "value", ["ff", "#ff", "fffff", "#1234567", "123456789", "ggg", "#gggggg", "notacolour",
              "##fff", "rgb(0,0,0)", 0xFFF, ["fff"], True]
)  # fmt: skip
def test_bad_colours_are_refused(value):
    errors = errors_of({"bg_color": value})
    assert list(errors) == ["bg_color"]
    assert errors["bg_color"][0].startswith("bg_color must be a hex colour")


@pytest.mark.parametrize(
    "value",
    ["https://example.com/bg.png", "http://example.com/a/b.jpg?x=1&y=2", " https://cdn.example/x "],
)
def test_image_urls_accepted(value):
    assert RemoveBgOptions.from_dict({"bg_image_url": value}).bg_image_url == value.strip()


@pytest.mark.parametrize(
    "value",
    [
        "ftp://example.com/bg.png",
        "/relative/bg.png",
        "example.com/bg.png",
        "javascript:alert(1)",
        "data:image/png;base64,AAAA",
        "https://",
        "http://[::1",
        "https://exa mple.com/bg.png",
        "https://example.com/a b.png",
        42,
    ],
)
def test_image_urls_refused(value):
    errors = errors_of({"bg_image_url": value})
    assert list(errors) == ["bg_image_url"]
    assert errors["bg_image_url"][0].startswith("bg_image_url ")


def test_image_url_length_cap():
    base = "https://example.com/"
    at_limit = base + "a" * (MAX_URL_LENGTH - len(base))
    assert RemoveBgOptions.from_dict({"bg_image_url": at_limit}).bg_image_url == at_limit
    errors = errors_of({"bg_image_url": at_limit + "a"})
    assert errors["bg_image_url"] == [
        f"bg_image_url is {MAX_URL_LENGTH + 1} characters long; the limit is {MAX_URL_LENGTH}."
    ]


def test_colour_and_image_together_is_an_error():
    errors = errors_of({"bg_color": "fff", "bg_image_url": "https://example.com/bg.png"})
    assert errors == {NON_FIELD: ["bg_color and bg_image_url cannot both be set; choose one."]}


def test_several_errors_are_reported_together():
    errors = errors_of({"add_shadow": "yes", "bg_color": "nope", "bg_image_url": "ftp://x/y"})
    assert set(errors) == {"add_shadow", "bg_color", "bg_image_url"}


def test_base_and_override_precedence():
    base = RemoveBgOptions(add_shadow=True, bg_color="fff")
    # Keys given override the base; the rest is kept.
    assert RemoveBgOptions.from_dict({"semitransparency": False}, base=base) == RemoveBgOptions(
        add_shadow=True, semitransparency=False, bg_color="fff"
    )
    assert RemoveBgOptions.from_dict({"add_shadow": False}, base=base).add_shadow is False
    # Choosing an image replaces the base's colour (and vice versa) instead of conflicting.
    with_image = RemoveBgOptions.from_dict({"bg_image_url": "https://example.com/b.png"}, base=base)
    assert with_image.bg_color is None and with_image.bg_image_url == "https://example.com/b.png"
    back = RemoveBgOptions.from_dict({"bg_color": "green"}, base=with_image)
    assert back.bg_color == "green" and back.bg_image_url is None
    # Clearing the colour explicitly.
    assert RemoveBgOptions.from_dict({"bg_color": ""}, base=base).bg_color is None
    # Both in the same override is still an error, base or not.
    assert NON_FIELD in errors_of(
        {"bg_color": "000", "bg_image_url": "https://example.com/b.png"}, base=base
    )
    # replace() and coerce() go through the same rules.
    assert base.replace(bg_color="#000").bg_color == "000"
    assert base.replace() is base
    assert RemoveBgOptions.coerce({"add_shadow": False}, base=base).add_shadow is False
    assert RemoveBgOptions.coerce('{"bg_color": "red"}', base=base).bg_color == "red"
    assert RemoveBgOptions.coerce(None, base=base) == base
    assert RemoveBgOptions.coerce(base) is base


def test_to_extension_exact():
    assert RemoveBgOptions().to_extension() == {
        "name": "remove-bg",
        "options": {"add_shadow": False, "semitransparency": True},
    }
    assert RemoveBgOptions(
        add_shadow=True, semitransparency=False, bg_color="81d4fa"
    ).to_extension() == {
        "name": "remove-bg",
        "options": {"add_shadow": True, "semitransparency": False, "bg_color": "81d4fa"},
    }
    assert RemoveBgOptions(bg_image_url="https://example.com/bg.png").to_extension() == {
        "name": "remove-bg",
        "options": {
            "add_shadow": False,
            "semitransparency": True,
            "bg_image_url": "https://example.com/bg.png",
        },
    }


def test_cache_key_is_stable():
    a = RemoveBgOptions.from_dict({"bg_color": "#FFF", "add_shadow": True})
    b = RemoveBgOptions.from_dict({"add_shadow": True, "bg_color": "fff"})
    assert a.cache_key() == b.cache_key()
    assert a.cache_key() == (
        '{"add_shadow":true,"bg_color":"fff","bg_image_url":null,"semitransparency":true}'
    )
    assert RemoveBgOptions().cache_key() != a.cache_key()
    assert RemoveBgOptions(semitransparency=False).cache_key() != RemoveBgOptions().cache_key()
    assert hash(a) == hash(b)


def test_to_dict_explicit_and_str():
    options = RemoveBgOptions(add_shadow=True, bg_color="fff")
    assert options.to_dict() == {
        "add_shadow": True,
        "semitransparency": True,
        "bg_color": "fff",
        "bg_image_url": None,
    }
    assert options.explicit() == {"add_shadow": True, "bg_color": "fff"}
    assert str(options) == "add shadow, bg_color=fff"
    assert RemoveBgOptions.from_dict(options.to_dict()) == options


def test_from_json():
    assert RemoveBgOptions.from_json('{"add_shadow": true}') == RemoveBgOptions(add_shadow=True)
    assert RemoveBgOptions.from_json(b'{"bg_color": "#000"}').bg_color == "000"
    assert RemoveBgOptions.from_json("") == RemoveBgOptions()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('"string"', "must be a JSON object"),
        ("null", "must be a JSON object"),
        ('{"add_shadow": "true"}', "must be true or false"),
        ('{"add_shadow": 1}', "must be true or false"),
        ('{"nope": 1}', "Unknown option 'nope'"),
    ],
)
def test_from_json_errors(text, fragment):
    with pytest.raises(OptionsError) as info:
        RemoveBgOptions.from_json(text)
    assert fragment in " ".join(m for ms in info.value.errors.values() for m in ms)
    assert isinstance(info.value, ValueError)


def test_as_validation_error_field_keys():
    with pytest.raises(OptionsError) as info:
        RemoveBgOptions.from_dict({"add_shadow": "x", "bg_color": "nope", "nope": 1})
    error = info.value.as_validation_error()
    assert isinstance(error, ValidationError)
    assert set(error.message_dict) == {NON_FIELD, "add_shadow", "bg_color"}
    assert error.message_dict["add_shadow"] == ["add_shadow must be true or false, not 'x'."]
    assert {e.code for errors in error.error_dict.values() for e in errors} == {"invalid"}


def test_errors_round_trip_as_json():
    with pytest.raises(OptionsError) as info:
        RemoveBgOptions.from_dict({"bg_color": "nope"})
    assert json.loads(json.dumps(info.value.errors)) == info.value.errors


def test_extension_status_reads_remove_bg_only():
    assert extension_status({"extensionStatus": {"remove-bg": "FAILED"}}) == "failed"
    assert extension_status({"extensionStatus": {"remove-bg": "success"}}) == "success"
    assert extension_status({"extensionStatus": {"google-auto-tagging": "failed"}}) == "pending"
    assert extension_status({"extensionStatus": {"remove-bg": 1}}) == "pending"
    assert extension_status({"extensionStatus": "failed"}) == "pending"
    assert extension_status({}) == "pending"


def _version(version_id: str, size: int | None = 50) -> RemoteFile:
    return RemoteFile(file_id="f1", version_id=version_id, url="https://ik.test/a.png", size=size)


def test_result_is_a_new_version_other_than_the_original_uploaded_again():
    assert is_result(_version("v2"), "v1", 100)
    assert is_result(_version("v2"), "v1", None)
    assert not is_result(_version("v1"), "v1", 100)  # still the version sent
    assert not is_result(_version(""), "v1", 100)
    assert not is_result(_version("v2", size=100), "v1", 100)  # the original uploaded again
    assert is_result(_version("v2", size=None), "v1", 100)
