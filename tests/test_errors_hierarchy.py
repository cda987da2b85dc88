"""Every exception the proxy defines belongs to its one hierarchy, under its layer's base."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import proxy
from proxy import errors
from proxy.errors import (
    ClusterError,
    ConfigError,
    GeminiBreakerError,
    OperatorError,
    PipelineError,
    SimulatorError,
    TransportError,
)

#: Modules that run the program when imported.
ENTRY_POINTS = {"proxy.__main__"}


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined (not just imported) in a module of ``proxy``."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(proxy.__path__, "proxy."):
        if info.name in ENTRY_POINTS:
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_exception_class_in_proxy_derives_from_the_root() -> None:
    classes = _exception_classes()
    assert len(classes) >= 20, "the walk found too few classes: is it still walking proxy?"
    outside = sorted(
        name for name, cls in classes.items() if not issubclass(cls, GeminiBreakerError)
    )
    assert outside == []


def test_every_class_below_the_root_sits_under_one_layer_base() -> None:
    layers = (
        ConfigError,
        TransportError,
        ClusterError,
        PipelineError,
        OperatorError,
        SimulatorError,
    )
    for name, cls in _exception_classes().items():
        if cls is GeminiBreakerError or cls in layers:
            continue
        bases = [layer for layer in layers if issubclass(cls, layer)]
        assert len(bases) == 1, f"{name} is under {bases}, not exactly one layer base"


def test_the_layer_bases_are_exactly_the_root_s_direct_children() -> None:
    direct = {
        cls
        for cls in vars(errors).values()
        if inspect.isclass(cls) and GeminiBreakerError in cls.__bases__
    }
    assert direct == {
        ConfigError,
        TransportError,
        ClusterError,
        PipelineError,
        OperatorError,
        SimulatorError,
    }


def test_errors_callers_catch_as_builtins_stay_builtins() -> None:
    from proxy.cluster.codec import PayloadError
    from proxy.simulator.content import RequestError
    from proxy.simulator.paging import PageError

    for cls in (ConfigError, PayloadError, RequestError, PageError):
        assert issubclass(cls, ValueError), cls
