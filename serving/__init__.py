"""TF Serving-compatible server and clients."""
