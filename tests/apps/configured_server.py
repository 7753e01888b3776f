"""A ServerApp that declares its run settings and their defaults."""

from pollen.server import ServerApp, ServerConfig

app = ServerApp(
    config=ServerConfig(num_rounds=1),
    run_config={"lr": 0.1, "local-epochs": 2, "optimizer": "sgd", "augment": False},
)
