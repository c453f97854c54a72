"""Apache Beam jobs of tfrec-kuai."""
