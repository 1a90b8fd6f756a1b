"""Watching a canary as it runs: the look events a deploy streams (`--progress json`) carry
the step's clock, the new release's share and each version's router numbers, and
`rollwise status --watch` off a terminal prints them as lines until interrupted."""

from __future__ import annotations

import json
import signal
import time

from tests.helpers import FAST, run_in_background, start_load, wait_for


def test_given_a_canary_under_load_then_look_events_and_status_watch_show_it(project):
    project.configure(strategy={"type": "canary", "steps": [25, 100], "pause_s": 60}, analysis=FAST)
    project.release("1.0.0", "1.1.0")
    project.cli("deploy", "1.0.0", check=True)
    load = start_load(project, 40)
    deploy = run_in_background(project, "--progress", "json", "deploy", "1.1.0")
    wait_for(project, lambda s: len([w for w in s["weights"].values() if w]) == 2)
    watch = run_in_background(project, "status", "--watch", "--interval", "0.5", "-e", "dev")
    assert watch.stdout is not None
    first = watch.stdout.readline()  # it is running (and handles Ctrl-C) once it has shown one
    time.sleep(3)
    watch.send_signal(signal.SIGINT)
    out, err = watch.communicate(timeout=30)
    out = first + out
    assert watch.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) >= 3, out
    last = lines[-1]
    assert last.startswith("dev: 1.0.0 live, deploy to 1.1.0 in progress | canary:25 | "), last
    assert " | 1.1.0 25% " in last and " | 1.0.0 75% " in last, last
    served = int(last.split(" | 1.1.0 25% ")[1].split(" requests")[0])
    assert served > 0, last
    project.cli("abort", check=True)
    _, events_text = deploy.communicate(timeout=120)
    load.stop()
    assert deploy.returncode != 0 and "aborted by" in events_text, events_text[-2000:]
    looks = [
        e
        for e in map(json.loads, events_text.splitlines())
        if e.get("action") == "look" and e["data"]["step"] == "canary:25"
    ]
    assert looks, events_text[-2000:]
    d = looks[-1]["data"]
    assert (d["percent"], d["pause_s"], d["stable"]) == (25.0, 60.0, "1.0.0")
    assert 0 < d["elapsed_s"] < 60
    assert d["versions"]["1.1.0"]["requests"] > 0 and d["versions"]["1.0.0"]["requests"] > 0
    assert d["versions"]["1.1.0"]["p99_ms"] is not None
    assert d["decision"]["action"] in ("continue", "pause") and d["decision"]["reason"]
