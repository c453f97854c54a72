"""Session-scoped trained tiny models on the data area's ``tiny_examples_dir`` (shared by the
training, evaluation and serving tests so each is trained once per session)."""
import pytest

from tfrec_kuai.config import Config, ModelConfig, TrainConfig


def tiny_config(stage="ranking", variant="full", **train):
    """A small model: seconds to train on a 2-core CPU, yet every part (encoder, PLE, cascade) is there."""
    model = ModelConfig(stage=stage, variant=variant, user_dim=4, video_dim=8, author_dim=4, tag_dim=4,
                        context_dim=4, num_heads=2, head_dim=4, value_dim=4, feedback_hidden=8, expert_units=16,
                        tower_units=8, bottom_units=[16, 8], embedding_dim=8)
    settings = dict(batch_size=64, epochs=2, steps_per_epoch=6, validation_batches=2, backup_every_steps=3, seed=0,
                    learning_rate=0.01)
    settings.update(train)
    return Config(model=model, train=TrainConfig(**settings))


@pytest.fixture(scope="session")
def tiny_ranking_model_dir(tiny_examples_dir, tmp_path_factory):
    """A trained ranking model directory (config.json, vocab/, weights/)."""
    from tfrec_kuai.train import training
    out = str(tmp_path_factory.mktemp("tiny_ranking_model"))
    training.train(tiny_examples_dir, out, tiny_config("ranking"), verbose=0, log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def tiny_retrieval_model_dir(tiny_examples_dir, tmp_path_factory):
    """A trained retrieval model directory (both towers)."""
    from tfrec_kuai.train import training
    out = str(tmp_path_factory.mktemp("tiny_retrieval_model"))
    training.train(tiny_examples_dir, out, tiny_config("retrieval", validation="none", epochs=1), verbose=0,
                   log=lambda *a: None)
    return out
