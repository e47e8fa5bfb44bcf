"""The optional dashboard (asciimatics): the screen, its keys, and drawing the model's views.
Imported only by app, and only with --tui.

May import: observe and everything below it.
"""
