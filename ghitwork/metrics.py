"""Prometheus metrics, through prometheus_client's own registry and exposition format.

`Counts` is a subscriber of the state bus (cheap: a few additions per change); `Collector`
reads it, the dispatcher (queues, working agents, dead letters) and the usage ledger (all-time
tokens and cost, from state_dir) at scrape time. One registry per daemon, not the global one.
Imported only with `http` set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector as CollectorBase
from prometheus_client.registry import CollectorRegistry

from ghitwork.dispatch import Dispatcher
from ghitwork.state import AgentState, Change, EventsRouted, RunFinished, SourceStarted

BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
OUTCOMES = ("ok", "failed", "timeout", "stalled", "killed", "rate_limited")


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for index, bound in enumerate(BUCKETS):
            if value <= bound:
                self.counts[index] += 1

    def buckets(self) -> list[tuple[str, float]]:
        return [(f"{bound:g}", float(n)) for bound, n in zip(BUCKETS, self.counts, strict=True)] + [
            ("+Inf", float(self.count))
        ]


class Counts:
    """What happened since this instance started (Prometheus counters start at 0 each start;
    tokens and cost are the ledger's all-time totals instead)."""

    def __init__(self) -> None:
        self.events = 0
        self.deliveries: Counter[str] = Counter()
        self.runs: Counter[tuple[str, str]] = Counter()
        self.durations: dict[str, Histogram] = {}
        self.stream_starts = 0

    def __call__(self, change: Change) -> None:
        if isinstance(change, EventsRouted):
            self.events += len(change.routes)
            for _, agents in change.routes:
                for agent in agents:
                    self.deliveries[agent] += 1
        elif isinstance(change, RunFinished):
            result = change.result
            self.runs[(change.agent, result.outcome)] += 1
            self.durations.setdefault(change.agent, Histogram()).observe(result.duration)
        elif isinstance(change, SourceStarted):
            self.stream_starts += 1


class Collector(CollectorBase):
    def __init__(self, counts: Counts, dispatcher: Dispatcher) -> None:
        self.counts = counts
        self.dispatcher = dispatcher

    def collect(self) -> Iterator[Metric]:
        counts, dispatcher = self.counts, self.dispatcher
        names = sorted(dispatcher.agents)
        yield CounterMetricFamily(
            "ghitwork_events", "Events read from tail-events (routed or not).", counts.events
        )
        deliveries = CounterMetricFamily(
            "ghitwork_deliveries",
            "Events routed to an agent, once per (event, agent).",
            labels=["agent"],
        )
        for name in names:
            deliveries.add_metric([name], counts.deliveries[name])
        yield deliveries
        runs = CounterMetricFamily(
            "ghitwork_runs", "Agent runs (every attempt), by outcome.", labels=["agent", "outcome"]
        )
        for name in names:
            for outcome in OUTCOMES:
                runs.add_metric([name, outcome], counts.runs[(name, outcome)])
        yield runs
        durations = HistogramMetricFamily(
            "ghitwork_run_duration_seconds", "How long agent runs took.", labels=["agent"]
        )
        for name in names:
            histogram = counts.durations.get(name, Histogram())
            durations.add_metric([name], histogram.buckets(), histogram.sum)
        yield durations
        queue = GaugeMetricFamily(
            "ghitwork_queue_length", "Events waiting for the agent's next batch.", labels=["agent"]
        )
        for name in names:
            queue.add_metric([name], len(dispatcher.agents[name].pending))
        yield queue
        working = sum(1 for a in dispatcher.agents.values() if a.state is AgentState.WORKING)
        yield GaugeMetricFamily("ghitwork_agents_working", "Agents with a run working.", working)
        tokens = CounterMetricFamily(
            "ghitwork_tokens",
            "Tokens used, all time (kept in state_dir).",
            labels=["agent", "type"],
        )
        cost = CounterMetricFamily(
            "ghitwork_cost_usd", "USD spent, all time (kept in state_dir).", labels=["agent"]
        )
        for name in names:
            total = (
                dispatcher.ledger.agents[name].total if name in dispatcher.ledger.agents else None
            )
            tokens.add_metric([name, "input"], total.input_tokens if total else 0)
            tokens.add_metric([name, "output"], total.output_tokens if total else 0)
            tokens.add_metric([name, "cached"], total.cached_tokens if total else 0)
            cost.add_metric([name], total.cost_usd if total else 0.0)
        yield tokens
        yield cost
        yield CounterMetricFamily(
            "ghitwork_stream_restarts",
            "tail-events restarts since ghit-work started.",
            max(0, counts.stream_starts - 1),
        )
        dead = GaugeMetricFamily(
            "ghitwork_dead_letters", "Dead letters kept in state_dir.", labels=["agent"]
        )
        per_agent = Counter(letter.agent for letter in dispatcher.dead_letters.values())
        for name in names:
            dead.add_metric([name], per_agent[name])
        yield dead


def registry(counts: Counts, dispatcher: Dispatcher) -> CollectorRegistry:
    own = CollectorRegistry(auto_describe=False)
    own.register(Collector(counts, dispatcher))
    return own
