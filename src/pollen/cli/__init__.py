"""The `pollen` command: superlink, supernode, serverapp, demo.

gRPC's core logs to stderr on its own (handshake failures, ports in use) in its
own format. It reads GRPC_VERBOSITY once, when grpc is imported, so this package
sets it first: nothing unless `-v`/`--verbose` is given or GRPC_VERBOSITY is set
already. Pollen's own messages say what went wrong.
"""

import os
import sys


def _quiet_grpc(argv: list[str]) -> None:
    options = []
    for arg in argv:  # the group's options come before the subcommand
        if not arg.startswith("-"):
            break
        options.append(arg)
    if "-v" not in options and "--verbose" not in options:
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")


_quiet_grpc(sys.argv[1:])
