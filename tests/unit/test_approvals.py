"""The two-person rule as pure decisions over a request and the clock."""

from __future__ import annotations

import pytest

from rollwise import approvals as ap

ASKED = ap.Request(1, "prod", "1.4.0", "ana", created_at=100.0, expires_at=200.0, required=2)


def test_given_two_required_then_two_other_people_approve_it_and_the_last_owns_the_decision():
    once = ap.decide(ASKED, "bo", True, 110.0)
    assert (once.state, once.approvers, once.decided_by) == (ap.PENDING, ("bo",), None)
    twice = ap.decide(once, "cy", True, 120.0)
    assert (twice.state, twice.approvers, twice.decided_by) == (ap.APPROVED, ("bo", "cy"), "cy")
    ap.usable(twice, "prod", "1.4.0", 150.0)  # no error: the deploy may run


def test_the_requester_cannot_approve_and_nobody_counts_twice():
    with pytest.raises(ap.Refused, match="ana asked for this deploy and cannot approve it"):
        ap.decide(ASKED, "ana", True, 110.0)
    with pytest.raises(ap.Refused, match="bo has approved request 1 already"):
        ap.decide(ap.decide(ASKED, "bo", True, 110.0), "bo", True, 111.0)


def test_a_rejected_or_expired_request_runs_nothing():
    no = ap.decide(ASKED, "bo", False, 110.0, "not during the sale")
    assert (no.state, no.decided_by, no.reason) == (ap.REJECTED, "bo", "not during the sale")
    with pytest.raises(ap.Refused, match="is rejected, not pending"):
        ap.decide(no, "cy", True, 111.0)
    assert ap.current(ASKED, 200.0).state == ap.EXPIRED
    with pytest.raises(ap.Refused, match="is expired, not pending"):
        ap.decide(ASKED, "bo", True, 200.0)
    done = ap.decide(ap.decide(ASKED, "bo", True, 110.0), "cy", True, 120.0)
    with pytest.raises(ap.Refused, match=r"is expired \(2 of 2 approvals\)"):
        ap.usable(done, "prod", "1.4.0", 250.0)


def test_an_approval_runs_only_the_deploy_it_was_given_for():
    done = ap.decide(ap.decide(ASKED, "bo", True, 110.0), "cy", True, 120.0)
    with pytest.raises(ap.Refused, match=r"is for 1\.4\.0 on prod, not 1\.5\.0 on prod"):
        ap.usable(done, "prod", "1.5.0", 130.0)
    with pytest.raises(ap.Refused, match=r"is pending \(1 of 2 approvals\)"):
        ap.usable(ap.decide(ASKED, "bo", True, 110.0), "prod", "1.4.0", 130.0)
