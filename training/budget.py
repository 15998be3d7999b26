"""When a run stops and what its learning rate is: one decision, made on rank 0, shared.

A run has a step budget (``--steps``, or ``--epochs`` times the steps in an epoch), a
wall-time budget (``--max-minutes``, for the whole run across resumes), or both. Each step
starts with one figure, the run's **total steps**:

- a step budget alone: that number, known up front;
- a wall-time budget: rank 0 reads its clock and projects the total from the pace so far,
  ``ceil(step * max_minutes / minutes)`` (at least ``step + 1`` while time is left, exactly
  ``step`` once it is spent). Then ``step / total`` is the share of the time spent (to
  within one step), so the cosine schedule anneals over the wall-time budget;
- both: the smaller.

The run stops when ``step >= total``, and the learning rate is a pure function of
``(step, total)`` (``lr_factor``). Rank 0 alone reads the clock and broadcasts the total
before every step, so every rank stops at the same step and applies the same learning
rate: no rank waits forever in a collective the others have left, and the DDP copies
cannot drift apart by annealing on different clocks. Every step rather than every few,
because it is exact and cheap: one int64, beside the gradient all-reduce DDP does anyway,
and each step already waits for its losses (``.item()``). One process goes through the
same code and skips the broadcast. A step budget never reads the clock, so a run with one
resumes bit-exactly.

Ctrl-C is a budget too: the first SIGINT ends the run after the step in progress (rank 0
sets the total to the current step, so under DDP every rank stops there), with a
checkpoint; a second one stops at once. SIGTERM (a scheduler taking the machine back, a
``kill``, ``docker stop``) does the same: its default would end the process mid-write,
with no last.pt of the steps since the previous checkpoint.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from srdeploy.training import distributed as dist
from srdeploy.training.config import TrainConfig


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Multiplier of cfg.lr for ``step`` (0-based) of a run of ``total_steps``."""
    if cfg.schedule == "step":
        return 0.1 if step >= cfg.lr_step else 1.0
    if cfg.schedule == "cosine":
        progress = min(step / max(total_steps, 1), 1.0)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


class Budget:
    """The run's total-steps figure, decided on rank 0 and shared (see the module docstring).

    ``minutes_before``: the wall time earlier sessions of this run spent (from last.pt);
    ``clock``: seconds, read on rank 0 only.
    """

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int, minutes_before: float, env: dist.DistEnv,
                 clock: Callable[[], float] = time.monotonic, interrupted: Callable[[], str | None] = lambda: None):
        # --steps wins over --epochs; epochs are whole epochs of steps_per_epoch steps each.
        self.planned = cfg.steps if cfg.steps is not None else (cfg.epochs * steps_per_epoch if cfg.epochs else None)
        self.planned_by = "steps" if cfg.steps is not None else "epochs"
        self.max_minutes, self.minutes_before, self.env = cfg.max_minutes, minutes_before, env
        if self.planned is None and self.max_minutes is None:
            raise ValueError("a run needs a step or a wall-time budget")
        self.clock, self.interrupted = clock, interrupted
        self.t_start = clock()
        self.stopped_by: str | None = None  # rank 0, once the run ends: "steps", "epochs", "max_minutes" or "interrupt"

    def minutes(self) -> float:
        """Wall time of the whole run so far (rank 0's clock is the one that counts)."""
        return self.minutes_before + (self.clock() - self.t_start) / 60

    def total_steps(self, step: int) -> int:
        """The total for the step about to run; the same on every rank."""
        total = self._decide(step) if self.env.is_main else 0
        return dist.broadcast_from_main(total, self.env)

    def _decide(self, step: int) -> int:
        if self.interrupted():
            self.stopped_by = "interrupt"
            return step
        total = self.planned
        if self.max_minutes is not None:
            spent = self.minutes()
            if spent >= self.max_minutes:
                by_time = step  # the time is spent: stop now
            else:  # the pace so far, and at least one more step while time is left
                by_time = max(step + 1, math.ceil(step * self.max_minutes / spent) if spent > 0 else 0)
            if total is None or by_time < total:
                total = by_time
            if step >= by_time:
                self.stopped_by = "max_minutes"
        if step >= total and self.stopped_by is None:
            self.stopped_by = self.planned_by
        return total


STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


@contextmanager
def ctrl_c_ends_the_step(announce: bool = True) -> Iterator[Callable[[], str | None]]:
    """While the run trains: the first SIGINT or SIGTERM only records itself (the returned
    callable gives "Ctrl-C" or "SIGTERM" from then on, None before) so that the loop can
    stop between steps and checkpoint; a second one raises KeyboardInterrupt as usual.
    Outside the main thread (where Python cannot take signals) nothing is recorded.
    ``announce``: say so on stderr (rank 0 alone, under DDP)."""
    by: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def first(signum, frame) -> None:
        by.append(STOP_SIGNALS[signum])
        at = time.monotonic()

        def again(signum, frame) -> None:
            # A copy within a second is not a second press: torchrun forwards the
            # terminal's SIGINT to ranks that got it from the terminal already.
            if time.monotonic() - at > 1.0:
                raise KeyboardInterrupt

        for stop in STOP_SIGNALS:
            signal.signal(stop, again)
        if announce:
            print(f"\n{by[0]}: stopping after this step and writing last.pt ({by[0]} again stops at once, without it)",
                  file=sys.stderr, flush=True)

    before = {stop: signal.signal(stop, first) for stop in STOP_SIGNALS}
    try:
        yield lambda: by[0] if by else None
    finally:
        for stop, handler in before.items():
            signal.signal(stop, handler)


def ignore_ctrl_c(worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: the terminal's Ctrl-C reaches the workers too, and a
    worker that dies of it fails the batch the main process still needs to finish its step."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
