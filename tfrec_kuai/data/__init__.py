"""The data stage: what the model side reads, and the history windows the Beam job builds.

* ``examples`` — the one reader of the examples folder (tf.data over its TFRecords, its
  metadata, vocabularies and corpus).
* ``history`` — the history-window builder (native, with its pure-Python reference); the Beam
  job imports it, so this package's ``__init__`` imports nothing: importing the builder must not
  load TensorFlow into the Beam workers.
* ``kuairand_pure/`` — KuaiRand-Pure's side tables, shipped as package data.
"""
