"""sinkattn.settings: read from the environment once, replaced whole by override()."""

import pytest

from sinkattn import settings


def test_environment_is_parsed():
    got = settings.from_environment({"SINKATTN_ROUTE": "masked", "SINKATTN_AUTOTUNE": "0",
                                     "SINKATTN_ALLOW_TF32": "1", "TRITON_INTERPRET": "1",
                                     "SINKATTN_SHORT_KEYS": "0", "SINKATTN_HOPPER_FORWARD": "0"})
    assert (got.route, got.autotune, got.allow_tf32, got.interpret, got.short_keys, got.hopper_forward) == (
        "masked", False, True, True, 0, False)
    default = settings.from_environment({})
    assert (default.route, default.autotune, default.allow_tf32, default.interpret, default.hopper_forward) == (
        "correction", True, False, False, True)


def test_override_replaces_the_object_and_restores_it():
    before = settings.current()
    with settings.override(route="masked", flagged_max_split_tiles=0) as inside:
        assert settings.current() is inside and inside is not before
        assert (inside.route, inside.flagged_max_split_tiles) == ("masked", 0)
        assert inside.autotune == before.autotune
    assert settings.current() is before


def test_override_restores_on_exception():
    before = settings.current()
    with pytest.raises(KeyError):
        with settings.override(route="masked"):
            raise KeyError
    assert settings.current() is before


def test_settings_hash_by_identity():
    """Launch parameters are cached per settings object: two equal-looking objects are two keys."""
    a, b = settings.Settings(), settings.Settings()
    assert len({a, b}) == 2


@pytest.mark.parametrize("fields, message", [
    (dict(route="fast"), "route must be one of"),
    (dict(short_keys=512), "short_keys must be <= 256"),
    (dict(flagged_key_splits=0), "flagged_key_splits must be an int >= 1"),
    (dict(flagged_max_split_tiles=-1), "flagged_max_split_tiles must be an int >= 0"),
])
def test_bad_fields_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        settings.Settings(**fields)
