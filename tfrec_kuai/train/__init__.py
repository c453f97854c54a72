"""The training stage: Keras ``fit`` over the examples reader (``training``) and the distribution
strategies it can run under (``distribute``)."""
