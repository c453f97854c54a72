"""KuaiRand-format logs -> the examples folder of docs/design.md §6 (Apache Beam).

    python -m beam_pipelines.build_examples --input 'DIR/log_*.csv' --output OUT \\
        [--history_input GLOB] [--history_state DIR] [--write_history_state DIR] \\
        [--video_features F] [--user_features F] [--history_length 50] [--eval_days 1] \\
        [--vocab_min_count 1] [any Beam pipeline option, e.g. --direct_num_workers=2
        --direct_running_mode=multi_processing, or --runner=DataflowRunner --project ... ]

The job, as its chain of named transforms (each in its own module, each tested on its own with
``TestPipeline`` in ``tests/test_pipeline_transforms.py``):

1. ``ReadLogs`` (``read_logs.py``): the input files, cut into byte ranges (gzip files: one range
   each), are read in blocks and every line validated (``validation.py``); bad lines go to the
   dead letter with their reason, good rows leave grouped *per user of the block* as NumPy arrays;
2. ``EvalDates`` (``date_split.py``): the dates counted while reading → the eval dates;
3. ``ExamplesByUser`` (``examples_by_user.py``): a ``GroupByKey`` on ``user_id`` gathers each
   user's arrays; each user is sorted once, de-duplicated, joined with the side tables,
   labelled, windowed by the native history builder and split by date (``user_examples.py``); a
   bundle's users are serialised together by the vectorised ``tf.train.Example`` encoder;
4. ``WriteTFRecords`` the train and eval examples, ``WriteDeadLetter`` (``dead_letter.py``) every
   rejected row, ``MergeStats`` (``stats.py``) the per-block and per-bundle statistics, merged once
   into ``WriteCorpus`` and ``WriteSummary`` (``outputs.py``): the corpus, the vocabularies and
   ``metadata.json``, which reconciles rows in = rows used + dead letters.

An incremental run (the daily loop: ``--history_input`` earlier logs and/or ``--history_state``
the folder the day before wrote with ``--write_history_state``) reads the history with the same
``ReadLogs`` (counted apart, under ``history_rows``), cuts it to each user's last L events before
the shuffle (``history_context.LastEvents``) and feeds it to ``ExamplesByUser`` as context only:
the new day's examples equal that day's examples of the full job over every day, at a cost that
does not grow with the days before (docs/data.md, *Incremental runs*).

Before any of that the launcher checks what it was given (``inputs.py``: every glob matches a
file with rows, every header names the 19 columns; the side tables have their id columns; the
flags are in range) and stops with one line naming the problem. The job writes a staging folder
beside ``--output`` and swaps it in only when it succeeded with at least one train example
(``output_folder.py``), so a failed run never touches an existing examples folder.
"""
from __future__ import annotations

import sys

if __name__ == "__main__":
    # Quiet TensorFlow's C++ start-up lines (oneDNN notices, cuInit on a machine without a GPU)
    # before anything could import TensorFlow, here and in worker processes; a user's own
    # TF_CPP_MIN_LOG_LEVEL or --verbose wins. The job itself never imports TensorFlow.
    from tfrec_kuai.quiet import quiet_log_level

    quiet_log_level(verbose="--verbose" in sys.argv[1:])

import argparse
import json
import logging
import shlex

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines import COUNTER_NAMESPACE, InputError, history_context, inputs, output_folder
from beam_pipelines.date_split import EvalDates
from beam_pipelines.dead_letter import WriteDeadLetter
from beam_pipelines.examples_by_user import ExamplesByUser
from beam_pipelines.history_context import WriteHistoryState
from beam_pipelines.outputs import WriteCorpus, WriteSummary, WriteTFRecords
from beam_pipelines.read_logs import ReadLogs
from beam_pipelines.side_tables import SideTablePaths, side_information
from beam_pipelines.stats import MergeStats
from tfrec_kuai.schema import example_feature_spec

PROG = "build_examples"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are :class:`InputError` (one line from ``main``, an exception from ``run``)."""

    def error(self, message):
        raise InputError(f"{message} (see --help)")


def parse_args(argv):
    parser = _Parser(prog="python -m beam_pipelines.build_examples", description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, action="append",
                        help="glob of KuaiRand-format log CSVs (plain or gzip); repeat or comma-separate")
    parser.add_argument("--output", required=True, help="examples folder (local path or gs://...)")
    parser.add_argument("--history_input", action="append", default=None,
                        help="incremental run: glob of earlier days' logs, read only as the history of --input's "
                             "users (never examples); repeat or comma-separate")
    parser.add_argument("--history_state", default=None,
                        help="incremental run: a folder written by --write_history_state (each user's last L rows "
                             "and the vocabulary counts), read instead of the earlier logs")
    parser.add_argument("--write_history_state", default=None,
                        help="also write the history state after this run's rows into this folder (swapped in whole)")
    parser.add_argument("--video_features", default=None, help="video_features_basic*.csv (author, tag, duration)")
    parser.add_argument("--user_features", default=None, help="user_features*.csv (user_<column> features)")
    parser.add_argument("--history_length", type=int, default=50, help="L: events per history window")
    parser.add_argument("--eval_days", type=int, default=1, help="the last K dates form the eval split")
    parser.add_argument("--vocab_min_count", type=int, default=1, help="ids seen fewer times in train are OOV")
    parser.add_argument("--history_implementation", choices=("auto", "native", "python"), default="auto",
                        help="history-window builder (python: the slow reference, for benchmarks)")
    parser.add_argument("--read_range_mb", type=float, default=16.0,
                        help="uncompressed inputs are read in ranges of this size, in parallel")
    parser.add_argument("--encode_batch", type=int, default=4096, help="examples serialised per batch")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --output folder (it is swapped, never mixed with the new run)")
    parser.add_argument("--verbose", action="store_true", help="keep TensorFlow's C++ start-up messages")
    args, beam_args = parser.parse_known_args(argv)
    args.input = [p for item in args.input for p in item.split(",") if p]
    args.history_input = [p for item in args.history_input or () for p in item.split(",") if p]
    for flag, ok, rule in (("history_length", args.history_length >= 1, ">= 1"),
                           ("eval_days", args.eval_days >= 0, ">= 0"),
                           ("vocab_min_count", args.vocab_min_count >= 1, ">= 1"),
                           ("read_range_mb", args.read_range_mb > 0, "> 0"),
                           ("encode_batch", args.encode_batch >= 1, ">= 1")):
        if not ok:
            parser.error(f"--{flag} must be {rule}, got {getattr(args, flag)}")
    if not args.input:
        parser.error("--input is empty")
    unknown = unknown_beam_flags(beam_args)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (neither a flag of this job nor a Beam "
                     "pipeline option)")
    return args, beam_args


def unknown_beam_flags(beam_args):
    """The arguments no Beam ``PipelineOptions`` class knows (Beam itself would only log and drop them)."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser
    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {}
    for cls in PipelineOptions.__subclasses__():
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)  # how PipelineOptions.get_all_options collects them
    _, unknown = parser.parse_known_args(beam_args)
    return unknown


def side_table_paths(args):
    """The side tables the flags name (:class:`side_tables.SideTablePaths`), local paths made absolute
    (``inputs.absolute``: the workers load them, maybe in another folder)."""
    return SideTablePaths(inputs.absolute(args.video_features), inputs.absolute(args.user_features))


def incremental(args):
    """Whether the run reads a history (``--history_input`` or ``--history_state``)."""
    return bool(args.history_input) or args.history_state is not None


def resolve_history(args, files):
    """What an incremental run reads as history (None for a full run): ``{"files", "empty_files",
    "state", "state_files", "state_summary"}``; :class:`InputError` on a glob matching nothing, a
    file also in ``--input``, an unusable state (``history_context.read_state_summary``) or one
    that already holds an ``--input`` file's rows."""
    if not incremental(args):
        return None
    found, empty = inputs.resolve(args.history_input, "--history_input", need_rows=False) if args.history_input \
        else ([], [])
    both = sorted({f.path for f in files} & {f.path for f in found})
    if both:
        raise InputError(f"{both[0]} is in both --input and --history_input: a file is new rows or history, not both")
    out = {"files": found, "empty_files": empty, "state": None, "state_files": [], "state_summary": None}
    if args.history_state is not None:
        summary, pattern = history_context.read_state_summary(args.history_state, args.history_length)
        history_context.check_not_in_state(summary, args.history_state, [f.path for f in files])
        state_files, _ = inputs.resolve([pattern], "--history_state", need_rows=False) if summary["rows"] else ([], [])
        out.update(state=args.history_state.rstrip("/"), state_files=state_files, state_summary=summary)
    return out


def build(pipeline, args, command, options_dict, files=None, out=None, tables=None, empty_inputs=(), history=None,
          state_out=None):
    """The job's transforms on ``pipeline``, writing to ``out`` (the staging folder ``run`` swaps in).

    ``files``, ``empty_inputs`` (``inputs.resolve``), ``tables`` (the loaded side tables) and
    ``history`` (:func:`resolve_history`) are what the launcher already read; None reads them
    here. ``state_out``: where the history state is written (``--write_history_state``'s staging
    folder; None: ``--write_history_state`` itself, or no state).
    """
    if files is None:
        files, empty_inputs = inputs.resolve(args.input)
    if history is None:
        history = resolve_history(args, files)
    state_out = state_out or args.write_history_state
    paths = side_table_paths(args)
    video_table, user_table = paths.load_checked() if tables is None else tables
    user_spec, user_codes = (user_table.feature_spec, user_table.codes) if user_table is not None else ([], {})
    spec = example_feature_spec(args.history_length, user_spec)
    out = (out or args.output).rstrip("/")
    meta_kwargs = dict(spec=spec, history_length=args.history_length, user_features=user_spec,
                       user_codes=user_codes, eval_days=args.eval_days, command=command, options=options_dict,
                       side_information=side_information(video_table, user_table),
                       inputs={"files": [f.path for f in files], "empty_files": list(empty_inputs)})
    range_bytes = int(args.read_range_mb * (1 << 20))

    logs = pipeline | "ReadLogs" >> ReadLogs(files, range_bytes, paths)
    rows, dead, all_stats = logs.rows, (logs.dead,), (logs.stats,)
    if history is not None:
        meta_kwargs["history"] = {"files": [f.path for f in history["files"]],
                                  "empty_files": list(history["empty_files"]), "state": history["state"],
                                  "state_written": args.write_history_state}
        rows, more_dead, more_stats = read_history(pipeline, history, range_bytes, paths, args.history_length)
        rows = (logs.rows,) + rows | "WithHistory" >> beam.Flatten()
        dead, all_stats = dead + more_dead, all_stats + more_stats
    eval_dates = logs.stats | "EvalDates" >> EvalDates(args.eval_days)
    examples = rows | "ExamplesByUser" >> ExamplesByUser(
        spec, paths, args.history_length, eval_dates, args.history_implementation, args.encode_batch,
        write_state=state_out is not None)
    examples.train | "WriteTrain" >> WriteTFRecords(f"{out}/train")
    examples.eval | "WriteEval" >> WriteTFRecords(f"{out}/eval")
    dead + (examples.dead,) | "WriteDeadLetter" >> WriteDeadLetter(out)
    stats = all_stats + (examples.stats,) | "MergeStats" >> MergeStats()
    stats | "WriteCorpus" >> WriteCorpus(out, paths)
    stats | "WriteSummary" >> WriteSummary(out, paths, meta_kwargs, args.vocab_min_count)
    if state_out is not None:
        (examples.state, stats) | "WriteHistoryState" >> WriteHistoryState(
            state_out.rstrip("/"), args.history_length, [f.path for f in files])
    return pipeline


def read_history(pipeline, history, range_bytes, paths, history_length):
    """The history's transforms: ``(rows, dead letters, statistics)``, each a tuple of PCollections.

    The earlier logs (``ReadHistory``, their ids and durations counted for the vocabularies and
    the corpus) and the state's rows (``ReadHistoryState``; the state's counts come from its
    ``state.json``) are read and validated like ``--input``, counted apart, and cut to each
    user's last L events before the shuffle (``history_context.LastEvents``).
    """
    reads, stats = [], []
    if history["files"]:
        reads.append(pipeline | "ReadHistory" >> ReadLogs(history["files"], range_bytes, paths, history=True,
                                                          count_ids=True))
    if history["state_files"]:
        reads.append(pipeline | "ReadHistoryState" >> ReadLogs(history["state_files"], range_bytes, paths,
                                                               history=True))
    if history["state_summary"] is not None:
        stats.append(pipeline | "HistoryStateStats" >> beam.Create(
            [history_context.state_stats(history["state_summary"])]))
    if not reads:
        return (), (), tuple(stats)
    last = (tuple(r.rows for r in reads) | "HistoryRows" >> beam.Flatten()
            | "LastEvents" >> history_context.LastEvents(history_length))
    return (last,), tuple(r.dead for r in reads), tuple(r.stats for r in reads) + tuple(stats)


def run(argv=None, return_result=False):
    """Check the inputs, build and run the job, swap its output in; returns the metadata dict written
    (and the PipelineResult). Bad inputs raise :class:`InputError` before ``--output`` is touched."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, beam_args = parse_args(argv)
    if not any(a == "--runner" or a.startswith("--runner=") for a in beam_args):
        beam_args = ["--runner=DirectRunner"] + beam_args
    files, empty_inputs = inputs.resolve(args.input)
    history = resolve_history(args, files)
    tables = side_table_paths(args).load_checked()
    options = PipelineOptions(beam_args)
    runner = pipeline_runner(options)
    check_job_endpoint(runner, options)
    staging = output_folder.prepare(args.output, args.overwrite)
    state_staging = None if args.write_history_state is None else output_folder.prepare(
        args.write_history_state, args.overwrite, "--write_history_state")
    command = "python -m beam_pipelines.build_examples " + " ".join(shlex.quote(a) for a in argv)
    options_dict = {k: v for k, v in options.get_all_options(drop_default=True).items()
                    if isinstance(v, (str, int, float, bool, list))}
    try:
        pipeline = beam.Pipeline(runner=runner, options=options)
        build(pipeline, args, command, options_dict, files, staging, tables, empty_inputs, history, state_staging)
        result = pipeline.run()
        result.wait_until_finish()
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.open(f"{staging}/metadata.json") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except Exception as e:
        output_folder.discard(staging)
        if state_staging is not None:
            output_folder.discard(state_staging)
        cause = _input_error(e)
        if cause is not None:
            raise InputError(cause) from e
        raise
    rows = meta["rows"]
    if rows["train_examples"] == 0:
        if state_staging is not None:
            output_folder.discard(state_staging)
        reasons = ", ".join(f"{k} {v}" for k, v in rows["dead_letter_by_reason"].items()) or "none"
        raise InputError(f"no train example: of {rows['input']} rows, {rows['dead_letter']} were rejected "
                         f"({reasons}) and {rows['history_only']} are history only; --output {args.output!r} is "
                         f"left as it was, this run's folder (dead letters included) is {staging!r}")
    output_folder.publish(staging, args.output)
    if state_staging is not None:
        output_folder.publish(state_staging, args.write_history_state)
    logging.info("examples: %s", rows)
    return (meta, result) if return_result else meta


def pipeline_runner(options):
    """The runner ``--runner`` names: :func:`local_runner` for the DirectRunner, else Beam's own."""
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.runners.runner import create_runner
    return local_runner(options) or create_runner(options.view_as(StandardOptions).runner)


def check_job_endpoint(runner, options):
    """:class:`InputError` when a portable runner's ``--job_endpoint`` has no job service answering.

    ``PortableRunner`` (and ``FlinkRunner``/``SparkRunner`` given a ``--job_endpoint``) submits
    the job to a job service over gRPC. Nothing answering there would otherwise surface, after
    ``--job_server_timeout`` (300 s by default), as a gRPC timeout and a traceback; here the
    launcher waits the same time for the channel, before anything is written, and stops with one
    line. The workers' address (``--environment_config``) is the runner's to reach, not the
    launcher's: it is not checked here (a pool nobody answers at fails the job within seconds).
    """
    from apache_beam.options.pipeline_options import PortableOptions
    from apache_beam.runners.portability.portable_runner import PortableRunner
    portable = options.view_as(PortableOptions)
    endpoint = portable.job_endpoint
    if not isinstance(runner, PortableRunner) or not endpoint or endpoint == "embed":
        return
    import grpc
    timeout = portable.job_server_timeout
    logging.info("waiting up to %s s (--job_server_timeout) for the job service at %s", timeout, endpoint)
    channel = grpc.insecure_channel(endpoint)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise InputError(f"--job_endpoint {endpoint!r}: no job service answered within {timeout} s "
                         "(--job_server_timeout); start one there, e.g. python -m "
                         "apache_beam.runners.portability.local_job_service_main --port PORT") from None
    finally:
        channel.close()


def local_runner(options):
    """The runner for ``--runner=DirectRunner`` (the default): the DirectRunner's batch engine, the FnApiRunner.

    Beam's ``DirectRunner`` first tries its Prism runner, which downloads a binary from GitHub (and
    logs the failure, then falls back, on a machine without internet). This job is batch only, so
    it goes straight to the engine the DirectRunner would fall back to, set up as the DirectRunner
    sets it up (``--direct_num_workers`` and ``--direct_running_mode`` work as documented). Any
    other ``--runner`` (``PrismRunner``, ``DataflowRunner``, ``FlinkRunner``, ...) is Beam's own:
    None.
    """
    from apache_beam.options.pipeline_options import StandardOptions
    if options.view_as(StandardOptions).runner not in ("DirectRunner", "direct"):
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def _input_error(exc):
    """The message of an :class:`InputError` raised inside the pipeline, or None.

    A runner re-raises a worker's error with the step's name appended (or wraps it): the innermost
    InputError of the chain is the one raised, with the message as written.
    """
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, InputError):
            found = str(exc)
        exc = exc.__cause__ or exc.__context__
    return found


class _NoInputErrorTracebacks(logging.Filter):
    """Drops a runner's log record of an InputError's traceback: ``main`` prints the error as one line."""

    def filter(self, record):
        return not (record.exc_info and _input_error(record.exc_info[1]) is not None)


def counters(result):
    """``{counter name: value}`` of this job's Beam counters (dead letters per reason, rows in...)."""
    from apache_beam.metrics.metric import MetricsFilter
    out = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))["counters"]:
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (c.committed if c.committed is not None
                                                                 else c.attempted)
    return out


def main(argv=None):
    """The command: a bad input prints ``build_examples: error: ...`` (one line) and exits 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_NoInputErrorTracebacks())
    try:
        meta = run(argv)
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(meta["rows"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
