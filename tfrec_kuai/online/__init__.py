"""The recommender in the loop (docs/design.md §10): policies that drive the simulator's world and the
A/B test that compares them.

This package stands on top of everything else — the world (``tfrec_kuai.sim.world``), the Beam
job's history builder (``beam_pipelines.user_examples``) and the exported models — and nothing
below imports it.
"""
