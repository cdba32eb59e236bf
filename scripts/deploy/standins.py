"""Stand-ins for the base images the Dockerfiles and the compose file name, built from Debian's
packages on a host that reaches no image registry.

One ``debootstrap --variant=minbase`` of bookworm is imported once (``podman import``) as
:data:`BASE`; each stand-in is a short Containerfile on it, tagged with the official image's
name so that ``api/Dockerfile``, ``worker/Dockerfile`` and ``docker-compose.yml`` build and run
unchanged. Each one behaves as the official image does where structq relies on it, and says
what it is in its labels (``org.structq.standin``): Debian's packages are not the official
images' builds, nor always their versions (bookworm's Python is 3.11.2, not 3.11.11).

Built once and kept: a stand-in that exists is not built again (``--rebuild`` to force it).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["BASE", "STANDINS", "Standin", "build_all", "build_base", "host_pip_volumes"]

BASE = "localhost/structq-standin/bookworm:minbase"
_MIRROR = "http://deb.debian.org/debian"
_APT = (
    "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
    "--no-install-recommends {packages} && rm -rf /var/lib/apt/lists/*"
)


@dataclasses.dataclass(frozen=True)
class Standin:
    name: str  # the official image's name, as the Dockerfile or compose file writes it
    packages: tuple[str, ...]
    what: str  # what it really is, for its label and docs/deploy.md
    tail: str  # the rest of its Containerfile


STANDINS = (
    Standin(
        "docker.io/library/python:3.11.11-slim-bookworm",
        ("python3", "python3-pip", "python3-venv", "ca-certificates"),
        "Debian bookworm's python3 3.11.2 and pip 23.0, as `python` and `pip` on PATH",
        # As the official image: `python` and `pip` on PATH, pip may install system-wide.
        "RUN ln -s /usr/bin/python3 /usr/local/bin/python && ln -s /usr/bin/pip3"
        " /usr/local/bin/pip && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED\n"
        'CMD ["python3"]\n',
    ),
    Standin(
        "docker.io/library/redis:7.2.5-bookworm",
        ("redis-server", "redis-tools"),
        "Debian bookworm's redis-server 7.0",
        # As the official image's entrypoint: arguments alone are redis-server's, and
        # without a config file protected mode is off (no loopback-only refusal).
        "RUN mkdir -p /data && printf '%s\\n' '#!/bin/sh' 'set -e'"
        ' \'case "$1" in -*) set -- redis-server "$@";; esac\''
        ' \'if [ "$1" = redis-server ]; then case "$2" in *.conf) ;; *) shift;'
        ' set -- redis-server --protected-mode no "$@";; esac; fi\''
        " 'exec \"$@\"' > /usr/local/bin/docker-entrypoint.sh"
        " && chmod +x /usr/local/bin/docker-entrypoint.sh\n"
        'WORKDIR /data\nEXPOSE 6379\nENTRYPOINT ["docker-entrypoint.sh"]\nCMD ["redis-server"]\n',
    ),
    Standin(
        "docker.io/prom/prometheus:v3.5.0",
        ("prometheus", "wget", "ca-certificates"),
        "Debian bookworm's prometheus 2.42",
        "RUN mkdir -p /prometheus && chown nobody /prometheus\n"
        "WORKDIR /prometheus\nUSER nobody\nEXPOSE 9090\n"
        'ENTRYPOINT ["/usr/bin/prometheus"]\n'
        'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]\n',
    ),
)


def _podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], check=check, text=True, capture_output=True)


def exists(image: str) -> bool:
    return _podman("image", "exists", image, check=False).returncode == 0


def _build_base() -> None:
    """debootstrap bookworm (minbase), imported as :data:`BASE`."""
    with tempfile.TemporaryDirectory(prefix="structq-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), _MIRROR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "."], check=True)
        _podman(
            "import",
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            'CMD ["bash"]',
            str(tarball),
            BASE,
        )


def _build(standin: Standin) -> None:
    containerfile = (
        f"FROM {BASE}\n"
        f'LABEL org.structq.standin="{standin.what} (a stand-in for {standin.name})"\n'
        + _APT.format(packages=" ".join(standin.packages))
        + "\n"
        + standin.tail
    )
    with tempfile.TemporaryDirectory(prefix="structq-standin-") as tmp:
        (Path(tmp) / "Containerfile").write_text(containerfile)
        _podman("build", "--network", "host", "-t", standin.name, tmp)


def host_pip_volumes() -> list[str]:
    """``podman build -v`` arguments giving a build's RUN steps the host's pip settings: its
    config files (system-wide and root's), the certificates they name, and the local folders
    and ``file://`` indexes they point at, read-only. Nothing of it lands in an image."""
    mounts: dict[Path, str] = {}
    configs = ((Path("/etc/pip.conf"), "/etc/pip.conf"),)
    configs += ((Path.home() / ".config/pip/pip.conf", "/root/.config/pip/pip.conf"),)
    for conf, target in configs:
        if not conf.is_file():
            continue
        mounts[conf] = target
        for word in conf.read_text().replace("=", " ").split():
            path = Path(word.removeprefix("file://"))
            if path.is_absolute() and path.exists():
                path = path.parent if path.name == "simple" else path  # an index's root
                mounts[path.parent if path.is_file() else path] = ""
    volumes = []
    for path, target in mounts.items():
        volumes += ["-v", f"{path}:{target or path}:ro"]
    return volumes


def build_base(rebuild: bool = False) -> dict[str, float]:
    """:data:`BASE` imported unless it exists (again with ``rebuild``); the seconds it took.
    It needs no container runtime, the stand-ins on it do (their RUN steps)."""
    if shutil.which("debootstrap") is None:
        raise SystemExit("standins: debootstrap is not installed (apt-get install debootstrap)")
    if exists(BASE) and not rebuild:
        return {}
    started = time.monotonic()
    _build_base()
    return {BASE: time.monotonic() - started}


def build_all(rebuild: bool = False) -> dict[str, float]:
    """Every stand-in that is missing (all of them with ``rebuild``); seconds each took."""
    took = build_base(rebuild)
    for standin in STANDINS:
        if rebuild or not exists(standin.name):
            started = time.monotonic()
            _build(standin)
            took[standin.name] = time.monotonic() - started
    return took


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="build them again")
    args = parser.parse_args(argv)
    for name, seconds in build_all(args.rebuild).items():
        print(f"built {name} in {seconds:.0f} s")
    for standin in STANDINS:
        print(f"{standin.name}: {standin.what}")


if __name__ == "__main__":
    sys.exit(main())
