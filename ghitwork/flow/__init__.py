"""The data flow and its decisions: the pipeline (group_by agent, batch while busy, merge under
the limit), routing, each agent's state machine (it owns its runs: when, which batch, what the
result means), the run policy (retries, rate limits, budgets), the dead letters, and the
dispatcher that starts runs and keeps the ledger.

May import: persist, run, source, bus, config, system, model.
"""
