"""What the page offers: the models it was started with and the engines this machine runs.

A provider is offered when its software is here (ONNX Runtime lists its execution
provider, OpenVINO imports); whether a GPU provider then starts, and whether a provider
can run a given model and precision, is the Upscaler's decision, and its one-line error
is shown on the page. bf16 is offered only where OpenVINO can compute in it (the same
test srdeploy.runtime.upscaler applies for ``auto``); int8 and fp16 are properties of a
model file and run under ``auto``.
"""

from __future__ import annotations

from dataclasses import dataclass

from srdeploy.runtime import engines, openvino_engine, zoo
from srdeploy.runtime.cpus import cpu_info
from srdeploy.runtime.providers import EXECUTION_PROVIDERS, available_providers


@dataclass(frozen=True)
class Choices:
    """The page's drop-downs; the first model is the one loaded before the server starts."""

    models: tuple[str, ...]  # shipped names (srresnet, srgan) and model files as given
    providers: tuple[str, ...]  # "auto" first, then those installed here
    precisions: tuple[str, ...]  # "auto" first
    machine: str  # the CPU and its flags that matter, as every speed figure names it


def machine_choices(models: tuple[str, ...] = ("default",), provider: str = "auto", precision: str = "auto") -> Choices:
    """The choices on this machine. ``models`` as ``--model`` takes them (``default`` is
    listed under its shipped name); shipped models not named are offered after them.
    ``provider`` and ``precision``, the command's, which the page opens with, are always
    among the choices (``--precision int8`` for an int8 model, say)."""
    named = [zoo.ALIASES.get(m, m) for m in models]
    offered = list(dict.fromkeys(named + zoo.shipped_models()))
    return Choices(
        models=tuple(offered),
        providers=_with("auto", installed_providers(), provider),
        precisions=_with("auto", ["fp32", *(["bf16"] if openvino_bf16() else [])], precision),
        machine=cpu_info().describe(),
    )


def installed_providers() -> list[str]:
    """The providers of srdeploy.runtime.engines.PROVIDERS whose software is installed."""
    listed = available_providers()
    found = {name for name, execution_provider in EXECUTION_PROVIDERS.items() if execution_provider in listed}
    if openvino_engine.available():
        found.add("openvino")
    return [p for p in engines.PROVIDERS if p in found]


openvino_bf16 = openvino_engine.native_bf16  # whether OpenVINO computes in bf16 here


def _with(first: str, items: list[str], requested: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys([first, *items, requested]))
