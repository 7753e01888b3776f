"""Apps written the way Flower users wrote them in the seed's era (Flower 1.8), with ``flwr``
replaced by ``pollen`` in their imports and nothing else changed."""
