"""The log simulator (``simulator``) and its building blocks: the catalogue, the behaviour model, and
the world that continues a simulated log for the online evaluation."""
