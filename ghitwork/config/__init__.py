"""The configuration: its frozen values, reading and validating ghit-work.toml key by key
(one line naming the file and the key for every mistake), and the prompt templates.

May import: model.
"""
