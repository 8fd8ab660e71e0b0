"""`smx tui`: a live terminal UI of a store, built with Textual. Nothing here imports torch."""
