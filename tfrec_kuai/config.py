"""Model and training configuration: one dataclass tree, saved next to the weights.

A model directory holds ``config.json`` (this tree), the vocabularies the model was built with and
the weights, so ``training.load_ranking_model`` / ``load_retrieval_model`` can rebuild the exact
model later (e.g. with the composite attention for the portable export). Config files may be JSON
or YAML (``.yaml``/``.yml``, when PyYAML is installed); unknown keys are an error so that a typo
in a config file does not silently fall back to a default.
"""
import dataclasses
import json
import os
from typing import Dict, List, Optional

from tfrec_kuai.schema import BINARY_LABELS, VOCAB_FEATURES

VARIANTS = ("full", "no_history", "no_feedback", "no_context", "shared_bottom")
STAGES = ("ranking", "retrieval")
OPTIMIZERS = ("adam", "lazy_adam")   # train.optimizer (tfrec_kuai/train/optimizers.py)


@dataclasses.dataclass
class ModelConfig:
    """Architecture. Defaults are sized for a 2-core CPU and a ~1 M-impression log."""
    stage: str = "ranking"
    variant: str = "full"
    history_length: int = 50
    # Embedding widths. The item embedding (video ⊕ author ⊕ tag) is shared by the target and the
    # history tokens, so target attention compares like with like.
    user_dim: int = 16
    video_dim: int = 24
    author_dim: int = 12
    tag_dim: int = 8
    context_dim: int = 8          # duration bucket, event age, position, hour, tab embeddings
    use_user_id: bool = True
    # Feedback-aware encoder (docs/design.md §5): H heads of key depth D and value depth Dv.
    num_heads: int = 4
    head_dim: int = 16
    value_dim: int = 16
    feedback_hidden: int = 32
    # PLE (Customized Gate Control) experts; shared_bottom replaces them by one MLP.
    num_shared_experts: int = 2
    num_task_experts: int = 1
    expert_units: int = 64
    ple_levels: int = 2           # stacked extraction levels (PLE); 1 = a single CGC
    tower_units: int = 32
    bottom_units: List[int] = dataclasses.field(default_factory=lambda: [128, 64])
    # Ranking losses: one tfrs.tasks.Ranking per objective, weighted.
    loss_weights: Dict[str, float] = dataclasses.field(default_factory=lambda: {
        "skip": 1.0, "valid": 0.5, "long": 0.5, "complete": 0.5, "watch": 1.0,
        "like": 0.2, "follow": 0.2, "comment": 0.2, "forward": 0.2, "hate": 0.2})
    # Ranking score blend: E[watch] * (1-p_skip)^a * (1 + sum w*p_engage) * (1-p_hate)^b.
    score_skip_exponent: float = 1.0
    score_hate_exponent: float = 2.0
    score_engage_weights: Dict[str, float] = dataclasses.field(default_factory=lambda: {
        "like": 1.0, "follow": 2.0, "comment": 1.0, "forward": 1.0})
    # Retrieval.
    embedding_dim: int = 32
    temperature: float = 0.05
    logq_correction: bool = True
    skip_hard_negatives: bool = True
    attention_implementation: str = "auto"
    user_feature_names: List[str] = dataclasses.field(default_factory=list)
    # Ids at scale (docs/data.md), per id feature of schema.VOCAB_FEATURES; a feature absent from a
    # dict takes the default: no cap, every id of the examples' vocabulary, one OOV row. The model's
    # vocabulary keeps the ``max_vocab_size`` most frequent ids seen at least ``min_count`` times
    # in train; every other id hashes into one of ``oov_buckets`` rows (layers.IdEmbedding).
    max_vocab_size: Dict[str, int] = dataclasses.field(default_factory=dict)
    min_count: Dict[str, int] = dataclasses.field(default_factory=dict)
    oov_buckets: Dict[str, int] = dataclasses.field(default_factory=dict)

    def oov_rows(self, feature):
        """The OOV buckets of id ``feature`` (``oov_buckets``, one row where it is not named)."""
        return int(self.oov_buckets.get(feature, 1))

    def validate(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        unknown = set(self.loss_weights) - set(BINARY_LABELS) - {"watch"}
        if unknown:
            raise ValueError(f"loss_weights has unknown objectives {sorted(unknown)}")
        for field, what in (("max_vocab_size", "a cap of at least 1 id"), ("min_count", "a count of at least 1"),
                            ("oov_buckets", "at least 1 bucket")):
            values = getattr(self, field)
            if not isinstance(values, dict):
                raise ValueError(f"{field} must map an id feature ({', '.join(VOCAB_FEATURES)}) to an integer, "
                                 f"got {values!r}")
            for feature, value in values.items():
                if feature not in VOCAB_FEATURES:
                    raise ValueError(f"{field} names {feature!r}, not an id feature ({', '.join(VOCAB_FEATURES)})")
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{field} of {feature} must be an integer >= 1 ({what}), got {value!r}")
        return self


@dataclasses.dataclass
class TrainConfig:
    """The fit loop. ``steps_per_epoch=None`` means one pass over the training split."""
    batch_size: int = 512
    epochs: int = 2
    learning_rate: float = 2e-3
    steps_per_epoch: Optional[int] = None
    validation: str = "last_train_day"   # last_train_day | eval | none
    validation_batches: Optional[int] = 60
    early_stopping_patience: int = 1
    backup_every_steps: int = 200
    seed: int = 0
    max_train_examples: Optional[int] = None
    optimizer: str = "adam"   # adam | lazy_adam: tfrec_kuai/train/optimizers.py says when lazy pays

    def validate(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        return self


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        d = dict(d or {})
        unknown = set(d) - {"model", "train"}
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}")
        return cls(model=_build(ModelConfig, d.get("model", {})), train=_build(TrainConfig, d.get("train", {})))

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    def override(self, section, **values):
        """Returns a copy with the non-None ``values`` set in ``section`` (flags over the file)."""
        d = self.to_dict()
        for k, v in values.items():
            if v is not None:
                if k not in d[section]:
                    raise ValueError(f"{section} config has no field {k!r}")
                d[section][k] = v
        return Config.from_dict(d)


def _build(cls, values):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(names)}")
    return cls(**values)


def load_config(path=None, stage="ranking"):
    """Reads a JSON/YAML config file; ``None`` gives the packaged default for ``stage``."""
    if path is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", f"{stage}.json")
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml  # optional dependency: only needed for YAML files
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    return Config.from_dict(data)
