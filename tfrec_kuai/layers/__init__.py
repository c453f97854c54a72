"""Keras layers of the model (docs/design.md §5): preprocessing, the feedback-aware encoder, experts, heads."""
from tfrec_kuai.layers.embeddings import (AGE_BOUNDARIES, DURATION_BOUNDARIES, BucketEmbedding, IdEmbedding,
                                          ItemEmbedding, ModuloEmbedding, feedback_features, log_duration,
                                          num_feedback_features, target_relation)
from tfrec_kuai.layers.encoder import FeedbackAwareEncoder
from tfrec_kuai.layers.heads import CascadeHeads, DurationAwareWatchHead, TaskTower
from tfrec_kuai.layers.ple import CGCLayer, ExpertGroup, SharedBottom

__all__ = ["AGE_BOUNDARIES", "DURATION_BOUNDARIES", "BucketEmbedding", "IdEmbedding", "ItemEmbedding",
           "ModuloEmbedding", "feedback_features", "log_duration", "num_feedback_features", "target_relation",
           "FeedbackAwareEncoder", "CascadeHeads", "DurationAwareWatchHead", "TaskTower", "CGCLayer",
           "ExpertGroup", "SharedBottom"]
