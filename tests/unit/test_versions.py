"""Release versions are semantic versions, ordered by semver precedence (the `semver`
library); anything else is refused with a message, never ordered some other way."""

import pytest

from rollwise import domain as d
from rollwise.errors import RollwiseError


def test_versions_sort_by_semantic_precedence_not_as_text():
    given = [
        "1.10.0",
        "1.9.0",
        "1.9.0-rc.10",
        "1.9.0-rc.2",
        "1.9.0-alpha",
        "1.9.0-rc.2.1",
        "0.9.12",
        "2.0.0-beta.1",
    ]

    got = sorted(given, key=d.parse_version)

    assert got == [
        "0.9.12",
        "1.9.0-alpha",
        "1.9.0-rc.2",
        "1.9.0-rc.2.1",
        "1.9.0-rc.10",
        "1.9.0",
        "1.10.0",
        "2.0.0-beta.1",
    ]


@pytest.mark.parametrize(
    ("version", "than", "newer"),
    [
        ("1.10.0", "1.9.0", True),
        ("1.9.0", "1.10.0", False),
        ("1.0.0", "1.0.0-rc.1", True),  # the release comes after its release candidates
        ("1.0.0-rc.1", "1.0.0", False),
        ("1.0.0-rc.10", "1.0.0-rc.9", True),
        ("1.0.0+build.7", "1.0.0+build.6", False),  # build metadata has no precedence
    ],
)
def test_given_releases_never_deployed_here_then_is_newer_follows_semver(version, than, newer):
    assert d.is_newer(version, than, []) is newer


def test_given_both_went_live_then_the_order_they_went_live_decides_not_the_number():
    assert d.is_newer("1.0.1", "1.1.0", ["1.1.0", "1.0.1"])  # a hotfix deployed after


def test_given_a_pre_release_never_deployed_when_rolling_back_to_it_then_refused_as_newer():
    choice = d.rollback_target("1.0.0-rc.2", ["1.0.0-rc.1", "1.0.0-rc.2"], set(), set(), "1.0.0")
    assert (choice.version, choice.why) == (None, d.NEWER_THAN_LIVE)


@pytest.mark.parametrize("text", ["latest", "1.2", "1.2.3.4", "01.2.3", "2024-05-01", ""])
def test_given_a_version_that_is_not_semantic_then_a_clear_error(text):
    with pytest.raises(RollwiseError) as e:
        d.is_newer("1.0.0", text, [])
    assert (e.value.message, e.value.hint) == (
        f"{text!r} is not a semantic version",
        "use MAJOR.MINOR.PATCH, for example 1.2.3 or 1.2.3-rc.1",
    )


def test_a_release_is_stored_under_its_version_without_the_v():
    assert [d.check_version(v) for v in ("v1.2.3", "1.2.3-rc.1+b.5")] == ["1.2.3", "1.2.3-rc.1+b.5"]
    with pytest.raises(RollwiseError, match=r"'v1\.2' is not a semantic version"):
        d.check_version("v1.2")
