"""The export stage: the trained models as one SavedModel in TF Serving's layout
(``saved_model``) and the ranking path that encodes a user's history once for all candidates
(``shared_history``). Nothing here imports ``serving``: the server's config files are written by
``serving.model_config``."""
