"""Everything one simulator instance remembers; created by ``create_simulator_app``."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from proxy.simulator.attempts import AttemptLog
from proxy.simulator.caches import CacheStore
from proxy.simulator.catalogue import ModelSpec
from proxy.simulator.config import SimulatorConfig
from proxy.simulator.faults import FaultBook
from proxy.simulator.files import FileStore
from proxy.simulator.quota import QuotaBook
from proxy.simulator.vertex_jobs import VertexJobs


class SimulatorState:
    """The catalogue, faults, quotas, files, caches and the attempt log of one simulator."""

    def __init__(
        self,
        config: SimulatorConfig,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.wall_clock = wall_clock
        self.catalogue: dict[str, ModelSpec] = dict(config.models)
        self.rng = random.Random(config.seed)
        self.faults = FaultBook(self.rng)
        self.quotas = QuotaBook()
        self.files = FileStore(seed=config.seed)
        self.caches = CacheStore(seed=config.seed)
        self.jobs = VertexJobs(seed=config.seed)
        self.attempts = AttemptLog(max_entries=config.max_attempts)
        self.install_configured()

    def install_configured(self) -> None:
        """(Re)install the configured faults and quotas, their schedules starting now.

        Called again when the server starts, so "down for 30 s" counts from start-up, not
        from when the app object was built.
        """
        self.faults.replace_all(self.config.faults, self.clock())
        self.quotas.set_all(self.config.quotas)
