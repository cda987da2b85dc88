"""The counters and histograms the proxy feeds, and one method per event that feeds them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from . import names
from .alerts import AlertCounts
from .cluster import ClusterGauges, ClusterSource, ClusterView
from .known import Labels, known_series
from .names import operation_name
from .tallies import SeriesTallies
from .usage import token_counts
from .vocabulary import LabelVocabulary

# Buckets (seconds) advised by the GenAI conventions for gen_ai.client.operation.duration and
# gen_ai.server.time_to_first_token.
LATENCY_BUCKETS = (
    *(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92),
    *(163.84, 327.68),  # up to the longest request deadline
)
FIRST_TOKEN_BUCKETS = (
    *(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
    *(30.0, 60.0, 120.0),  # past every default first-event ceiling
)


class Tally:
    """A monotonic counter summed in a plain dict and handed to OpenTelemetry only when the
    metrics are collected (an observable counter): adding costs a dict update instead of the
    SDK's per-call attribute hashing and locking, measured at about 12 us per ``add``."""

    __slots__ = ("_counts",)

    def __init__(self, meter: Meter, name: str, description: str, unit: str = "") -> None:
        self._counts: dict[Labels, int] = {}
        meter.create_observable_counter(name, [self._observe], unit=unit, description=description)

    def add(self, amount: int, labels: Labels) -> None:
        counts = self._counts
        counts[labels] = counts.get(labels, 0) + amount

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        # A copy: an OTLP export collects on its own thread while the loop keeps counting.
        return [Observation(count, dict(labels)) for labels, count in self._counts.copy().items()]


class MetricsRecorder:
    """Every metric of one proxy instance. Each method is cheap and never raises on odd
    input; model, route and status labels come from ``vocabulary`` (bounded sets, so no
    caller can grow the series; no API key ever becomes a label)."""

    def __init__(self, meter: Meter, models: Iterable[str] = ()) -> None:
        self.vocabulary = LabelVocabulary(models)
        self.alerts = AlertCounts()
        self._cluster: ClusterSource | None = None
        ClusterGauges(meter, self._cluster_view)
        self._requests = Tally(
            meter, names.REQUESTS, "Client requests answered, by serving model and status."
        )
        self._failovers = Tally(
            meter, names.FAILOVER_EVENTS, "Requests moved from one model of a chain to the next."
        )
        self._transitions = Tally(
            meter, names.BREAKER_TRANSITIONS, "Circuit breaker state changes seen."
        )
        self._retries = Tally(meter, names.RETRIES, "Same-model retries of an upstream attempt.")
        self._sheds = Tally(
            meter, names.SHEDS, "Requests the proxy answered itself without going upstream."
        )
        self._latency = meter.create_histogram(
            names.UPSTREAM_LATENCY,
            unit="s",
            description="Time from sending an upstream attempt to its response headers.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self._first_token = meter.create_histogram(
            names.TIME_TO_FIRST_TOKEN,
            unit="s",
            description="Time from sending a streamed attempt to its first content event.",
            explicit_bucket_boundaries_advisory=FIRST_TOKEN_BUCKETS,
        )
        self._tokens = Tally(meter, names.TOKENS, "Tokens reported in usageMetadata.", "{token}")
        self._credential_alerts = Tally(
            meter, names.CREDENTIAL_ALERTS, "401/403 answers from the upstream."
        )
        self._quota_alerts = Tally(
            meter, names.QUOTA_ALERTS, "Per-day quotas found exhausted (429)."
        )
        self._schema_drift = Tally(
            meter, names.SCHEMA_DRIFT, "JSON-mode answers that broke the requested schema."
        )
        self._continuations = Tally(
            meter, names.STREAM_CONTINUATIONS, "Broken streams finished on another model."
        )
        self._deadline_misses = Tally(
            meter,
            names.DEADLINE_MISSES,
            "Upstream waits that ran out, by the limit that fired (headers, first_event, "
            "learned, gap).",
        )
        self._resends: Callable[[], int] | None = None
        meter.create_observable_counter(
            names.UPSTREAM_RESENDS,
            [self._observe_resends],
            description="Requests sent once more on a new connection because the reused one "
            "had closed before answering (not counted against any model).",
        )
        self._per_model: dict[tuple[str, str], dict[str, str]] = {}
        """Histogram attributes by (model label, operation), built once: the SDK hashes them
        anyway."""
        self.tallies = SeriesTallies()
        """The last interval's counts for the cluster series, taken by the heartbeat."""

    def declare(self, routes: Mapping[str, Sequence[str]]) -> None:
        """Export at 0, from now on, every counter series whose labels the configured
        ``routes`` determine (see ``known_series``), so that ``rate()`` and ``increase()`` see
        the first event; and count the series tallies of unknown names as ``other``."""
        known = known_series(routes)
        for tally, label_sets in (
            (self._requests, known.requests),
            (self._failovers, known.failovers),
            (self._transitions, known.transitions),
            (self._sheds, known.sheds),
        ):
            for labels in label_sets:
                tally.add(0, labels)
        self.tallies.know({*routes, *(m for chain in routes.values() for m in chain)})

    # -- gauges ---------------------------------------------------------------------------------

    def watch_cluster(self, source: ClusterSource | None) -> None:
        """Feed the active-model, breaker-state and store-degraded gauges from ``source``
        (for example ``lambda: view_of(coordinator)``); None stops reporting them."""
        self._cluster = source

    def watch_resends(self, source: Callable[[], int] | None) -> None:
        """Feed the resend counter from ``source`` (the upstreams' running total)."""
        self._resends = source

    def _observe_resends(self, options: CallbackOptions) -> Iterable[Observation]:
        source = self._resends
        return [Observation(source() if source is not None else 0)]

    def _cluster_view(self) -> ClusterView | None:
        source = self._cluster
        return None if source is None else source()

    # -- counters and histograms -----------------------------------------------------------------

    def count_request(
        self,
        model: str | None,
        status_code: int,
        *,
        route: str | None = None,
        method: str | None = None,
    ) -> None:
        """One client request answered: ``model`` served it (None when no model did),
        ``route`` is the model the client asked for, ``method`` the Gemini method."""
        self._requests.add(
            1,
            (
                (names.MODEL, self.vocabulary.model(model)),
                (names.STATUS_CODE, self.vocabulary.status(status_code)),
                (names.ROUTE, self.vocabulary.model(route)),
                (names.GEN_AI_OPERATION_NAME, operation_name(method)),
            ),
        )

    def failover(self, route: str, from_model: str, to_model: str, reason: str) -> None:
        """A request of ``route`` left ``from_model`` for ``to_model``; ``reason``, why
        ``from_model`` did not serve: ``failure``, ``breaker_open``, ``input_too_long``,
        ``spillover`` or ``rate_limited`` (a 429 on shared capacity, to the model in another
        location). A broken stream finished elsewhere counts in ``stream_continuation``."""
        self._failovers.add(
            1,
            (
                (names.ROUTE, self.vocabulary.model(route)),
                (names.FROM_MODEL, self.vocabulary.model(from_model)),
                (names.TO_MODEL, self.vocabulary.model(to_model)),
                (names.REASON, reason),
            ),
        )
        self.tallies.add(route, to_model, "fallbacks")

    def breaker_transition(self, model: str, from_state: str, to_state: str) -> None:
        """This replica saw ``model``'s breaker move from one state to another."""
        self._transitions.add(
            1,
            (
                (names.MODEL, self.vocabulary.model(model)),
                (names.FROM_STATE, from_state),
                (names.TO_STATE, to_state),
            ),
        )

    def retry(self, model: str, reason: str) -> None:
        """An attempt on ``model`` is retried on the same model (reason e.g. ``upstream_error``,
        ``timeout``, ``connection``, ``rate_limited`` for a waited-out 429)."""
        self._retries.add(1, ((names.MODEL, self.vocabulary.model(model)), (names.REASON, reason)))

    def shed(self, model: str, reason: str) -> None:
        """The proxy answered for ``model`` itself (reason ``cooldown``, ``pacing``,
        ``throttle``, ``budget`` or ``breakers_open``)."""
        self._sheds.add(1, ((names.MODEL, self.vocabulary.model(model)), (names.REASON, reason)))
        self.tallies.add("", model, "shed")

    def upstream_latency(self, model: str, seconds: float, method: str | None = None) -> None:
        """An upstream attempt on ``model`` got its response headers after ``seconds``."""
        self._latency.record(max(0.0, seconds), self._model_attributes(model, method))

    def time_to_first_token(self, model: str, seconds: float, method: str | None = None) -> None:
        """A streamed attempt on ``model`` delivered its first content event after ``seconds``."""
        self._first_token.record(max(0.0, seconds), self._model_attributes(model, method))

    def token_usage(self, model: str, usage: Mapping[str, object] | None) -> dict[str, int]:
        """Count an answer's ``usageMetadata`` (a stream's last one: its counts are totals).
        Returns the counts by token type."""
        counts = token_counts(usage)
        for kind, count in counts.items():
            self._tokens.add(
                count,
                ((names.MODEL, self.vocabulary.model(model)), (names.GEN_AI_TOKEN_TYPE, kind)),
            )
        return counts

    def credential_alert(self, model: str, status_code: int) -> None:
        """The upstream answered 401/403 for ``model``: a key problem, not a model one."""
        label = self.vocabulary.model(model)
        self.alerts.credential[label] += 1
        self._credential_alerts.add(
            1, ((names.MODEL, label), (names.STATUS_CODE, str(status_code)))
        )

    def quota_alert(self, model: str) -> None:
        """A per-day quota for ``model`` is exhausted."""
        label = self.vocabulary.model(model)
        self.alerts.quota[label] += 1
        self._quota_alerts.add(1, ((names.MODEL, label),))

    def schema_drift(self, model: str, *, streamed: bool = False) -> None:
        """A JSON-mode answer from ``model`` was not the JSON asked for."""
        label = self.vocabulary.model(model)
        self.alerts.schema_drift[label] += 1
        self._schema_drift.add(
            1,
            (
                (names.MODEL, label),
                (names.STREAMED, "true" if streamed else "false"),
            ),
        )

    def stream_continuation(self, from_model: str, to_model: str | None) -> None:
        """A stream from ``from_model`` broke; ``to_model`` finished it (None: none could,
        the client got the error)."""
        self._continuations.add(
            1,
            (
                (names.FROM_MODEL, self.vocabulary.model(from_model)),
                (names.TO_MODEL, self.vocabulary.model(to_model)),
                (names.OUTCOME, "continued" if to_model else "failed"),
            ),
        )

    def deadline_miss(self, model: str, deadline: str) -> None:
        """An attempt on ``model`` waited out a limit: ``headers``, ``first_event`` (the
        configured ceiling), ``learned`` (the model's learned first-event deadline) or ``gap``."""
        self._deadline_misses.add(
            1, ((names.MODEL, self.vocabulary.model(model)), (names.DEADLINE, deadline))
        )

    def _model_attributes(self, model: str, method: str | None) -> dict[str, str]:
        key = (self.vocabulary.model(model), operation_name(method))
        attributes = self._per_model.get(key)
        if attributes is None:
            attributes = {names.MODEL: key[0], names.GEN_AI_OPERATION_NAME: key[1]}
            self._per_model[key] = attributes
        return attributes
