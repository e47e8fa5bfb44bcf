"""Values and pure arithmetic every layer passes around: events and their scopes, durations
and budgets, how a run ended (results) and what the policy decided about it, usage and cost,
dead letters, the redactor, how ids and moments are written, when a usage limit resets.

Owns no state and does no I/O beyond parsing. Imports nothing of ghitwork (an import-linter
contract holds it).
"""
