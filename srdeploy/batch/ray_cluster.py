"""The Ray cluster a ``srdeploy upscale --ray`` run uses: connecting to it, and sizing the
actor pool from its resources (or the options), so that every actor can be placed.

Imported only when ``--ray`` is given; Ray comes with the ``ray`` extra.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import socket
import sys
import threading
from dataclasses import dataclass

from srdeploy.io.streams import native_stderr_to
from srdeploy.runtime import engines

LEVEL_NOTICE = "Set ray log level from environment variable"
CONNECT_TIMEOUT_S = 10.0  # for the head's port to answer, before ray.init is tried


class ClusterError(RuntimeError):
    """The cluster cannot run this batch (no address, too few resources): one line."""


def failure_line(error: BaseException) -> str:
    """What an error says, in one line. Through Ray's wrappers to the error a worker raised
    (RayTaskError keeps it, under the worker's traceback, as ``cause``; Ray Data chains it
    as ``__cause__``), e.g. the ModelError of an actor whose node lacks the model file."""
    from ray.exceptions import RayError

    seen: set[int] = set()
    while isinstance(error, RayError) and id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None)
        inner = inner if isinstance(inner, BaseException) else error.__cause__
        if inner is None:
            break
        error = inner
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@dataclass(frozen=True)
class Pool:
    """The actor pool: each actor holds one Upscaler on ``cpus`` logical CPUs (its engine's
    threads) and ``gpus`` GPUs (1 for the CUDA providers, else 0)."""

    actors: int
    cpus: float
    gpus: int

    @property
    def threads(self) -> int:
        return max(1, math.floor(self.cpus))

    def describe(self) -> dict:
        return {"actors": self.actors, "cpus_per_actor": self.cpus, "gpus_per_actor": self.gpus}


def before_ray_import(address: str) -> None:
    """Settings Ray reads once, when it is first imported: call before anything imports it
    (a check that the package is installed included)."""
    if address == "local":
        # With this off, Ray's get_node_ip_address answers 127.0.0.1: a cluster for one
        # run on one machine listens on loopback, not on the machine's network address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Ray's C++ core writes its errors to the driver's stderr, and Ray Data makes it write
    # one for every actor pool (ray-project/ray#57733) through our bar. Failures still
    # come as Python exceptions. A RAY_BACKEND_LOG_LEVEL the user set wins.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")


def connect(address: str) -> None:
    """``local``: start a cluster on this machine for the run (loopback only); ``auto``: the
    cluster this machine belongs to; else a Ray address (``HOST:PORT``, ``ray://HOST:PORT``)."""
    before_ray_import(address)  # in case nothing imported Ray yet; the CLI calls it first
    if address not in ("local", "auto"):
        reach(address)
    import ray

    options = dict(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
    if not isinstance(sys.stdout, _ClusterNoticesToStderr):  # before init: it starts the notice thread, which may
        sys.stdout = _ClusterNoticesToStderr(sys.stdout)  # print at once (a worker of an earlier job that died)
    try:
        with _without_level_notice():
            if address == "local":
                from srdeploy.runtime.cpus import available_cpus

                # a new one, never a running one; on loopback even if Ray was imported before the setting above
                ray.init(address="local", num_cpus=available_cpus(), _node_ip_address="127.0.0.1", **options)
            else:
                ray.init(address=address, **options)
    except (ConnectionError, ValueError, RuntimeError) as e:
        disconnect()
        raise ClusterError(f"cannot connect to the Ray cluster at {address!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    quiet_ray_data()


def reach(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ClusterError unless ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``) takes a
    TCP connection: ray.init retries an address nothing listens on for ever."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"--ray {address}: give local, auto or a cluster's HOST:PORT (e.g. 10.0.0.5:6379, ray://10.0.0.5:10001)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e) or type(e).__name__)
        raise ClusterError(f"cannot reach a Ray cluster at {address} ({reason}); is its head running (ray start --head)?") from None


@contextlib.contextmanager
def _without_level_notice():
    """Starting, the C++ core says on stderr that it read RAY_BACKEND_LOG_LEVEL: stderr
    is caught meanwhile, and all but that line is passed on."""
    caught = io.StringIO()
    try:
        with native_stderr_to(caught):
            yield
    finally:
        for line in caught.getvalue().splitlines(keepends=True):
            if LEVEL_NOTICE not in line:
                sys.stderr.write(line)


def quiet_ray_data() -> None:
    """One progress bar on the driver (ours), and no execution log lines from Ray Data."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def disconnect() -> None:
    """Leave the cluster; a ``local`` one stops with its processes."""
    import ray

    if isinstance(sys.stdout, _ClusterNoticesToStderr):
        sys.stdout.all_to_stderr = True  # shutting down, Ray flushes the notices it held back as repeats, from this thread
    if ray.is_initialized():
        ray.shutdown()
    if isinstance(sys.stdout, _ClusterNoticesToStderr):
        sys.stdout = sys.stdout.stdout


# The driver thread from which Ray prints the cluster's error notices ("(raylet) Task
# MapWorker... failed", when an actor's worker dies and Ray restarts it), to stdout.
NOTICE_THREAD = "ray_listen_error_messages"


class _ClusterNoticesToStderr:
    """sys.stdout while connected: what Ray's notice thread prints goes to stderr, so
    stdout keeps the batch's one line per input (log_to_driver=False does not cover it)."""

    def __init__(self, stdout):
        self.stdout = stdout
        self.all_to_stderr = False  # while Ray shuts down: the batch has printed its lines by then

    def write(self, text: str) -> int:
        if self.all_to_stderr or threading.current_thread().name == NOTICE_THREAD:
            return sys.stderr.write(text)
        return self.stdout.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stdout, name)


def nodes() -> list[dict[str, float]]:
    """The logical resources of each live node."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def size_pool(provider: str, actors: int | None, cpus: float | None, nodes: list[dict[str, float]]) -> Pool:
    """The pool for ``provider``: by default one actor per GPU for the CUDA providers (with
    one CPU each), else one per CPU; refused when its actors cannot all be placed, which
    would leave Ray Data waiting for them for ever."""
    gpus = 1 if provider in engines.GPU_PROVIDERS else 0
    cpus = cpus if cpus is not None else 1.0
    if cpus <= 0:
        raise ClusterError(f"--cpus-per-actor must be positive, got {cpus}")
    room = sum(_fits(node, cpus, gpus) for node in nodes)  # actors the nodes can place
    if room == 0:
        need = f"{cpus:g} CPU(s)" + (" and a GPU" if gpus else "")
        raise ClusterError(f"no node of the Ray cluster has {need} for one actor ({_resources(nodes)})")
    actors = actors if actors is not None else room
    if actors < 1:
        raise ClusterError(f"--actors must be at least 1, got {actors}")
    if actors > room:
        raise ClusterError(f"{actors} actors of {cpus:g} CPU(s){' and 1 GPU' if gpus else ''} do not fit the Ray cluster ({_resources(nodes)}): at most {room}")
    return Pool(actors, cpus, gpus)


def _fits(node: dict[str, float], cpus: float, gpus: int) -> int:
    by_cpu = math.floor(node.get("CPU", 0) / cpus + 1e-9)
    return min(by_cpu, math.floor(node.get("GPU", 0))) if gpus else by_cpu


def _resources(nodes: list[dict[str, float]]) -> str:
    cpus = sum(n.get("CPU", 0) for n in nodes)
    gpus = sum(n.get("GPU", 0) for n in nodes)
    return f"{len(nodes)} node(s), {cpus:g} CPUs, {gpus:g} GPUs"
