"""Sub-commands of the tfrec-kuai CLI (see tfrec_kuai.cli)."""
