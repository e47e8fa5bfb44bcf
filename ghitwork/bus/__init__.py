"""The state bus: one subject that carries every state change (the Change types), and the
shared redactor kept up to date from it. Publishers (flow, source) and subscribers (persist,
observe, http, tui) meet here and nowhere else.

May import: config, system, model.
"""
