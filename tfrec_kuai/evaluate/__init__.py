"""The evaluation stage: offline metrics and plots of a trained model (``evaluation``) and the
HTML report that gathers every step's outputs (``report``)."""
