"""A misuse of ``tfrec-kuai`` gets one clear line and a non-zero exit, never a traceback.

Flag values are refused by argparse (exit 2); inputs the command cannot use raise
``tfrec_kuai.errors.InputError``, which ``tfrec_kuai.cli.main`` prints as
``tfrec-kuai <command>: error: ...`` and returns 2. The folders are real: the tiny examples of the
data fixtures, a copy of them with a file truncated, examples of another history length from the
same log, and model folders saved by ``tfrec_kuai.train.training``.
"""
import glob
import os
import shutil
import subprocess
import sys

import pytest

from tests.fixtures_model import tiny_config
from tests.test_logs_only import quiet_env
from tfrec_kuai import cli
from tfrec_kuai.quiet import NOISE


def run_cli(capsys, *argv):
    """(exit status, stderr) of ``tfrec-kuai ARGV`` in this process; argparse's exit is caught."""
    try:
        status = cli.main(list(argv))
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def one_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def model_dirs(tiny_examples_dir, tmp_path_factory):
    """Saved (untrained) model folders on the tiny examples: ranking/full, ranking/no_feedback,
    retrieval/full — the layout ``tfrec-kuai train`` writes."""
    from tfrec_kuai.train import training
    vocabularies = training.read_vocabularies(tiny_examples_dir)
    root = tmp_path_factory.mktemp("cli_error_models")
    dirs = {}
    for stage, variant in (("ranking", "full"), ("ranking", "no_feedback"), ("retrieval", "full")):
        config = tiny_config(stage, variant).override("model", history_length=50)
        path = str(root / f"{stage}_{variant}")
        training.save_model_dir(training.build_model(config, vocabularies), config, path)
        dirs[stage, variant] = path
    return dirs


@pytest.fixture(scope="module")
def short_history_examples(tiny_log_dir, tmp_path_factory):
    """The tiny log's examples with L = 10 (the models above have L = 50)."""
    from beam_pipelines import build_examples
    out = str(tmp_path_factory.mktemp("examples_L10"))
    build_examples.run(["--input", os.path.join(tiny_log_dir, "log_*.csv"), "--output", out,
                        "--history_length", "10", "--eval_days", "1"])
    return out


def corrupted_copy(examples_dir, split, tmp_path):
    """A copy of the examples whose first ``split`` file is cut in half; returns (folder, that file)."""
    copy = str(tmp_path / "examples")
    shutil.copytree(examples_dir, copy)
    path = sorted(glob.glob(os.path.join(copy, split, "*.tfrecord.gz")))[0]
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return copy, path


@pytest.mark.parametrize("argv, flag", [
    (("train", "--examples", "E", "--model_dir", "M", "--epochs", "0"), "--epochs"),
    (("train", "--examples", "E", "--model_dir", "M", "--learning_rate", "-1"), "--learning_rate"),
    (("train", "--examples", "E", "--model_dir", "M", "--learning_rate", "nan"), "--learning_rate"),
    (("train", "--examples", "E", "--model_dir", "M", "--batch_size", "many"), "--batch_size"),
    (("evaluate", "--examples", "E", "--model_dir", "M", "--output", "O", "--batch_size", "0"), "--batch_size"),
    (("export", "--ranking_dir", "R", "--retrieval_dir", "Q", "--examples", "E", "--export_base", "B",
      "--top_n", "0"), "--top_n"),
    (("simulate", "--output", "O", "--impressions", "0"), "--impressions"),
    (("simulate", "--output", "O", "--start_date", "2022-02-31"), "--start_date"),
])
def test_bad_flag_values_are_refused_by_argparse(capsys, argv, flag):
    status, err = run_cli(capsys, *argv)
    line = one_line(err)
    assert status == 2
    assert line.startswith(f"tfrec-kuai {argv[0]}: error: argument {flag}"), line


def test_train_on_a_folder_without_examples(capsys, tmp_path):
    status, err = run_cli(capsys, "train", "--examples", str(tmp_path), "--model_dir", str(tmp_path / "m"))
    assert status == 2
    assert one_line(err) == (f"tfrec-kuai train: error: {tmp_path} is not an examples folder: it has no metadata.json "
                             "(write one with `python -m beam_pipelines.build_examples --input LOGS --output DIR`)")
    assert not os.path.exists(tmp_path / "m"), "nothing is written for a refused run"


def test_train_on_examples_without_a_train_split(capsys, tiny_examples_dir, tmp_path):
    copy = str(tmp_path / "examples")
    shutil.copytree(tiny_examples_dir, copy)
    for path in glob.glob(os.path.join(copy, "train", "*")):
        os.remove(path)
    status, err = run_cli(capsys, "train", "--examples", copy, "--model_dir", str(tmp_path / "m"))
    assert status == 2
    assert one_line(err).startswith(f"tfrec-kuai train: error: {copy} has no train examples")


def test_train_on_a_corrupt_tfrecord_names_the_file(capsys, tiny_examples_dir, tmp_path):
    copy, broken = corrupted_copy(tiny_examples_dir, "train", tmp_path)
    config = str(tmp_path / "tiny.json")
    tiny_config("ranking", epochs=1, steps_per_epoch=1, validation="none").save(config)
    status, err = run_cli(capsys, "train", "--examples", copy, "--model_dir", str(tmp_path / "m"), "--config", config,
                          "--verbose", "0")
    assert status == 2
    line = one_line(err)
    assert line.startswith(f"tfrec-kuai train: error: corrupt TFRecord file {broken}: "), line
    assert "truncated" in line or "corrupted" in line


def test_evaluate_on_a_corrupt_tfrecord_names_the_file(capsys, tiny_examples_dir, model_dirs, tmp_path):
    copy, broken = corrupted_copy(tiny_examples_dir, "eval", tmp_path)
    status, err = run_cli(capsys, "evaluate", "--examples", copy, "--model_dir", model_dirs["ranking", "full"],
                          "--output", str(tmp_path / "eval"))
    assert status == 2
    assert one_line(err).startswith(f"tfrec-kuai evaluate: error: corrupt TFRecord file {broken}: ")


def test_evaluate_on_examples_of_another_history_length(capsys, short_history_examples, model_dirs, tmp_path):
    model_dir = model_dirs["ranking", "full"]
    status, err = run_cli(capsys, "evaluate", "--examples", short_history_examples, "--model_dir", model_dir,
                          "--output", str(tmp_path / "eval"))
    assert status == 2
    line = one_line(err)
    assert "history length mismatch" in line and "L = 50" in line and "L = 10" in line, line
    assert not os.path.exists(tmp_path / "eval")


def test_a_retrieval_folder_where_a_ranking_one_is_expected(capsys, tiny_examples_dir, model_dirs, tmp_path):
    retrieval = model_dirs["retrieval", "full"]
    status, err = run_cli(capsys, "export", "--ranking_dir", retrieval, "--retrieval_dir", retrieval,
                          "--examples", tiny_examples_dir, "--export_base", str(tmp_path / "serving"))
    assert status == 2
    assert one_line(err) == f"tfrec-kuai export: error: {retrieval} holds a retrieval model, not a ranking one"
    status, err = run_cli(capsys, "evaluate", "--examples", tiny_examples_dir, "--model_dir", retrieval,
                          "--output", str(tmp_path / "eval"), "--stage", "ranking")
    assert status == 2
    assert one_line(err) == f"tfrec-kuai evaluate: error: {retrieval} holds a retrieval model, not a ranking one"


def test_a_model_of_another_variant_than_asked(capsys, tiny_examples_dir, model_dirs, tmp_path):
    model_dir = model_dirs["ranking", "no_feedback"]
    status, err = run_cli(capsys, "evaluate", "--examples", tiny_examples_dir, "--model_dir", model_dir,
                          "--output", str(tmp_path / "eval"), "--variant", "full")
    assert status == 2
    assert one_line(err) == (f"tfrec-kuai evaluate: error: {model_dir} holds the ranking variant 'no_feedback', "
                             "not 'full'")


def test_evaluate_a_folder_that_is_no_model(capsys, tiny_examples_dir, tmp_path):
    status, err = run_cli(capsys, "evaluate", "--examples", tiny_examples_dir, "--model_dir", str(tmp_path),
                          "--output", str(tmp_path / "eval"))
    assert status == 2
    assert one_line(err).startswith(f"tfrec-kuai evaluate: error: {tmp_path} is not a model folder")


def test_report_with_an_evaluation_folder_that_is_not_one(capsys, tiny_examples_dir, tmp_path):
    status, err = run_cli(capsys, "report", "--examples", tiny_examples_dir, "--output", str(tmp_path / "report"),
                          "--ranking_eval", f"full={tmp_path}")
    assert status == 2
    assert one_line(err).startswith(f"tfrec-kuai report: error: {tmp_path} is not an evaluation folder")


def test_report_with_a_benchmarks_file_that_is_not_one(capsys, tiny_examples_dir, tmp_path):
    status, err = run_cli(capsys, "report", "--examples", tiny_examples_dir, "--output", str(tmp_path / "report"),
                          "--benchmarks", str(tmp_path / "RESULTS.md"))
    assert status == 2
    assert one_line(err).startswith(f"tfrec-kuai report: error: --benchmarks {tmp_path / 'RESULTS.md'} is not a file")
    assert not (tmp_path / "report").exists()


def test_the_report_holds_benchmark_tables_only_when_asked(capsys, tiny_examples_dir, tmp_path):
    tables = tmp_path / "tables.md"
    tables.write_text("## Serving on this machine\n\n| clients | p99 ms |\n|---|---|\n| 8 | 41.2 |\n")
    for name, extra in (("plain", []), ("with_tables", ["--benchmarks", str(tables)])):
        status, _ = run_cli(capsys, "report", "--examples", tiny_examples_dir, "--output", str(tmp_path / name), *extra)
        assert status == 0
    assert "Serving on this machine" not in (tmp_path / "plain" / "index.html").read_text(encoding="utf-8")
    page = (tmp_path / "with_tables" / "index.html").read_text(encoding="utf-8")
    assert "Serving on this machine" in page and "41.2" in page


@pytest.mark.slow
def test_the_installed_command_prints_one_line_and_no_tensorflow_noise(tmp_path):
    """A real process, as a user runs it: the error line is all of stderr (TensorFlow's start-up
    notices — oneDNN, CUDA, CPU features — are filtered); ``--verbose`` brings them back."""
    command = [sys.executable, "-m", "tfrec_kuai.cli", "train", "--examples", str(tmp_path),
               "--model_dir", str(tmp_path / "m")]
    done = subprocess.run(command, capture_output=True, text=True, env=quiet_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert one_line(done.stderr).startswith("tfrec-kuai train: error: ")
    verbose = subprocess.run(command[:3] + ["--verbose"] + command[3:], capture_output=True, text=True,
                             env=quiet_env(), cwd=tmp_path)
    assert verbose.returncode == 2
    # Which notices TensorFlow prints depends on the CPU (oneDNN's only where it enables oneDNN,
    # e.g. with AVX-512); some of the filtered ones must appear, or the first check proves nothing.
    assert NOISE.search(verbose.stderr.encode()), "TensorFlow prints its notices here, so the first check can fail"
