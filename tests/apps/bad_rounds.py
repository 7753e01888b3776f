"""A ServerApp misconfigured on purpose: zero rounds."""

from pollen.server import ServerApp, ServerConfig

app = ServerApp(config=ServerConfig(num_rounds=0))
