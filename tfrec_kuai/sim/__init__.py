"""Building blocks of the log simulator (tfrec_kuai.simulator): catalogue and behaviour model."""
