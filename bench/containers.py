"""Container rollback: rollwise against the plain script, in the same run, under load.

The example's shell service (examples/containers) as two images on Podman, built from a
base imported from a local rootfs tarball (no registry here), both present locally.

- `rollwise`: 1.0.0 then 1.1.0 deployed with rollwise (container target, embedded router);
  under `--rate` req/s of POST through the router, `rollwise --progress json rollback --yes`
  runs as a subprocess. `decision_to_traffic_s`: from the command's start to the moment no
  newly sent request reaches 1.1.0 any more (read from the clients' answers);
  `switch_event_s`: from the start to the switch step's event; `total_s`: start to exit.
- `plain_script`: what a `docker run` script does: 1.1.0 runs as a container published on a
  fixed port that the clients use directly; the script stops and removes it and runs
  1.0.0's image on the same port. `decision_to_traffic_s`: from the script's start to the
  first answer from 1.0.0; `total_s`: until 1.0.0 answers its health check.

Each side runs `--repeat` (3) times, alternating; medians, every sample kept, and the
requests that failed (a non-retrying keep-alive client counts each). Needs podman, runc and
busybox (apt-get install -y podman runc busybox-static). Writes bench/results/containers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from rollwise import loadgen
from rollwise.ports import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLE = ROOT / "examples" / "containers"
BASE = "localhost/rollwise-bench/busybox:base"
APP = "bench-stock"
BIN = Path(sys.executable).parent


def sh(
    *args: str, env: dict[str, str], timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, env=env, timeout=timeout, check=check
    )


def setup(work: Path) -> tuple[Path, dict[str, str]]:
    conf = work / "containers.conf"
    conf.write_text(
        '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        '[engine]\nruntime = "runc"\n'
    )
    env = {
        **os.environ,
        "CONTAINERS_CONF": str(conf),
        "XDG_CONFIG_HOME": str(work / "xdg-config"),
        "XDG_STATE_HOME": str(work / "xdg"),
    }
    root = work / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy(str(shutil.which("busybox")), root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    with tarfile.open(work / "base.tar", "w") as tar:
        tar.add(root, arcname=".")
    sh("podman", "import", str(work / "base.tar"), BASE, env=env)
    project = work / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns(".rollwise"))
    cf = project / "Containerfile"
    cf.write_text(
        "\n".join(
            f"FROM {BASE}" if ln.startswith("FROM ") else ln for ln in cf.read_text().splitlines()
        )
        + "\n"
    )
    cfg = yaml.safe_load((project / "rollwise.yaml").read_text())
    cfg["app"] = APP
    cfg["image"]["stop_timeout_s"] = 2
    cfg["stop"] = {"drain_timeout_s": 2, "grace_s": 2}
    cfg["environments"] = {
        "bench": {"target": {"type": "container"}, "router": {"listen": f"127.0.0.1:{free_port()}"}}
    }
    (project / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for v in ("1.0.0", "1.1.0"):
        (project / "VERSION").write_text(v + "\n")
        rollwise(project, env, "release", "create", "--version", v)
    return project, env


def rollwise(
    project: Path, env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / "rollwise"), *args, "-C", str(project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"rollwise {' '.join(args)}: {proc.stderr[-800:]}")
    return proc


def with_rollwise(project: Path, env: dict[str, str], rate: float) -> dict[str, Any]:
    rollwise(project, env, "deploy", "1.0.0", "-e", "bench")
    rollwise(
        project,
        env,
        "deploy",
        "1.1.0",
        "-e",
        "bench",
        "--force",
        "--reason",
        "bench: again after the last round rolled it back",
    )
    status = json.loads(rollwise(project, env, "status", "-e", "bench", "--json").stdout)
    host, port = status["environments"]["bench"]["router"].rsplit(":", 1)
    load = loadgen.Load(
        host, int(port), rate=rate, max_duration_s=120, path="/cgi-bin/orders"
    ).start()
    time.sleep(1)
    t0, wall0 = time.monotonic(), time.time()
    proc = rollwise(project, env, "--progress", "json", "rollback", "-e", "bench", "--yes")
    total = time.monotonic() - t0
    time.sleep(1)
    results = load.stop()
    events = [json.loads(ln) for ln in proc.stderr.splitlines() if ln.startswith("{")]
    switch = next(
        e["ts"]
        for e in events
        if e.get("action") == "step" and e["outcome"] == "ok" and e["data"].get("step") == "switch"
    )
    moved = loadgen.traffic_moved_ms(results, wall0, 0.0, "1.1.0") / 1000
    s = loadgen.summarize([r for r in results if r.sent_at >= wall0])
    return {
        "decision_to_traffic_s": round(moved, 3),
        "switch_event_s": round(switch - wall0, 3),
        "total_s": round(total, 3),
        "requests_sent": s["requests_sent"],
        "requests_failed": s["requests_failed"],
        "by_version": s["by_version"],
    }


def health(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/cgi-bin/health", timeout=1) as r:
            return str(r.headers.get("x-version"))
    except OSError:
        return None


def plain_script(env: dict[str, str], rate: float) -> dict[str, Any]:
    """stop 1.1.0; run 1.0.0 on the same port; wait until it answers."""
    port = free_port()
    image = {v: f"localhost/rollwise/{APP}:{v}" for v in ("1.0.0", "1.1.0")}

    def run(v: str) -> None:
        sh(
            "podman",
            "run",
            "-d",
            "--name",
            f"plain-{v}",
            "-p",
            f"127.0.0.1:{port}:{port}",
            "-e",
            f"ROLLWISE_VERSION={v}",
            image[v],
            "/bin/sh",
            "/www/start.sh",
            str(port),
            env=env,
        )

    run("1.1.0")
    deadline = time.monotonic() + 30
    while health(port) != "1.1.0" and time.monotonic() < deadline:
        time.sleep(0.05)
    load = loadgen.Load(
        "127.0.0.1", port, rate=rate, max_duration_s=120, path="/cgi-bin/orders"
    ).start()
    time.sleep(1)
    t0, wall0 = time.monotonic(), time.time()
    sh("podman", "stop", "-t", "2", "plain-1.1.0", env=env)
    sh("podman", "rm", "-f", "plain-1.1.0", env=env)
    run("1.0.0")
    while health(port) != "1.0.0" and time.monotonic() < deadline + 30:
        time.sleep(0.01)
    total = time.monotonic() - t0
    time.sleep(1)
    results = load.stop()
    sh("podman", "rm", "-f", "plain-1.0.0", env=env, check=False)
    after = [r for r in results if r.sent_at >= wall0]
    first_new = min((r.sent_at for r in after if r.version == "1.0.0"), default=None)
    s = loadgen.summarize(after)
    return {
        "decision_to_traffic_s": round(first_new - wall0, 3) if first_new else None,
        "total_s": round(total, 3),
        "requests_sent": s["requests_sent"],
        "requests_failed": s["requests_failed"],
        "by_version": s["by_version"],
    }


def cleanup(project: Path, env: dict[str, str]) -> None:
    ids = sh(
        "podman", "ps", "-aq", "--filter", f"label=io.rollwise.app={APP}", env=env, check=False
    ).stdout.split()
    if ids:
        sh("podman", "rm", "-f", *ids, env=env, check=False)
    from rollwise.agent.client import AgentClient

    envs = project / ".rollwise" / "envs"
    for d in envs.iterdir() if envs.exists() else []:
        client = AgentClient(d, d.name)
        if client.alive():
            client.call("shutdown")


def median(xs: list[float | None]) -> float | None:
    got = [x for x in xs if x is not None]
    return round(statistics.median(got), 3) if got else None


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=HERE / "results" / "containers.json")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rate", type=float, default=50.0, help="req/s during each rollback")
    args = ap.parse_args()
    if missing := [t for t in ("podman", "runc", "busybox") if shutil.which(t) is None]:
        raise SystemExit(
            f"needs {', '.join(missing)}: apt-get install -y podman runc busybox-static"
        )
    started, load_before = time.time(), [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict[str, Any]]] = {"rollwise": [], "plain_script": []}
    with tempfile.TemporaryDirectory(prefix="rollwise-bench-containers-") as tmp:
        project, env = setup(Path(tmp))
        try:
            for _ in range(min(args.repeat, 10)):
                runs["rollwise"].append(with_rollwise(project, env, args.rate))
                runs["plain_script"].append(plain_script(env, args.rate))
                print(json.dumps({k: v[-1] for k, v in runs.items()}), file=sys.stderr)
        finally:
            cleanup(project, env)
    result: dict[str, Any] = {"benchmark": "containers"}
    for side, rs in runs.items():
        result[side] = (
            {k: median([r[k] for r in rs]) for k in rs[0] if k not in ("by_version",)} if rs else {}
        )
        result[side]["requests_failed_total"] = sum(r["requests_failed"] for r in rs)
        result[side]["samples"] = rs
    rw, plain = result["rollwise"], result["plain_script"]
    if rw.get("decision_to_traffic_s") and plain.get("decision_to_traffic_s"):
        result["ratio_decision_to_traffic"] = round(
            rw["decision_to_traffic_s"] / plain["decision_to_traffic_s"], 3
        )
    result["machine"] = {
        "cores": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    result["settings"] = {"repeat": args.repeat, "rate": args.rate}
    result["duration_s"] = round(time.time() - started, 1)
    result["command"] = " ".join([".venv/bin/python", "bench/containers.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
