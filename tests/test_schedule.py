import pytest

from nestgen.decoding.cache_policy import parse_cache_policy
from nestgen.decoding.schedule import PRESETS, parse_schedule, presets_for, resolve_schedule


def test_parse_compact_schedule():
    s = parse_schedule("8x3,4x3,2x3,1x3", [1, 2, 4, 8], 12)
    assert s.segments == ((8, 3), (4, 3), (2, 3), (1, 3))
    assert s.factors() == [8] * 3 + [4] * 3 + [2] * 3 + [1] * 3
    assert str(s) == "8x3,4x3,2x3,1x3"
    assert parse_schedule(" 2x3 , 2X3 ").segments == ((2, 6),)


@pytest.mark.parametrize("text, msg", [
    ("", "schedule is empty"),
    ("8x3,,1x3", "is not of the form"),
    ("8by3", "is not of the form"),
    ("0x3", "must be >= 1"),
    ("8x0", "must be >= 1"),
    ("3x12", "uses nest factor 3"),
    ("8x3,1x3", "has 6 steps but 12"),
])
def test_malformed_schedules_are_clear_errors(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_schedule(text, [1, 2, 4, 8], 12)


def test_presets():
    assert str(resolve_schedule("baseline")) == "1x12"
    assert str(resolve_schedule("magnets", [1, 2, 4, 8], 12)) == "8x3,4x3,2x3,1x3"
    with pytest.raises(ValueError, match="unknown schedule preset 'turbo'"):
        resolve_schedule("turbo")
    assert set(presets_for([1, 2])) == {"baseline", "magnets-2"}
    assert set(presets_for([1, 2, 4, 8])) == set(PRESETS)


def test_cache_policy_refresh_steps():
    f = [8, 8, 8, 4, 4, 4, 1, 1, 1, 1]
    assert parse_cache_policy("none").refresh_steps(f) == [True] * 10
    on_switch = [True, False, False, True, False, False, True, False, False, False]
    assert parse_cache_policy("on_switch").refresh_steps(f) == on_switch
    assert parse_cache_policy("never_within_size").refresh_steps(f) == on_switch
    assert parse_cache_policy("every:2").refresh_steps(f) == [
        True, False, True, True, False, True, True, False, True, False]
    assert parse_cache_policy("every:1").refresh_steps(f) == [True] * 10
    # `+cls` changes what a cached step recomputes, not when the cache is refreshed
    assert parse_cache_policy("on_switch+cls").refresh_steps(f) == on_switch
    for text in ("on_switch+cls", "every:3+cls", "on_switch", "every:3", "none"):
        assert str(parse_cache_policy(text)) == text
    assert parse_cache_policy("never_within_size+cls") == parse_cache_policy("on_switch+cls")
    assert not parse_cache_policy("every:2").fresh_context and parse_cache_policy("every:2+cls").fresh_context
    for bad in ("every:0", "every:x", "always", "", "none+cls", "+cls", "on_switch+cls+cls", "every:0+cls"):
        with pytest.raises(ValueError, match="unknown cache policy"):
            parse_cache_policy(bad)
