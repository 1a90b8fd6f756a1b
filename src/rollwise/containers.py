"""Container images through a Docker-compatible CLI (podman or docker): build or take an
image for a release and record its immutable ID, and check one is present before it runs.

A release's image is named by its ID (`sha256:...`), never by a tag: a tag that moves after
the release was made changes nothing that rollwise runs.

The CLI runs through a `Runner`: `Local` on this machine, or `targets.ssh.SSHRunner` on one
SSH host; what to run is the same argv either way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from rollwise.config.schema import ImageConfig
from rollwise.errors import ConfigError, NotFound, RollwiseError

IMAGE_FILE = "rollwise-image.json"  # in the release archive: the image it runs
TIMEOUT_S = 900.0


def cli(cfg: ImageConfig) -> str:
    """The container CLI's path."""
    names = ["podman", "docker"] if cfg.cli == "auto" else [cfg.cli]
    for name in names:
        if path := shutil.which(name):
            return path
    raise ConfigError(
        f"no container CLI: {' or '.join(names)} is not installed",
        where="image.cli",
        hint="install podman (apt-get install -y podman) or docker, or run this "
        "environment as processes (`target: {type: local}`)",
    )


Proc = subprocess.CompletedProcess[str]


class Runner(Protocol):
    """Where the container CLI runs, and where the containers it starts listen."""

    label: str  # the host's name in progress reports ("local" on this machine)
    where: str  # named in errors: "this machine", "host h1 (10.0.0.2:22)"
    address: str  # where instances listen and the router reaches them
    remote: bool  # another machine: a release's image may have to be sent there

    def name(self) -> str:
        """The CLI's name there (`podman`, `docker`); a ConfigError naming `where` when
        neither is installed (or the host does not answer)."""

    def run(
        self,
        args: Sequence[str],
        *,
        timeout: float = TIMEOUT_S,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        stdin: Path | None = None,
    ) -> Proc:
        """`<cli> args` there; `env` reaches the CLI's environment only (never its
        arguments), `stdin` is a local file streamed to it."""

    def ports(self, n: int) -> list[int]:
        """`n` distinct TCP ports free there just now."""


class Local:
    """The CLI on this machine; instances are published on loopback ports."""

    label, where, address, remote = "local", "this machine", "127.0.0.1", False

    def __init__(self, cfg: ImageConfig) -> None:
        self.cfg = cfg
        self._exe: str | None = None

    def exe(self) -> str:
        if self._exe is None:
            self._exe = cli(self.cfg)
        return self._exe

    def name(self) -> str:
        return Path(self.exe()).name

    def run(
        self,
        args: Sequence[str],
        *,
        timeout: float = TIMEOUT_S,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        stdin: Path | None = None,
    ) -> Proc:
        return run(
            self.exe(),
            *args,
            timeout=timeout,
            check=check,
            stdin=stdin,
            env=None if env is None else {**base_env(), **env},
        )

    def ports(self, n: int) -> list[int]:
        from rollwise.ports import free_ports

        return free_ports(n, self.address)


def base_env() -> dict[str, str]:
    """What the CLI itself needs from this process's environment (it finds its storage and
    configuration by these), without the rest."""
    keep = (
        "PATH",
        "HOME",
        "XDG_RUNTIME_DIR",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "CONTAINERS_CONF",
        "CONTAINERS_STORAGE_CONF",
        "CONTAINERS_REGISTRIES_CONF",
        "DOCKER_HOST",
        "DOCKER_CONFIG",
        "TMPDIR",
    )
    return {k: os.environ[k] for k in keep if k in os.environ}


def run(
    exe: str,
    *args: str,
    timeout: float = TIMEOUT_S,
    check: bool = True,
    env: dict[str, str] | None = None,
    stdin: Path | None = None,
) -> Proc:
    try:
        with open(stdin, "rb") if stdin else open(os.devnull, "rb") as given:
            proc = subprocess.run(
                [exe, *args], capture_output=True, text=True, timeout=timeout, env=env, stdin=given
            )
    except subprocess.TimeoutExpired:
        raise RollwiseError(
            f"`{Path(exe).name} {' '.join(args[:3])}` did not finish within {timeout:g} s",
            hint=f"is the container engine stuck? `{Path(exe).name} info` says",
        ) from None
    if check and proc.returncode != 0:
        raise RollwiseError(
            f"`{Path(exe).name} {' '.join(args[:3])}` failed: "
            f"{(proc.stderr or proc.stdout).strip()[-600:]}",
            where=Path(exe).name,
        )
    return proc


def image_id(runner: Runner, ref: str) -> str | None:
    """The ID of an image where `runner` runs, or None when it is not there."""
    proc = runner.run(["image", "inspect", "--format", "{{.Id}}", ref], check=False, timeout=60)
    if proc.returncode != 0:
        return None
    got = proc.stdout.strip().splitlines()[0]
    return got if got.startswith("sha256:") else f"sha256:{got}"


def release_image(cfg: ImageConfig, source: Path, app: str, version: str) -> dict[str, Any]:
    """Build the release's image (or find the one named), and return what the release
    records: its ID, the reference it came from and how it was made."""
    here = Local(cfg)
    exe = here.exe()
    if cfg.build is not None:
        file = (source / cfg.build).resolve()
        if not file.is_file():
            raise ConfigError(
                f"no {cfg.build} in {source}",
                where="image.build",
                hint="write a Containerfile there or point `image.build` at it",
            )
        tag = f"localhost/rollwise/{app}:{version}"
        run(exe, "build", "-f", str(file), "-t", tag, str(source))
        ref = tag
    else:
        ref = str(cfg.ref)
        if image_id(here, ref) is None:
            proc = run(exe, "pull", *tls(cfg), ref, check=False)
            if proc.returncode != 0:
                raise NotFound(
                    f"image {ref} is not on this machine and cannot be pulled: "
                    f"{proc.stderr.strip()[-400:]}",
                    where="image.ref",
                    hint="check the name and the registry, or build it first",
                )
    found = image_id(here, ref)
    if found is None:
        raise RollwiseError(f"image {ref} has no ID after it was made", where="image")
    digests = run(
        exe, "image", "inspect", "--format", "{{json .RepoDigests}}", ref, timeout=60
    ).stdout.strip()
    pushed = push(exe, cfg, found, version) if cfg.push else []
    return {
        "id": found,
        "ref": ref,
        "cli": Path(exe).name,
        "built": cfg.build is not None,
        "repo_digests": pushed + (json.loads(digests or "[]") or []),
    }


def push(exe: str, cfg: ImageConfig, image: str, version: str) -> list[str]:
    """Push the image as `<push>:<version>`; the digest the registry holds it under."""
    target = f"{cfg.push}:{version}"
    run(exe, "tag", image, target, timeout=60)
    with tempfile.TemporaryDirectory() as tmp:
        digest_file = Path(tmp) / "digest"
        proc = run(exe, "push", *tls(cfg), "--digestfile", str(digest_file), target, check=False)
        if proc.returncode != 0:
            raise RollwiseError(
                f"pushing {target} failed: {proc.stderr.strip()[-400:]}",
                where="image.push",
                hint="is the registry up and are you "
                "logged in (`podman login`)? nothing was recorded",
            )
        return [f"{cfg.push}@{digest_file.read_text().strip()}"]


def tls(cfg: ImageConfig) -> list[str]:
    return [] if cfg.tls_verify else ["--tls-verify=false"]


def pull(runner: Runner, cfg: ImageConfig, meta: dict[str, Any]) -> str | None:
    """Bring a release's image back: by a registry digest first (immutable), then by its
    reference; returns why it failed, or None when the image with the recorded ID is there."""
    tried = []
    refs = [d for d in meta.get("repo_digests", []) if not d.startswith("localhost/")]
    for ref in [*refs, str(meta["ref"])]:
        proc = runner.run(["pull", *tls(cfg), ref], check=False)
        if proc.returncode == 0 and image_id(runner, str(meta["id"])) is not None:
            return None
        last = (proc.stderr.strip().splitlines() or ["another image came"])[-1]
        tried.append(f"{ref}: {last[-160:]}")
    return "; ".join(tried)


def encode(meta: dict[str, Any]) -> bytes:
    return (json.dumps(meta, sort_keys=True, indent=1) + "\n").encode()


def read_archive(artifact: Path, version: str) -> dict[str, Any]:
    """The image record inside a release archive, without unpacking it."""
    with tarfile.open(artifact) as tar:
        try:
            member = tar.extractfile(IMAGE_FILE)
        except KeyError:
            member = None
        if member is None:
            raise ConfigError(
                f"release {version} carries no image: it was made without `image` in rollwise.yaml",
                where=f"release {version}",
                hint="create a new release with `image` set",
            )
        data: dict[str, Any] = json.loads(member.read())
        return data


def read(release_dir: Path, version: str) -> dict[str, Any]:
    path = release_dir / IMAGE_FILE
    if not path.is_file():
        raise ConfigError(
            f"release {version} carries no image: it was made without `image` in rollwise.yaml",
            where=f"release {version}",
            hint="create a new release with `image` set; a container target "
            "runs only releases made as images",
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data
