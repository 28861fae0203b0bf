"""``python -m pipeline`` runs the ``marketprism`` command (used for the demo's child processes)."""

from pipeline.cli import main

main()
