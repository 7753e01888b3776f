"""The `pollen` command: superlink, supernode, serverapp, demo."""
