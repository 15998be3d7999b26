"""A real two-node Ray cluster on loopback and a real S3 server (moto) on loopback, for the
``--ray`` tests: started and stopped by the tests, bounded in time, no process left behind.

Import this before ray: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported.
With it off, Ray's node address is 127.0.0.1 (not the machine's network address), so the
nodes, the driver and the workers talk over loopback only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from conftest import SCRIPTS  # noqa: E402

# 2 logical CPUs a node: with 1, Ray Data's resource budget can leave a stage waiting
# behind the actor pool for ever (docs/scale-out.md); tests run 1-CPU actors.
CPUS_PER_NODE = 2
OBJECT_STORE_BYTES = 80 * 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(text: str) -> list[int]:
    """PIDs of this machine's other processes whose command line holds ``text``, or which
    hold a file open whose path does: Ray's workers retitle themselves (``ray::IDLE``,
    ``ray::MapWorker(...)``) but keep their log files in the session folder open."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes() or any(text in path for path in open_paths(entry)):
                    found.append(int(entry.name))
            except OSError:  # the process ended, or is not ours to read
                continue
    return found


def open_paths(process: Path) -> list[str]:
    """What a /proc/PID entry's open file descriptors point at."""
    paths = []
    for fd in (process / "fd").iterdir():
        try:
            paths.append(os.readlink(fd))
        except OSError:  # closed meanwhile
            continue
    return paths


def processes_titled(prefix: str) -> list[int]:
    """PIDs of the processes whose title (Ray sets ``ray::ActorClass...``) starts with ``prefix``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(prefix.encode()):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def stop_leftovers(marker: str) -> dict[int, str]:
    """Kill (by PID) what still mentions ``marker``; return their titles as they were."""
    left = {pid: title_of(pid) for pid in processes_mentioning(marker)}
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


@contextmanager
def two_node_cluster(temp_dir: Path) -> Iterator[str]:
    """A head and one worker node on loopback, ``CPUS_PER_NODE`` logical CPUs each; yields
    the address a driver connects to."""
    from ray.cluster_utils import Cluster

    from ray._common.utils import get_default_ray_temp_dir

    # The head writes its address file into Ray's default temp folder even when given its
    # own, and fails on a machine where no Ray ever ran (no /tmp/ray yet).
    Path(get_default_ray_temp_dir()).mkdir(parents=True, exist_ok=True)
    node = dict(num_cpus=CPUS_PER_NODE, object_store_memory=OBJECT_STORE_BYTES, node_ip_address="127.0.0.1")
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False, "temp_dir": str(temp_dir)})
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes(timeout=60)
        yield cluster.address
    finally:
        cluster.shutdown()
        deadline = time.monotonic() + 20  # workers exit when they notice their node has gone
        while processes_mentioning(str(temp_dir)) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = stop_leftovers(str(temp_dir))
        daemons = {pid: title for pid, title in left.items() if not title.startswith("ray::")}
        assert not daemons, f"Ray's own processes outlived the cluster's shutdown (killed): {daemons}"
        if left:  # a worker hung after its node had gone (seen once, a MapWorker): killed, and said
            warnings.warn(f"Ray workers outlived the cluster's shutdown by 20 s and were killed: {left}", stacklevel=1)


def title_of(pid: int) -> str:
    """A process's command line as ps shows it ('' once it has gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server on a free loopback port; yields its endpoint URL."""
    port = free_port()
    server = subprocess.Popen([str(SCRIPTS / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("moto_server did not start within 30 s")
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        _forget_s3_filesystems()


def _forget_s3_filesystems() -> None:
    """fsspec keeps one S3 filesystem per set of arguments, for the whole process: a test
    module after this one, with its own server on another port, would reach this one's
    (gone) through it, whatever AWS_ENDPOINT_URL it sets."""
    try:
        from s3fs import S3FileSystem
    except ImportError:
        return
    S3FileSystem.clear_instance_cache()


def srdeploy_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **extra}
