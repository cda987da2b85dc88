"""The proxy's exception hierarchy: one root, one base per layer.

Every exception class defined in ``proxy`` derives from one of these bases, so a caller can
tell the proxy's own failures from a bug (a builtin error) and from a library's exceptions.
"""

from __future__ import annotations


class GeminiBreakerError(Exception):
    """The root of every exception the proxy defines."""


class ConfigError(GeminiBreakerError, ValueError):
    """The configuration is invalid; the message names the key."""


class TransportError(GeminiBreakerError):
    """The upstream HTTP client or the egress proxy failed."""


class ClusterError(GeminiBreakerError):
    """The Redis store, its scripts or the state kept there failed."""


class PipelineError(GeminiBreakerError):
    """A request could not be carried through: its body, its client or its stream failed."""


class OperatorError(GeminiBreakerError):
    """An operator's action (admin API, CLI, demo) was refused or failed."""


class SimulatorError(GeminiBreakerError):
    """The upstream simulator refused a request or a control call."""
