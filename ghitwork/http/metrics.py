"""Prometheus metrics, through prometheus_client's own registry and exposition format.

`Counts` is a subscriber of the state bus (cheap: a few additions per change); `Collector`
reads it and the model every view reads (queues, working agents, conversations per state and
those waiting for a human, dead letters, the usage ledger's all-time tokens and cost) at
scrape time. One registry per daemon, not the global one.
Imported only with `http` set.
"""

from __future__ import annotations

import functools
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

from ghitwork.bus.changes import (
    AgentState,
    Change,
    EventsRouted,
    RunFinished,
    SourceStarted,
    handlers,
)
from ghitwork.observe.dashboard import DashboardModel

BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
OUTCOMES = ("ok", "failed", "timeout", "stalled", "killed", "rate_limited", "error")


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
        self._handle = handlers(vars(Counts)["_on"], self)

    def __call__(self, change: Change) -> None:
        self._handle(change)

    @functools.singledispatchmethod
    def _on(self, change: Change) -> None:
        pass

    @_on.register
    def _routed(self, change: EventsRouted) -> None:
        self.events += len(change.routes)
        for _, agents in change.routes:
            for agent in agents:
                self.deliveries[agent] += 1

    @_on.register
    def _finished(self, change: RunFinished) -> None:
        result = change.result
        self.runs[(change.agent, result.outcome)] += 1
        self.durations.setdefault(change.agent, Histogram()).observe(result.duration)

    @_on.register
    def _started(self, change: SourceStarted) -> None:
        self.stream_starts += 1


class Collector(CollectorBase):
    """Reads the counts above and the one model every view reads (observe/dashboard.py):
    queues, working agents, usage totals and dead letters are the same figures as the API's
    and the page's."""

    def __init__(self, counts: Counts, model: DashboardModel) -> None:
        self.counts = counts
        self.model = model

    def collect(self) -> Iterator[Metric]:
        counts = self.counts
        agents = sorted(self.model.view().agents, key=lambda agent: agent.name)
        names = [agent.name for agent in agents]
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
        for agent in agents:
            queue.add_metric([agent.name], agent.queue)
        yield queue
        working = sum(1 for agent in agents if agent.working)
        yield GaugeMetricFamily("ghitwork_agents_working", "Agents with a run working.", working)
        conversations = GaugeMetricFamily(
            "ghitwork_conversations",
            "Conversations of the agent by state (idle ones that went quiet are left out "
            "after a while).",
            labels=["agent", "state"],
        )
        for agent in agents:
            states = Counter(str(c.state) for c in agent.conversations)
            for state in AgentState:
                conversations.add_metric([agent.name, str(state)], states[str(state)])
        yield conversations
        needs_input = GaugeMetricFamily(
            "ghitwork_needs_input",
            "Conversations of the agent waiting for a human (needs_input_pattern matched).",
            labels=["agent"],
        )
        for agent in agents:
            waiting = sum(1 for c in agent.conversations if c.state is AgentState.NEEDS_INPUT)
            needs_input.add_metric([agent.name], waiting)
        yield needs_input
        quota = GaugeMetricFamily(
            "ghitwork_quota_until_seconds",
            "When the account's usage limit window ends (Unix time; 0 while it is open).",
            labels=["account"],
        )
        accounts = {a.config.quota_account for a in agents if a.config is not None}
        for account in sorted(accounts | self.model.quotas.keys()):
            quota.add_metric([account], self.model.quotas.get(account, 0.0))
        yield quota
        tokens = CounterMetricFamily(
            "ghitwork_tokens",
            "Tokens used, all time (kept in state_dir).",
            labels=["agent", "type"],
        )
        cost = CounterMetricFamily(
            "ghitwork_cost_usd", "USD spent, all time (kept in state_dir).", labels=["agent"]
        )
        for agent in agents:
            total = agent.usage_total
            tokens.add_metric([agent.name, "input"], total.input_tokens)
            tokens.add_metric([agent.name, "output"], total.output_tokens)
            tokens.add_metric([agent.name, "cached"], total.cached_tokens)
            cost.add_metric([agent.name], total.cost_usd)
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
        for agent in agents:
            dead.add_metric([agent.name], len(agent.dead_letters))
        yield dead


def registry(counts: Counts, model: DashboardModel) -> CollectorRegistry:
    own = CollectorRegistry(auto_describe=False)
    own.register(Collector(counts, model))
    return own
