"""KuaiRand-format logs -> the examples folder of docs/design.md §6 (Apache Beam).

    python -m beam_pipelines.build_examples --input 'DIR/log_*.csv' --output OUT \\
        [--video_features F] [--user_features F] [--history_length 50] [--eval_days 1] \\
        [--vocab_min_count 1] [any Beam pipeline option, e.g. --direct_num_workers=2
        --direct_running_mode=multi_processing, or --runner=DataflowRunner --project ... ]

Shape of the job (element counts kept small, per-row Python work kept to parsing):

1. the input globs are matched and cut into byte ranges (gzip files: one range each);
2. each range is read in blocks, every line validated (``validation.py``); bad lines go to the
   dead letter with their reason, good rows leave grouped *per user of the range* as NumPy arrays;
3. a ``GroupByKey`` on ``user_id`` gathers each user's arrays; each user is sorted once,
   de-duplicated, labelled, windowed by the native history builder and split by date
   (``user_examples.py``); a bundle's users are serialised together by the vectorised
   ``tf.train.Example`` encoder (``example_encoder.py``);
4. per-range and per-bundle statistics are merged once into vocabularies, the corpus and
   ``metadata.json`` (``outputs.py``), which reconciles rows in = rows used + dead letters.

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

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shlex  # noqa: E402

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
from apache_beam.io.filesystem import CompressionTypes  # noqa: E402
from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from beam_pipelines import (  # noqa: E402
    InputError, example_encoder, inputs, output_folder, outputs, user_examples, validation)
from beam_pipelines.side_tables import UserTable, VideoTable  # noqa: E402
from tfrec_kuai.schema import COLUMN_INDEX, example_feature_spec  # noqa: E402

NAMESPACE = "build_examples"
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
        cls._add_argparse_args(parser)  # noqa: SLF001  (how PipelineOptions.get_all_options collects them)
    _, unknown = parser.parse_known_args(beam_args)
    return unknown


# --- 1-2: read ranges (inputs.py), validate lines ---------------------------------------------
class ParseRangeFn(beam.DoFn):
    """Validates every line of a byte range; emits per-user row arrays, dead letters, stats."""

    def __init__(self, video_features, user_features):
        self.video_features = video_features
        self.user_features = user_features

    def setup(self):
        self.video_table = VideoTable.load(self.video_features) if self.video_features else None
        self.user_table = UserTable.load(self.user_features) if self.user_features else None
        self.counters = {r: Metrics.counter(NAMESPACE, f"dead_letter_{r}") for r in validation.REASONS}
        self.rows_in = Metrics.counter(NAMESPACE, "rows_in")

    def process(self, item, block_lines=200_000):
        info, start, end = item
        offsets, lines = [], []
        first = start == 0
        for offset, line in inputs.read_range_lines(info, start, end):
            if first:
                first = False
                if info.has_header:
                    continue  # the file's header row (read by the launcher: info.order)
                if line.startswith(b"\xef\xbb\xbf"):
                    line, offset = line[3:], offset + 3
            offsets.append(offset)
            lines.append(line)
            if len(lines) >= block_lines:
                yield from self._emit(info, offsets, lines)
                offsets, lines = [], []
        if lines:
            yield from self._emit(info, offsets, lines)

    def _emit(self, info, offsets, lines):
        path = info.path
        values, kept, rejects = validation.validate_lines(lines, info.order)
        logging.info("validated %d rows of %s from byte %d: %d rejected", len(lines), path, offsets[0], len(rejects))
        dead = {}
        for index, reason in rejects:
            dead[reason] = dead.get(reason, 0) + 1
            self.counters[reason].inc()
            yield beam.pvalue.TaggedOutput("dead", dead_letter_json(reason, f"{path}:{offsets[index]}",
                                                                    lines[index]))
        self.rows_in.inc(len(lines))
        dates = np.unique(user_examples.split_date(values[:, COLUMN_INDEX["time_ms"]]), return_counts=True)
        yield beam.pvalue.TaggedOutput("stats", {
            "input": len(lines), "dead": dead, "dates": dict(zip(dates[0].tolist(), dates[1].tolist())),
            "not_in_side_table": validation.not_in_side_tables(values, self.video_table, self.user_table)})
        if not len(values):
            return
        offs = np.asarray(offsets, np.int64)[kept]
        users = values[:, COLUMN_INDEX["user_id"]]
        order = np.argsort(users, kind="stable")
        users_sorted = users[order]
        bounds = np.flatnonzero(np.diff(users_sorted)) + 1
        for idx in np.split(order, bounds):
            yield int(users[idx[0]]), (path, values[idx], offs[idx])


def dead_letter_json(reason, source, raw):
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="backslashreplace")
    return json.dumps({"reason": reason, "source": source, "row": raw}, ensure_ascii=True)


# --- 3: per user ------------------------------------------------------------------------------
class UserExamplesFn(beam.DoFn):
    """Sort, dedup, label, window and split one user; serialise a bundle's examples in batches."""

    def __init__(self, spec, video_features, user_features, history_length, eval_days, implementation,
                 encode_batch):
        self.spec = spec
        self.video_features = video_features
        self.user_features = user_features
        self.history_length = history_length
        self.eval_days = eval_days
        self.implementation = implementation
        self.encode_batch = encode_batch

    def setup(self):
        self.video_table = VideoTable.load(self.video_features) if self.video_features else None
        self.user_table = UserTable.load(self.user_features) if self.user_features else None
        self.written, self.next_log = 0, 100_000
        self.dup_counter = Metrics.counter(NAMESPACE, "dead_letter_duplicate_event")
        self.picture_counter = Metrics.counter(NAMESPACE, "history_only_picture_post")
        self.examples_counter = {s: Metrics.counter(NAMESPACE, f"{s}_examples") for s in ("train", "eval")}

    def start_bundle(self):
        self.buffer = []
        self.buffered = 0
        self.stats = {}
        self.eval_dates = []

    def process(self, element, dates):
        user_id, groups = element
        groups = list(groups)
        paths = sorted({g[0] for g in groups})
        path_rank = {p: i for i, p in enumerate(paths)}
        values = np.concatenate([g[1] for g in groups])
        offsets = np.concatenate([g[2] for g in groups])
        source = np.concatenate([np.full(len(g[1]), path_rank[g[0]], np.int64) for g in groups])
        keep, dups = user_examples.sort_and_dedup(values, source * (1 << 40) + offsets)
        if len(dups):
            outputs.merge_stats(self.stats, {"dead": {"duplicate_event": len(dups)}})
        for j in dups:
            self.dup_counter.inc()
            yield beam.pvalue.TaggedOutput("dead", dead_letter_json(
                "duplicate_event", f"{paths[source[j]]}:{offsets[j]}", ",".join(map(str, values[j].tolist()))))
        self.eval_dates = outputs.eval_dates_of(dates.keys(), self.eval_days)
        # A heavy user is cut into pieces (with the context their windows need), so a batch never
        # holds much more than encode_batch examples, whatever the user's size.
        for piece in user_examples.slices(values[keep], self.history_length, self.encode_batch):
            self.buffer.append(piece)
            self.buffered += len(piece[0]) - piece[1]
            if self.buffered >= self.encode_batch:
                yield from self._flush()

    def _flush(self):
        """Columns, statistics and serialised examples of the buffered users, in one batch."""
        if not self.buffer:
            return
        rows, self.buffer, self.buffered = self.buffer, [], 0
        cols, is_eval = user_examples.batch_columns(rows, self.video_table, self.user_table, self.history_length,
                                                    self.eval_dates, self.implementation)
        outputs.merge_stats(self.stats, {
            "splits": {"train": user_examples.split_stats(cols, ~is_eval),
                       "eval": user_examples.split_stats(cols, is_eval)},
            "ids": user_examples.id_counts(cols, ~is_eval),
            "video_duration_ms": user_examples.max_duration(np.concatenate([r for r, _ in rows]))})
        pictures, picture_ids = user_examples.history_only(rows, self.video_table, self.eval_dates)
        if pictures:
            self.picture_counter.inc(pictures)
            outputs.merge_stats(self.stats, {"history_only": {"picture_post": pictures}, "ids": picture_ids})
        records = example_encoder.encode_examples({k: cols[k] for k in self.spec}, self.spec)
        self.written += len(records)
        if self.written >= self.next_log:
            logging.info("serialised %d examples in this worker", self.written)
            self.next_log = self.written + 100_000
        for split, mask in (("train", ~is_eval), ("eval", is_eval)):
            self.examples_counter[split].inc(int(mask.sum()))
            for j in np.flatnonzero(mask):
                yield beam.pvalue.TaggedOutput(split, records[j])

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows
        for tagged in self._flush():
            yield beam.pvalue.TaggedOutput(tagged.tag, GlobalWindows.windowed_value(tagged.value))
        if self.stats:
            yield beam.pvalue.TaggedOutput("stats", GlobalWindows.windowed_value(self.stats))
            self.stats = {}


class CorpusFn(beam.DoFn):
    def __init__(self, video_features):
        self.video_features = video_features

    def process(self, stats):
        table = VideoTable.load(self.video_features) if self.video_features else None
        cols, _ = outputs.corpus_rows(stats, table)
        yield from example_encoder.encode_examples(cols, outputs.corpus_spec())


# --- the pipeline -----------------------------------------------------------------------------
def load_side_tables(args):
    """``(video table or None, user table or None)``, loaded once here so that a bad table stops the
    job before it starts (the workers load them again in ``setup``)."""
    from apache_beam.io.filesystems import FileSystems
    tables = []
    for flag, cls in (("video_features", VideoTable), ("user_features", UserTable)):
        path = getattr(args, flag)
        if path is None:
            tables.append(None)
            continue
        if not FileSystems.exists(path):
            raise InputError(f"--{flag} {path!r}: no such file")
        tables.append(cls.load(path))
    return tuple(tables)


def side_information(video_table, user_table):
    """``metadata.json``'s ``side_information``: what each side table gave, null when it was absent."""
    return {"video_features": video_table.summary() if video_table is not None else None,
            "user_features": user_table.summary() if user_table is not None else None}


def build(pipeline, args, command, options_dict, files=None, out=None, tables=None, empty_inputs=()):
    """The job's transforms on ``pipeline``, writing to ``out`` (the staging folder ``run`` swaps in)."""
    if files is None:
        files, empty_inputs = inputs.resolve(args.input)
    video_table, user_table = load_side_tables(args) if tables is None else tables
    user_spec, user_codes = (user_table.feature_spec, user_table.codes) if user_table is not None else ([], {})
    spec = example_feature_spec(args.history_length, user_spec)
    out = (out or args.output).rstrip("/")
    range_bytes = int(args.read_range_mb * (1 << 20))

    ranges = (pipeline
              | "Ranges" >> beam.Create([r for f in files for r in inputs.split_ranges(f, range_bytes)])
              | "SpreadRanges" >> beam.Reshuffle())
    parsed = ranges | "Validate" >> beam.ParDo(ParseRangeFn(args.video_features, args.user_features)).with_outputs(
        "dead", "stats", main="rows")
    dates = (parsed.stats
             | "DatesOnly" >> beam.Map(lambda s: {"dates": s["dates"]})
             | "Dates" >> beam.CombineGlobally(outputs.StatsCombineFn())
             | "DateDict" >> beam.Map(lambda s: s.get("dates", {})))
    per_user = (parsed.rows
                | "ByUser" >> beam.GroupByKey()
                | "UserExamples" >> beam.ParDo(
                    UserExamplesFn(spec, args.video_features, args.user_features, args.history_length,
                                   args.eval_days, args.history_implementation, args.encode_batch),
                    dates=beam.pvalue.AsSingleton(dates)).with_outputs("train", "eval", "dead", "stats"))
    for split in ("train", "eval"):
        (per_user[split] | f"Write{split.title()}" >> beam.io.WriteToTFRecord(
            f"{out}/{split}/part", file_name_suffix=".tfrecord.gz", compression_type=CompressionTypes.GZIP))
    ((parsed.dead, per_user.dead) | "AllDead" >> beam.Flatten()
     | "WriteDead" >> beam.io.WriteToText(f"{out}/dead_letter/rows", file_name_suffix=".jsonl"))
    stats = ((parsed.stats, per_user.stats) | "AllStats" >> beam.Flatten()
             | "Summary" >> beam.CombineGlobally(outputs.StatsCombineFn()))
    (stats | "Corpus" >> beam.ParDo(CorpusFn(args.video_features))
     | "WriteCorpus" >> beam.io.WriteToTFRecord(f"{out}/corpus/part", file_name_suffix=".tfrecord.gz",
                                               compression_type=CompressionTypes.GZIP))
    meta_kwargs = dict(spec=spec, history_length=args.history_length, user_features=user_spec,
                       user_codes=user_codes, eval_days=args.eval_days, command=command, options=options_dict,
                       side_information=side_information(video_table, user_table),
                       inputs={"files": [f.path for f in files], "empty_files": list(empty_inputs)})
    stats | "Metadata" >> beam.Map(outputs.write_summary, out, args.video_features, meta_kwargs,
                                   args.vocab_min_count)
    return pipeline


def run(argv=None, return_result=False):
    """Check the inputs, build and run the job, swap its output in; returns the metadata dict written
    (and the PipelineResult). Bad inputs raise :class:`InputError` before ``--output`` is touched."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, beam_args = parse_args(argv)
    if not any(a == "--runner" or a.startswith("--runner=") for a in beam_args):
        beam_args = ["--runner=DirectRunner"] + beam_args
    files, empty_inputs = inputs.resolve(args.input)
    tables = load_side_tables(args)
    staging = output_folder.prepare(args.output, args.overwrite)
    options = PipelineOptions(beam_args)
    command = "python -m beam_pipelines.build_examples " + " ".join(shlex.quote(a) for a in argv)
    options_dict = {k: v for k, v in options.get_all_options(drop_default=True).items()
                    if isinstance(v, (str, int, float, bool, list))}
    try:
        pipeline = beam.Pipeline(runner=local_runner(options), options=options)
        build(pipeline, args, command, options_dict, files, staging, tables, empty_inputs)
        result = pipeline.run()
        result.wait_until_finish()
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.open(f"{staging}/metadata.json") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except Exception as e:
        output_folder.discard(staging)
        cause = _input_error(e)
        if cause is not None:
            raise InputError(cause) from e
        raise
    rows = meta["rows"]
    if rows["train_examples"] == 0:
        reasons = ", ".join(f"{k} {v}" for k, v in rows["dead_letter_by_reason"].items()) or "none"
        raise InputError(f"no train example: of {rows['input']} rows, {rows['dead_letter']} were rejected "
                         f"({reasons}) and {rows['history_only']} are history only; --output {args.output!r} is "
                         f"left as it was, this run's folder (dead letters included) is {staging!r}")
    output_folder.publish(staging, args.output)
    logging.info("examples: %s", rows)
    return (meta, result) if return_result else meta


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
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
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
