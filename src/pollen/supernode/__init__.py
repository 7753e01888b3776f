"""The SuperNode: connects to the Fleet API, runs the ClientApp on each task."""
