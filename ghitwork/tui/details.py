"""The expanded agent view of the dashboard: what one agent is doing, its conversations (SPEC
§12), its recent runs, its usage and dead letters (panes.py draws it)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ghitwork.bus.changes import AgentState
from ghitwork.model.durations import format_duration
from ghitwork.model.formatting import id_ranges
from ghitwork.observe.dashboard import AgentView, ConversationView, batch_text


def attempt_text(agent: AgentView) -> str:
    attempts = agent.config.run_attempts if agent.config else 0
    return f"{agent.attempt}/{attempts}" if attempts else str(agent.attempt)


def details(agent: AgentView, now: float, room: int = 0) -> list[str]:
    """The expanded view of `agent`, for `room` rows (its conversations, when it has more
    than its own, are cut to what fits; the rest is cut at the top, as any pane)."""
    lines = _agent_details(agent, now)
    if agent.threads:
        at = next(i for i, line in enumerate(lines) if line.startswith("  usage:")) + 1
        fits = max(MIN_CONVERSATIONS, room - len(lines) - 1)
        lines[at:at] = _conversation_lines(agent.conversations, now, fits)
    return lines


MIN_CONVERSATIONS = 3  # rows of conversations shown however small the screen


def _conversation_lines(
    conversations: Sequence[ConversationView], now: float, fits: int
) -> list[str]:
    """`conversations:` and one line each, the most active first, cut to `fits` rows."""
    shown = conversations if len(conversations) <= fits else conversations[: max(0, fits - 1)]
    width = min(max((len(c.name) for c in shown), default=0), 40)
    lines = [f"conversations ({len(conversations)}):"]
    for conversation in shown:
        state = conversation.shown_state
        if conversation.state is AgentState.WORKING:
            state += f" {format_duration(max(0.0, now - conversation.since))}"
        elif conversation.due is not None:
            state += f" in {format_duration(max(0.0, conversation.due - now))}"
        last = conversation.last_run
        lines.append(
            f"  {conversation.name:<{width}}  {state:<16} queue {conversation.queue:<4} "
            f"last {last.outcome if last else 'none':<12} ${conversation.usage.cost_usd:.2f}"
        )
    if len(shown) < len(conversations):
        lines.append(f"  … {len(conversations) - len(shown)} more")
    return lines


def _agent_details(agent: AgentView, now: float) -> list[str]:
    config = agent.config
    state = agent.shown_state
    if agent.state is AgentState.PAUSED and agent.working:
        state += " (its run finishing)"
    if agent.state is AgentState.WORKING:
        state += f" for {format_duration(max(0.0, now - agent.since))}"
    elif agent.due is not None:
        state += f", next attempt in {format_duration(max(0.0, agent.due - now))}"
    lines = [f"{agent.name}: {state}, {agent.queue} event(s) queued, attempt {attempt_text(agent)}"]
    if agent.problem:
        lines.append(f"  problem:  {agent.problem}")
    if config is not None:
        lines += [
            f"  username: {config.username}",
            f"  workdir:  {config.workdir}",
            f"  command:  {' '.join(config.cmd)}",
            f"  scopes:   {', '.join(config.event_scopes)}",
            f"  kinds:    {', '.join(config.event_kinds)}",
            f"  budget:   {config.budget or 'none'}   timeout: "
            f"{format_duration(config.timeout) if config.timeout else 'none'}   "
            f"enabled: {'yes' if config.enabled else 'no'}",
            f"  retries:  {config.run_attempts} attempts, backoff "
            f"{format_duration(config.run_backoff)} doubling   stall timeout: "
            f"{format_duration(config.stall_timeout) if config.stall_timeout else 'none'}",
        ]
    lines.append(f"  session:  {agent.session_id or 'none'}")
    last = agent.runs[-1].usage if agent.runs else None
    lines.append(
        f"  usage:    last run {last.describe() if last else 'none'}; "
        f"today {agent.usage_today.describe()}; total {agent.usage_total.describe()}"
    )
    if agent.batch:
        lines.append(f"current batch [{batch_text(agent)}]:")
        lines += [f"  {ident:>7} {kind:<20} {title}" for ident, kind, title in agent.batch]
    else:
        lines.append("current batch: none")
    lines.append("last runs:")
    if not agent.runs:
        lines.append("  none yet")
    for run in reversed(agent.runs):
        stamp = time.strftime("%H:%M:%S", time.localtime(run.started))
        lines.append(
            f"  {stamp}  {run.describe():<18} {format_duration(run.duration):>6}  "
            f"#{run.attempt}  [{id_ranges(run.event_ids)}]"
            + (f"  {run.conversation}" if run.conversation else "")
        )
        if run.usage is not None:
            lines.append(f"            {run.usage.describe()}")
        if run.log_files:
            lines.append(f"            logs: {run.log_files[0].rsplit('.', 1)[0]}.*")
    lines.append(
        f"dead letters: {len(agent.dead_letters) or 'none'}"
        + (" (R hands them all back)" if agent.dead_letters else "")
    )
    for letter in agent.dead_letters:
        stamp = time.strftime("%H:%M:%S", time.localtime(letter.time))
        lines.append(
            f"  {letter.id:>5}  {stamp}  [{id_ranges(letter.event_ids)}]  "
            f"{letter.attempts} attempt(s), {letter.error}"
        )
    return lines
