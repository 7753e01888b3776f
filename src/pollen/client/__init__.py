"""The client-side app API: `ClientApp`, `NumPyClient`, `Client`."""

from pollen.client.client import Client
from pollen.client.client_app import ClientApp
from pollen.client.numpy_client import NumPyClient
from pollen.records.replies import EvaluateRes, FitRes

__all__ = ["Client", "ClientApp", "EvaluateRes", "FitRes", "NumPyClient"]
