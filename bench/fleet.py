"""Fleet benchmark: one trivial step on N real SSH hosts with rollwise and its peers, and a
whole rolling deploy and rollback of a ~5 MB release under load.

Hosts are real OpenSSH servers, each in its own network namespace (tests/fleethosts.py);
every client verifies host keys against the fleet's known_hosts and logs in as root by key.

`step`: `hostname` on every host, its output collected, for N in `--hosts` (10, 50, 100;
add 200), all on the same hosts (the first N of one fleet). COLD is the wall time of a new
process, start to exit, as a user runs a one-off command:
- `rollwise`: `rollwise hosts run hostname -e bench -C PROJECT`, a project configured with
  the N hosts (`ssh` settings left at their defaults: `concurrency` 50). Every run after
  the first takes the command's quick path (the hosts from the fleet cache the first run
  wrote, docs/fleet.md);
  `rollwise_first`: the same with the fleet cache removed before each run: the full path,
  as the first run after rollwise.yaml changed;
  `rollwise_concurrency_n`: the same with `ssh.concurrency: N` (only when N > 50);
- `fabric`: a small script, `ThreadingGroup(...).run("hostname")`;
- `pyinfra`: `pyinfra -y INVENTORY exec -- hostname`;
- `ansible`: `ansible all -i INVENTORY -m raw -a hostname -f N`;
- `asyncssh`: a plain asyncssh script (connect to all at once, run, print): the floor.
Each run must print every host's own hostname (`h1`..`hN`) and exit 0; anything else is an
error, never a time. `--repeat` (3) rounds, the tools interleaved (a different order each
round); the median is reported and every sample kept. Every tool runs once untimed first
(`warmup_s`: first imports, .pyc files). `rollwise_warm`: in this process, a
`rollwise.ssh.Hosts` with its connections open, one `hosts.all(arun(h, "hostname"))`
(median of `--repeat`; `connect_s` is the first call, which connects).
`rollwise_breakdown`: the same CLI command run with its phases timed (wrappers around
`fleetcache.read`, `hostsrun.run`, `chain.append_sqlite`, no change to rollwise; a run
that did not take the quick path is an error), and `import`: `python -X importtime` of
the whole command, attributed per top-level package.

`deploy`: for N in `--deploy-hosts` (10, 50), a fresh fleet, the example app with an
incompressible 5 MB file, releases 1.0.0 and 1.1.0, `rollwise hosts setup` (`setup_s`, not
in the deploy figure) and a first deploy of 1.0.0; then, each under `--rate` req/s of POST
/orders through the front router (rollwise.loadgen: keep-alive, non-retrying, bounded),
`rollwise deploy 1.1.0` (`rolling_N`: strategy rolling, batch max(1, N // 5), pause 1 s)
and `rollwise rollback --yes` (`rollback_N`), each as a subprocess with `--progress json`;
`first_traffic_moved_s`: from the command's start to its first traffic move (the rollback's
switch, the deploy's first batch). `bytes_sent`: what the
hosts received during the command, the sum of the tx bytes of the hosts' veths on the
bridge (this side of each veth; the same bytes are the rx of each host's eth0), load
traffic included (`background_bytes_per_s`, measured under the same load before, says how
much of it that is).

The load average is recorded before and after each part: on a shared 2-core machine, the
figures move with what else runs. Needs root, sshd and ip (as the fleet tests); the peers
come with `pip install -e '.[bench]'`, a missing one is reported as an error.
Writes bench/results/fleet.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from rollwise import loadgen
from rollwise.agent.client import AgentClient
from rollwise.config.schema import HostConfig, SSHConfig
from rollwise.demo import prepare_example
from rollwise.ssh import Hosts

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from tests.fleethosts import Fleet, fleet_missing  # noqa: E402  (the repo's test hosts)

EXAMPLE = ROOT / "examples" / "order-sync"
BIN = Path(sys.executable).parent
ENV = "bench"
APP = "order-sync"
TOOLS = ("rollwise", "fabric", "pyinfra", "ansible", "asyncssh")
PEERS = ("fabric", "pyinfra", "ansible", "asyncssh")
DEFAULT_CONCURRENCY = SSHConfig.model_fields["concurrency"].default
ANALYSIS = {"interval_s": 0.5, "checks_every_s": 1, "router": {"min_requests": 10}}
RELEASE_PAD_BYTES = 5 * 1024 * 1024
TARGETS = {
    "cold_ahead_of": ["fabric", "pyinfra", "ansible"],
    "cold_vs_asyncssh_max": 1.1,
    "warm_100_hosts_max_s": 0.3,
}
MAX_ROUNDS = 20

FABRIC = '''\
"""Fabric: `hostname` on every host at once (ThreadingGroup), host keys verified."""
import sys

from fabric import ThreadingGroup
from fabric.exceptions import GroupException
from paramiko import RejectPolicy

known, key, *addresses = sys.argv[1:]
group = ThreadingGroup(*addresses, user="root", connect_kwargs={"key_filename": key})
for c in group:
    c.client.load_host_keys(known)
    c.client.set_missing_host_key_policy(RejectPolicy())
try:
    results = group.run("hostname", hide=True)
except GroupException as e:
    for c, r in e.result.items():
        print(c.host, r.stdout.strip() if hasattr(r, "stdout") else f"failed: {r!r}")
    sys.exit(1)
for c, r in results.items():
    print(c.host, r.stdout.strip())
group.close()
'''

ASYNCSSH = '''\
"""Plain asyncssh: connect to every host at once, run `hostname`, print."""
import asyncio
import sys

import asyncssh

known, key, *addresses = sys.argv[1:]


async def one(address):
    async with asyncssh.connect(address, username="root", client_keys=[key],
                                known_hosts=known) as conn:
        r = await conn.run("hostname", check=True)
        return address, r.stdout.strip()


async def main():
    for address, name in await asyncio.gather(*(one(a) for a in addresses)):
        print(address, name)


asyncio.run(main())
'''

BREAKDOWN = '''\
"""`rollwise hosts run` as the command runs it, its phases timed by wrappers (rollwise
unchanged); the phases go to the JSON file argv[1], the rest of argv is the command line."""
import json
import os
import sys
import time
from pathlib import Path

t0 = time.perf_counter()
from rollwise.cli import entry, quick  # what the command imports first

t1 = time.perf_counter()
from rollwise import chain, fleetcache, hostsrun

phases = {"import_quick_path_s": t1 - t0}


def timed(module, attr, name):
    fn = getattr(module, attr)

    def wrapper(*a, **k):
        s = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - s

    setattr(module, attr, wrapper)


timed(fleetcache, "read", "fleet_cache_read_s")
timed(hostsrun, "run", "ssh_connect_run_close_s")
timed(chain, "append_sqlite", "audit_append_s")
out, sys.argv = sys.argv[1], ["rollwise", *sys.argv[2:]]


def done():
    phases["in_process_s"] = time.perf_counter() - t0
    phases["quick_path"] = "sqlalchemy" not in sys.modules and "pydantic" not in sys.modules
    Path(out).write_text(json.dumps(phases))


exit_now = os._exit


def leave(code):  # the quick path leaves with os._exit
    done()
    exit_now(code)


os._exit = leave
try:
    entry.main()
except SystemExit:
    done()
    raise
'''


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in ("rollwise", "asyncssh", "fabric", "paramiko", "pyinfra", "ansible-core"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    ssh = (
        subprocess.run(["ssh", "-V"], capture_output=True, text=True)
        if shutil.which("ssh")
        else None
    )
    out["openssh"] = ssh.stderr.strip() if ssh else None
    return out


# --- the project ---------------------------------------------------------------------------


def make_project(work: Path, f: Fleet, n: int, **env: Any) -> Path:
    """The example app with one environment, `bench`, on the first n hosts of the fleet."""
    work.mkdir(parents=True, exist_ok=True)
    project = prepare_example(EXAMPLE, work)
    path = project / "rollwise.yaml"
    cfg = yaml.safe_load(path.read_text())
    settings = cfg["environments"].pop("dev")
    ssh = {"known_hosts": str(f.known_hosts), "key_file": str(f.client_key), **env.pop("ssh", {})}
    settings["target"] = {
        "type": "ssh",
        "ssh": ssh,
        "hosts": [{"address": h.address, "name": h.name} for h in f.hosts[:n]],
    }
    cfg["environments"] = {ENV: {**settings, **env}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return project


def child_env(work: Path) -> dict[str, str]:
    """Subprocesses keep their state (audit checkpoint key, ansible's temp files) in `work`."""
    return {
        **os.environ,
        "XDG_CONFIG_HOME": str(work / "xdg" / "config"),
        "XDG_STATE_HOME": str(work / "xdg" / "state"),
        "ANSIBLE_HOME": str(work / "ansible"),
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible" / "tmp"),
    }


def rollwise(
    project: Path, work: Path, *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "rollwise"), *args, "-C", str(project)],
        capture_output=True,
        text=True,
        env=child_env(work),
        timeout=timeout,
    )


def checked(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    if proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(proc.args[:4])}... exited {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()[-800:]}"
        )
    return proc


# --- step: the tools ---------------------------------------------------------------------


class Step:
    """The command lines of every tool for the first n hosts, and how to read each one's
    answers (per host: what it printed)."""

    def __init__(self, f: Fleet, n: int, work: Path) -> None:
        self.f, self.n, self.work = f, n, work
        self.hosts = f.hosts[:n]
        self.expected = {h.name: h.name for h in self.hosts}
        by_address = {h.address: h.name for h in self.hosts}
        self.by_address = by_address
        d = work / f"n{n}"
        d.mkdir(parents=True)
        self.project = make_project(d / "project", f, n)
        self.project_cn = (
            make_project(d / "project-cn", f, n, ssh={"concurrency": n})
            if n > DEFAULT_CONCURRENCY
            else None
        )
        (d / "fabric_hostname.py").write_text(FABRIC)
        (d / "asyncssh_hostname.py").write_text(ASYNCSSH)
        (d / "breakdown.py").write_text(BREAKDOWN)
        self.pyinfra_dir = d / "pyinfra"
        self.pyinfra_dir.mkdir()
        common = {
            "ssh_user": "root",
            "ssh_key": str(f.client_key),
            "ssh_known_hosts_file": str(f.known_hosts),
            "ssh_strict_host_key_checking": "yes",
        }
        (self.pyinfra_dir / "inventory.py").write_text(
            f"_common = {common!r}\n"
            f"hosts = [(a, dict(_common)) for a in {[h.address for h in self.hosts]!r}]\n"
        )
        (d / "ansible.ini").write_text(
            "".join(f"{h.address}\n" for h in self.hosts)
            + f"[all:vars]\nansible_user=root\nansible_ssh_private_key_file={f.client_key}\n"
        )
        self.dir = d
        addresses = [h.address for h in self.hosts]
        keys = [str(f.known_hosts), str(f.client_key)]
        py = str(BIN / "python")
        self.argv: dict[str, list[str]] = {
            "rollwise": [
                str(BIN / "rollwise"),
                "hosts",
                "run",
                "hostname",
                "-e",
                ENV,
                "-C",
                str(self.project),
            ],
            "fabric": [py, str(d / "fabric_hostname.py"), *keys, *addresses],
            "pyinfra": [str(BIN / "pyinfra"), "-y", "inventory.py", "exec", "--", "hostname"],
            "ansible": [
                str(BIN / "ansible"),
                "all",
                "-i",
                str(d / "ansible.ini"),
                "-m",
                "raw",
                "-a",
                "hostname",
                "-f",
                str(n),
            ],
            "asyncssh": [py, str(d / "asyncssh_hostname.py"), *keys, *addresses],
        }
        # the same command with no fleet cache: the full path, as the first run after
        # rollwise.yaml changed (it validates the file and writes the cache again)
        self.argv["rollwise_first"] = list(self.argv["rollwise"])
        if self.project_cn is not None:
            self.argv["rollwise_concurrency_n"] = [
                *self.argv["rollwise"][:-1],
                str(self.project_cn),
            ]
        self.env = child_env(work)
        self.env["ANSIBLE_SSH_ARGS"] = (
            f"-o UserKnownHostsFile={f.known_hosts} -o StrictHostKeyChecking=yes"
        )
        self.env["ANSIBLE_HOST_KEY_CHECKING"] = "True"
        self.env["ANSIBLE_DEPRECATION_WARNINGS"] = "False"

    def missing(self, tool: str) -> str | None:
        exe = Path(self.argv[tool][0])
        if not exe.exists():
            return f"{exe} not installed (pip install -e '.[bench]')"
        if tool == "fabric":
            try:
                metadata.version("fabric")
            except metadata.PackageNotFoundError:
                return "fabric not installed (pip install -e '.[bench]')"
        if tool == "ansible" and shutil.which("ssh") is None:
            return "ansible needs the OpenSSH client (ssh)"
        return None

    def answers(self, tool: str, out: str) -> dict[str, str]:
        got: dict[str, str] = {}
        if tool.startswith("rollwise"):
            for line in out.splitlines():
                if m := re.match(r"^(\S+): (.*)$", line):
                    got[m[1]] = m[2].strip()
            return got
        if tool in ("fabric", "asyncssh"):
            pairs = (line.split(" ", 1) for line in out.splitlines() if " " in line)
        elif tool == "pyinfra":  # `[address] output` (status lines are indented)
            pairs = (
                m.groups()
                for line in out.splitlines()
                if (m := re.match(r"^\[(\S+)\] (.*)$", line))
            )
        else:  # ansible: `address | CHANGED | rc=0 >>` then the output
            lines = out.splitlines()
            pairs = (
                (m[1], lines[i + 1] if i + 1 < len(lines) else "")
                for i, line in enumerate(lines)
                if (m := re.match(r"^(\S+) \| CHANGED \| rc=0 >>$", line))
            )
        for address, text in pairs:
            got[self.by_address.get(address, address)] = text.strip()
        return got

    def run(self, tool: str, timeout: float) -> float | str:
        """Seconds from start to exit, or why the run does not count."""
        cwd = self.pyinfra_dir if tool == "pyinfra" else self.dir
        if tool == "rollwise_first":
            (self.project / ".rollwise" / "fleet.json").unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            p = subprocess.run(
                self.argv[tool],
                capture_output=True,
                text=True,
                env=self.env,
                cwd=cwd,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return f"did not finish within {timeout:g} s"
        elapsed = time.perf_counter() - t0
        return self.verify(tool, p.returncode, p.stdout + "\n" + p.stderr, elapsed)

    def verify(self, tool: str, code: int, out: str, elapsed: float) -> float | str:
        got = self.answers(tool, out)
        wrong = sorted(k for k in self.expected if got.get(k) != self.expected[k])
        if code != 0 or wrong or len(got) != self.n:
            tail = " | ".join(out.strip().splitlines()[-3:])[-400:]
            return (
                f"exit {code}, {self.n - len(wrong)}/{self.n} correct answers "
                f"(wrong or missing: {', '.join(wrong[:5])}{'...' if len(wrong) > 5 else ''}"
                f"): {tail}"
            )
        return elapsed

    def breakdown(self, timeout: float) -> dict[str, Any]:
        """The rollwise command once more, with its phases timed in the process."""
        phases_file = self.dir / "phases.json"
        phases_file.unlink(missing_ok=True)
        argv = [
            str(BIN / "python"),
            str(self.dir / "breakdown.py"),
            str(phases_file),
            *self.argv["rollwise"][1:],
        ]
        t0 = time.perf_counter()
        p = subprocess.run(
            argv, capture_output=True, text=True, env=self.env, cwd=self.dir, timeout=timeout
        )
        elapsed = time.perf_counter() - t0
        ok = self.verify("rollwise", p.returncode, p.stdout, elapsed)
        if isinstance(ok, str):
            return {"error": ok}
        phases = json.loads(phases_file.read_text())
        if not phases.pop("quick_path"):
            return {"error": "the command did not take its quick path"}
        phases["process_s"] = elapsed
        phases["interpreter_start_and_exit_s"] = elapsed - phases["in_process_s"]
        named = sum(
            v
            for k, v in phases.items()
            if k not in ("in_process_s", "process_s", "interpreter_start_and_exit_s")
        )
        phases["other_in_process_s"] = phases["in_process_s"] - named  # finding files, output
        return phases

    def warm(self, repeat: int) -> dict[str, Any]:
        """One `hosts.all(arun hostname)` with the connections already open, in this
        process, on the project's ssh settings (and with concurrency N when N > 50)."""
        out: dict[str, Any] = {}
        configs: dict[str, dict[str, Any]] = {"rollwise_warm": {}}
        if self.n > DEFAULT_CONCURRENCY:
            configs["rollwise_warm_concurrency_n"] = {"concurrency": self.n}
        for key, extra in configs.items():
            cfg = SSHConfig(
                known_hosts=str(self.f.known_hosts), key_file=str(self.f.client_key), **extra
            )
            hosts_cfg = [HostConfig(address=h.address, name=h.name) for h in self.hosts]
            with Hosts(hosts_cfg, cfg, ENV) as hosts:
                connect_s, err = self.warm_step(hosts)
                samples: list[float] = []
                for _ in range(repeat):
                    if err:
                        break
                    t, err = self.warm_step(hosts)
                    samples.append(round(t, 4))
            out[key] = {"error": err} if err else median(samples)
            out[f"{key}_samples"] = samples
            out[f"{key}_connect_s"] = round(connect_s, 3)
        return out

    def warm_step(self, hosts: Hosts) -> tuple[float, str | None]:
        t0 = time.perf_counter()
        try:
            got = hosts.all(lambda h: hosts.arun(h, "hostname"))
        except Exception as e:
            return time.perf_counter() - t0, f"{type(e).__name__}: {e}"
        elapsed = time.perf_counter() - t0
        answers = {k: r.stdout.strip() for k, r in got.items()}
        if answers != self.expected:
            diff = sorted(set(answers.items()) ^ set(self.expected.items()))
            return elapsed, f"wrong answers: {diff[:5]}"
        return elapsed, None


def importtime(step: Step, timeout: float) -> dict[str, Any]:
    """`python -X importtime`: of `import rollwise.cli.app`, and of the whole `hosts run`
    command (its modules imported as it runs), each attributed per top-level package (the
    sum of its modules' own times, so the parts add up)."""

    def parse(stderr: str) -> dict[str, Any]:
        per: dict[str, int] = {}
        heavy: list[tuple[int, str]] = []
        total = 0
        stack: list[str] = []
        lines = [
            m
            for line in stderr.splitlines()
            if (m := re.match(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)$", line))
        ]
        for m in reversed(lines):  # a module's line comes after those of what it imports
            own, cumulative, depth, name = int(m[1]), int(m[2]), len(m[3]) // 2, m[4]
            parent = stack[depth - 1] if 0 < depth <= len(stack) else None
            del stack[depth:]
            stack.append(name)
            if parent and parent.startswith("rollwise") and not name.startswith("rollwise"):
                heavy.append((cumulative, f"{parent} -> {name}"))
            total += own
            top = name.split(".")[0]
            if top == "rollwise":
                top = ".".join(name.split(".")[:2])
            per[top] = per.get(top, 0) + own
        top12 = sorted(per.items(), key=lambda kv: -kv[1])[:12]
        return {
            "total_ms": round(total / 1000, 1),
            "by_package_ms": {k: round(v / 1000, 1) for k, v in top12},
            "rollwise_modules_ms": round(
                sum(v for k, v in per.items() if k.startswith("rollwise")) / 1000, 1
            ),
            "heaviest_third_party_imports_ms": {
                edge: round(us / 1000, 1) for us, edge in sorted(heavy, reverse=True)[:10]
            },
        }

    py = str(BIN / "python")
    cli = subprocess.run(
        [py, "-X", "importtime", "-c", "import rollwise.cli.app"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=step.env,
    )
    phases = step.dir / "phases-importtime.json"
    cmd = subprocess.run(
        [
            py,
            "-X",
            "importtime",
            str(step.dir / "breakdown.py"),
            str(phases),
            *step.argv["rollwise"][1:],
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=step.env,
        cwd=step.dir,
    )

    def wall(code: str) -> float:
        samples = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([py, "-c", code], check=True, timeout=timeout, env=step.env)
            samples.append(time.perf_counter() - t0)
        return median(samples)

    return {
        "import_rollwise_cli_app": parse(cli.stderr),
        "hosts_run_command": parse(cmd.stderr),
        "wall_s": {
            "python -c pass": wall("pass"),
            "import rollwise.cli.app": wall("import rollwise.cli.app"),
            "import rollwise.cli.app, rollwise.controller.hosts": wall(
                "import rollwise.cli.app, rollwise.controller.hosts"
            ),
            "import rollwise.cli.quick, rollwise.hostsrun": wall(
                "import rollwise.cli.quick, rollwise.hostsrun"
            ),
            "import asyncssh": wall("import asyncssh"),
        },
    }


def bench_step(
    f: Fleet, n: int, work: Path, args: argparse.Namespace, broken: dict[str, str]
) -> dict[str, Any]:
    print(f"step: {n} hosts", file=sys.stderr)
    load_before = load()
    step = Step(f, n, work)
    tools = list(step.argv)
    for tool in tools:
        if tool not in broken and (why := step.missing(tool)):
            broken[tool] = why
    warmup: dict[str, Any] = {}
    for tool in tools:  # untimed: first imports (.pyc), caches; a tool that fails is out
        if tool in broken:
            continue
        got = step.run(tool, args.timeout)
        warmup[tool] = round(got, 3) if isinstance(got, float) else got
    samples: dict[str, list[float | dict[str, str]]] = {t: [] for t in tools}
    breakdowns: list[dict[str, Any]] = []
    rounds = min(args.repeat, MAX_ROUNDS)
    for r in range(rounds):
        order = tools[r % len(tools) :] + tools[: r % len(tools)]
        for tool in order:
            if tool in broken or isinstance(warmup.get(tool), str):
                continue
            got = step.run(tool, args.timeout)
            samples[tool].append(round(got, 3) if isinstance(got, float) else {"error": got})
            print(f"  {n} hosts, round {r + 1}: {tool}: {samples[tool][-1]}", file=sys.stderr)
        breakdowns.append(step.breakdown(args.timeout))
    res: dict[str, Any] = {}
    for tool in tools:
        ok = [s for s in samples[tool] if isinstance(s, float)]
        bad = [s["error"] for s in samples[tool] if isinstance(s, dict)]
        if tool in broken:
            res[tool] = {"error": broken[tool]}
        elif isinstance(warmup.get(tool), str):
            res[tool] = {"error": f"first run: {warmup[tool]}"}
        elif bad:  # one failed run and the tool does not count for this N
            res[tool] = {"error": bad[0], "failed_runs": len(bad), "ok_runs": len(ok)}
        else:
            res[tool] = median(ok)
    res.update(step.warm(rounds))

    def ratio(a: Any, b: Any) -> float | None:
        return round(a / b, 3) if isinstance(a, float) and isinstance(b, float) else None

    res["ratio_to_asyncssh"] = ratio(res["rollwise"], res["asyncssh"])
    res["ratio_first_to_asyncssh"] = ratio(res["rollwise_first"], res["asyncssh"])
    res["ratios"] = {p: ratio(res["rollwise"], res[p]) for p in PEERS}
    if "rollwise_concurrency_n" in res:
        res["ratios_concurrency_n"] = {
            p: ratio(res["rollwise_concurrency_n"], res[p]) for p in PEERS
        }
    res["samples"] = samples
    res["warmup_s"] = warmup
    ok_breakdowns = [b for b in breakdowns if "error" not in b]
    res["rollwise_breakdown"] = (
        {k: median([b[k] for b in ok_breakdowns if k in b]) for k in ok_breakdowns[0]}
        if ok_breakdowns
        else {"error": breakdowns[0]["error"] if breakdowns else "not run"}
    )
    if n == max(args.hosts):
        res["rollwise_breakdown"]["import"] = importtime(step, args.timeout)
    res["load_average"] = {"before": load_before, "after": load()}
    return res


# --- deploy: a rolling deploy and a rollback under load ----------------------------------


def veth_tx_bytes(f: Fleet) -> tuple[int, int, int]:
    """(sum of the hosts' veths' tx bytes = what the hosts received, the bridge's tx bytes
    = what this side sent into the bridge, the bridge's rx bytes = what it got back)."""
    ports = json.loads(
        subprocess.run(
            ["ip", "-s", "-j", "link", "show", "master", f.bridge],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    )
    bridge = json.loads(
        subprocess.run(
            ["ip", "-s", "-j", "link", "show", f.bridge],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    )[0]["stats64"]
    return (
        sum(p["stats64"]["tx"]["bytes"] for p in ports),
        bridge["tx"]["bytes"],
        bridge["rx"]["bytes"],
    )


def versions_on_hosts(f: Fleet, n: int) -> dict[str, int]:
    """How many hosts run each version (read on the hosts, from each agent's state)."""
    count: dict[str, int] = {}
    for h in f.hosts[:n]:
        state = h.root / "rollwise" / APP / ENV / "agent.json"
        records = json.loads(state.read_text())["instances"] if state.exists() else []
        key = ",".join(sorted(r["version"] for r in records)) or "nothing"
        count[key] = count.get(key, 0) + 1
    return count


def under_load(
    f: Fleet,
    n: int,
    router: tuple[str, int],
    rate: float,
    timeout: float,
    command: Callable[[], subprocess.CompletedProcess[str]],
    want: str,
) -> dict[str, Any]:
    b0 = veth_tx_bytes(f)
    lg = loadgen.Load(router[0], router[1], rate=rate, max_duration_s=timeout).start()
    t0, wall0 = time.monotonic(), time.time()
    try:
        proc: subprocess.CompletedProcess[str] | None = command()
        error = (
            None
            if proc.returncode == 0
            else f"exited {proc.returncode}: {proc.stderr.strip()[-800:]}"
        )
    except subprocess.TimeoutExpired:
        proc, error = None, f"did not finish within {timeout:g} s"
    total = time.monotonic() - t0
    results = lg.stop()
    b1 = veth_tx_bytes(f)
    s = loadgen.summarize(results)
    events = (
        [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
        if proc
        else []
    )
    uploaded = (
        sum(int(e["data"].get("uploaded_bytes", 0)) for e in events if e.get("action") == "host")
        if proc
        else None
    )
    switched = [
        e["ts"]
        for e in events
        if e.get("action") == "step"
        and e["outcome"] == "ok"
        and e["data"].get("step") in ("switch", "rolling:1")
    ]
    on_hosts = versions_on_hosts(f, n)
    out = {
        "total_s": round(total, 2),
        "first_traffic_moved_s": round(switched[0] - wall0, 2) if switched else None,
        "requests_sent": s["requests_sent"],
        "requests_failed": s["requests_failed"],
        "bytes_sent": b1[0] - b0[0],
        "bridge_tx_bytes": b1[1] - b0[1],
        "bridge_rx_bytes": b1[2] - b0[2],
        "uploaded_bytes_reported": uploaded,
        "by_version": s["by_version"],
        "latency_p50_ms": s["latency_p50_ms"],
        "latency_p99_ms": s["latency_p99_ms"],
        "load_covered_command": (results[-1].sent_at - results[0].sent_at) >= total - 1
        if results
        else False,
        "hosts_by_version": on_hosts,
        "all_hosts_on_target": on_hosts == {want: n},
    }
    if error:
        out["error"] = error
    return out


def bench_deploy(n: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    print(f"deploy: {n} hosts", file=sys.stderr)
    load_before = load()
    strategy = {"type": "rolling", "batch_size": max(1, n // 5), "pause_s": 1}
    res: dict[str, Any] = {"strategy": strategy}
    (work / "hosts").mkdir(parents=True)
    try:
        with Fleet(n, work / "hosts", ready_timeout=60) as f:
            res["fleet_up_s"] = round(f.up_seconds, 2)
            project = make_project(work / "project", f, n, strategy=strategy, analysis=ANALYSIS)
            try:
                deploy_and_rollback(f, n, project, work, args, res)
            finally:
                stop_front_router(project)
    except (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError, ValueError) as e:
        res["error"] = f"{type(e).__name__}: {e}"
    res["load_average"] = {"before": load_before, "after": load()}
    return res


def deploy_and_rollback(
    f: Fleet, n: int, project: Path, work: Path, args: argparse.Namespace, res: dict[str, Any]
) -> None:
    t0 = time.monotonic()
    checked(rollwise(project, work, "hosts", "setup", "-e", ENV, timeout=args.timeout))
    res["setup_s"] = round(time.monotonic() - t0, 2)
    with (project / "pad.bin").open("wb") as pad:  # incompressible
        pad.write(os.urandom(RELEASE_PAD_BYTES))
    for v in ("1.0.0", "1.1.0"):
        (project / "VERSION").write_text(v + "\n")
        checked(rollwise(project, work, "release", "create", "--version", v, timeout=args.timeout))
    res["release_bytes"] = max(
        a.stat().st_size for a in (project / ".rollwise" / "artifacts").iterdir()
    )
    t0 = time.monotonic()
    checked(rollwise(project, work, "deploy", "1.0.0", "-e", ENV, timeout=args.deploy_timeout))
    res["first_deploy_s"] = round(time.monotonic() - t0, 2)
    status = json.loads(
        checked(rollwise(project, work, "status", "-e", ENV, "--json", timeout=args.timeout)).stdout
    )
    host, port = status["environments"][ENV]["router"].rsplit(":", 1)
    router = (host, int(port))
    b0 = veth_tx_bytes(f)
    background = loadgen.Load(host, int(port), rate=args.rate, max_duration_s=10).start()
    time.sleep(3)
    background.stop()
    res["background_bytes_per_s"] = round((veth_tx_bytes(f)[0] - b0[0]) / 3)
    res[f"rolling_{n}"] = under_load(
        f,
        n,
        router,
        args.rate,
        args.deploy_timeout,
        lambda: rollwise(
            project,
            work,
            "--progress",
            "json",
            "deploy",
            "1.1.0",
            "-e",
            ENV,
            timeout=args.deploy_timeout,
        ),
        "1.1.0",
    )
    res[f"rollback_{n}"] = under_load(
        f,
        n,
        router,
        args.rate,
        args.deploy_timeout,
        lambda: rollwise(
            project,
            work,
            "--progress",
            "json",
            "rollback",
            "-e",
            ENV,
            "--yes",
            timeout=args.deploy_timeout,
        ),
        "1.0.0",
    )


def stop_front_router(project: Path) -> None:
    """The environment's local agent (the front router) this benchmark's deploy started;
    the hosts' agents and instances end with the fleet."""
    envs = project / ".rollwise" / "envs"
    for d in envs.iterdir() if envs.exists() else []:
        client = AgentClient(d, d.name)
        with contextlib.suppress(Exception):
            if client.alive():
                client.call("shutdown")


# --- main --------------------------------------------------------------------------------


def targets(step: dict[str, Any]) -> dict[str, Any]:
    per_n: dict[str, Any] = {}
    for n, r in step.items():
        rw = r["rollwise"]
        ahead = {
            p: isinstance(rw, float) and isinstance(r[p], float) and rw < r[p]
            for p in TARGETS["cold_ahead_of"]
        }
        first = r.get("rollwise_first")
        ratio = r["ratio_to_asyncssh"]
        per_n[n] = {
            "cold_ahead_of": ahead,
            "first_run_ahead_of": {
                p: isinstance(first, float) and isinstance(r[p], float) and first < r[p]
                for p in TARGETS["cold_ahead_of"]
            },
            "cold_ahead_of_all": all(ahead.values()),
            "cold_within_1_1x_asyncssh": ratio is not None
            and ratio <= TARGETS["cold_vs_asyncssh_max"],
        }
    warm = step.get("100", {}).get("rollwise_warm")
    return {
        "stated": TARGETS,
        "per_hosts": per_n,
        "warm_100_hosts_met": isinstance(warm, float) and warm <= TARGETS["warm_100_hosts_max_s"]
        if "100" in step
        else None,
        "cold_met": all(
            v["cold_ahead_of_all"] and v["cold_within_1_1x_asyncssh"] for v in per_n.values()
        ),
    }


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fleet.json")
    ap.add_argument(
        "--hosts",
        type=numbers,
        default=[10, 50, 100],
        help="host counts for the step (comma-separated; up to 200; empty: none)",
    )
    ap.add_argument(
        "--deploy-hosts",
        type=numbers,
        default=[10, 50],
        help="host counts for the deploy and rollback (empty: none)",
    )
    ap.add_argument("--repeat", type=int, default=3, help=f"rounds (at most {MAX_ROUNDS})")
    ap.add_argument("--rate", type=float, default=100.0, help="load during deploys, req/s")
    ap.add_argument("--timeout", type=float, default=180.0, help="one step command, seconds")
    ap.add_argument(
        "--deploy-timeout", type=float, default=600.0, help="one deploy or rollback, seconds"
    )
    args = ap.parse_args()
    if missing := fleet_missing():
        raise SystemExit(f"SSH test hosts need: {', '.join(missing)}")
    if any(not 1 <= n <= 200 for n in args.hosts + args.deploy_hosts):
        raise SystemExit("host counts are 1 to 200")
    started, load_before = time.time(), load()
    result: dict[str, Any] = {"benchmark": "fleet"}
    broken: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="rollwise-bench-fleet-") as tmp:
        work = Path(tmp)
        step: dict[str, Any] = {}
        if args.hosts:
            (work / "step-hosts").mkdir()
            with Fleet(max(args.hosts), work / "step-hosts", ready_timeout=60) as f:
                result["fleet_up_s"] = round(f.up_seconds, 2)
                for n in sorted(args.hosts):
                    step[str(n)] = bench_step(f, n, work / "step", args, broken)
        result["step"] = step
        result["deploy"] = {}
        for n in sorted(args.deploy_hosts):
            d = bench_deploy(n, work / f"deploy-{n}", args)
            for k in (f"rolling_{n}", f"rollback_{n}"):
                if k in d:
                    result["deploy"][k] = d.pop(k)
            result["deploy"][f"context_{n}"] = d
    result["deploy_bytes_sent"] = (
        "bytes the hosts received while the command ran: the sum of the tx bytes of the "
        "hosts' veths on the fleet bridge, on this side (each is the rx of the host's "
        "eth0); includes the proxied load (see context_N.background_bytes_per_s). "
        "bridge_tx_bytes: what this side sent into the bridge; bridge_rx_bytes: what came "
        "back; uploaded_bytes_reported: the sum of the deploy's own uploaded_bytes"
    )
    if step:
        result["targets"] = targets(step)
    result["machine"] = {
        "cores": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load(),
        "python": sys.version.split()[0],
        "versions": versions(),
    }
    result["settings"] = {
        "repeat": args.repeat,
        "rate": args.rate,
        "rollwise_ssh_concurrency_default": DEFAULT_CONCURRENCY,
        "release_pad_bytes": RELEASE_PAD_BYTES,
        "analysis": ANALYSIS,
    }
    result["duration_s"] = round(time.time() - started, 1)
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(ROOT)
    result["command"] = shlex.join([str(exe), *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
