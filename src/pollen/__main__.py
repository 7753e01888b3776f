"""``python -m pollen`` runs the `pollen` command."""

from pollen.cli.main import main

main()
