"""The model manager: which versions exist on disk, which should serve, and the swap between them.

It follows TF Serving's file-system source and availability-preserving policy: every
``--file_system_poll_wait_seconds`` it lists the numeric version folders under each model's base
path, chooses the aspired versions by the model's version policy (latest N / all / specific),
loads and warms up the new ones, makes them AVAILABLE, and only then unloads versions no longer
aspired. Lookups read an immutable snapshot that is replaced in one assignment, so a request
never sees a half-swapped state and in-flight requests finish on the version they started on.

Faults, as TF Serving handles them:

* a base path that cannot be listed (missing, unmounted, unreadable) changes nothing: the loaded
  versions keep serving and the condition is logged once when it starts and once when it ends;
  a base path that lists without version folders unloads, as in TF Serving, and says so, naming
  the numeric-folder rule;
* a version that fails to load (or to warm up) is retried ``max_num_load_retries`` times,
  ``load_retry_interval_s`` apart, while it shows LOADING with the last error — a version copied
  non-atomically (``saved_model.pb`` before ``variables/``) loads once its copy is complete.
  After the last retry it is END with its error and left out; it is tried again only when its
  files change. While no aspired version is available, the newest older version that loads serves
  instead, so a corrupt newest version never leaves the model without an answer;
* a reloaded config whose base path cannot be listed, or whose version label names a version
  that is not available, is refused and the current config keeps serving.
"""
import logging
import os
import threading
import time

from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import ServingError, failed_precondition, invalid_argument, not_found
from serving.request_logger import ServerRequestLogger
from serving.servable import Servable, version_is_ready
from serving.warmup import run_warmup

log = logging.getLogger("serving.manager")
State = get_model_status_pb2.ModelVersionStatus.State


class VersionRecord:
    """What the manager knows about one version folder (reported by GetModelStatus)."""

    def __init__(self, version, path):
        self.version = version
        self.path = path
        self.state = State.START
        self.error = ""
        self.servable = None
        self.marker = None  # the files' mtimes at a failed load: a given-up version is retried once they change
        self.warmup_requests = 0
        self.attempts = 0  # failed load attempts so far
        self.retry_at = None  # monotonic time of the next attempt while LOADING after a failure


class ModelEntry:
    def __init__(self, config):
        self.config = config
        self.records = {}
        self.available = {}  # version -> Servable; replaced, never mutated
        self.labels = dict(config.version_labels)
        self.health = None  # the last condition logged for this model's base path


def _ready_marker(path):
    """The mtimes of what a load reads (saved_model.pb, variables/): a change means new files."""
    marker = []
    for name in ("saved_model.pb", "saved_model.pbtxt", "variables", os.path.join("variables", "variables.index")):
        try:
            marker.append(os.stat(os.path.join(path, name)).st_mtime_ns)
        except OSError:
            marker.append(None)
    return tuple(marker)


def list_versions(base):
    """``{version: folder}`` of the numeric folders under ``base``; OSError when it cannot be listed."""
    found = {}
    for name in os.listdir(base):
        if name.isdigit() and os.path.isdir(os.path.join(base, name)):
            found[int(name)] = os.path.join(base, name)
    return found


NUMERIC_FOLDER_RULE = "a version is a folder named by a number holding saved_model.pb (<base path>/1/saved_model.pb)"


class ModelManager:
    """Owns every model's versions; thread-safe lookups, one background poller."""

    def __init__(self, config, poll_seconds=1.0, batching_options=None, warmup_iterations=1, enable_warmup=True,
                 run_gate=None, max_num_load_retries=5, load_retry_interval_s=60.0, request_log_seed=None):
        """``run_gate``: the ``serving.admission.FairGate`` that bounds unbatched model runs across all
        the servables (None: unbounded). ``max_num_load_retries``, ``load_retry_interval_s``: TF
        Serving's load retries (its flags ``--max_num_load_retries``,
        ``--load_retry_interval_micros``). ``request_log_seed``: the request loggers' sampler seed
        (None: the OS's entropy; ``serving.request_logger``)."""
        self.max_num_load_retries = max(0, int(max_num_load_retries))
        self.load_retry_interval_s = max(0.0, float(load_retry_interval_s))
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()
        self._models = {}
        self.poll_seconds = poll_seconds
        self.batching_options = batching_options
        self.run_gate = run_gate
        self.warmup_iterations = warmup_iterations
        self.enable_warmup = enable_warmup
        self._stop = threading.Event()
        self._thread = None
        self.request_logger = ServerRequestLogger(request_log_seed)  # the models' logging_config
        self.set_config(config)

    # -- configuration -------------------------------------------------------------------------
    @staticmethod
    def check_config(config):
        """INVALID_ARGUMENT for a ModelServerConfig this server cannot take."""
        if config.WhichOneof("config") != "model_config_list":
            raise invalid_argument("only model_config_list configs are supported")
        names = [c.name for c in config.model_config_list.config]
        if len(set(names)) != len(names):
            raise invalid_argument(f"duplicate model names in config: {names}")
        for c in config.model_config_list.config:
            if c.model_platform and c.model_platform != "tensorflow":
                raise invalid_argument(f"model '{c.name}': unsupported model_platform '{c.model_platform}'")
        ServerRequestLogger.check(config)

    def set_config(self, config):
        """Adopt a ModelServerConfig: new models are added, removed ones unloaded; request loggers
        follow the models' logging_config (a log file that cannot be opened refuses the config)."""
        self.check_config(config)
        self.request_logger.update(config)
        with self._lock:
            old = self._models
            models = {}
            for c in config.model_config_list.config:
                entry = old.get(c.name)
                if entry is None or entry.config.base_path != c.base_path:
                    entry = ModelEntry(c)
                else:
                    entry.config = c
                    entry.labels = dict(c.version_labels)
                models[c.name] = entry
            self._models = models
            removed = [e for n, e in old.items() if n not in models or models[n] is not e]
        for entry in removed:
            self._unload_all(entry)

    def reload_config(self, config):
        """HandleReloadConfigRequest: adopt ``config`` and load it, or refuse it and keep serving the
        current one. Refused (INVALID_ARGUMENT / FAILED_PRECONDITION, TF Serving's codes): a model
        whose base path cannot be listed, a version label naming a version that is not
        available once the new config has loaded."""
        self.check_config(config)
        for c in config.model_config_list.config:
            try:
                on_disk = list_versions(c.base_path)
            except OSError as error:
                raise invalid_argument(f"Could not find base path {c.base_path} for servable {c.name} with error "
                                       f"{error}; the current config keeps serving") from None
            for label, version in sorted(c.version_labels.items()):
                if version not in on_disk:  # refused before anything changes
                    raise failed_precondition(
                        f"Request to assign label '{label}' to version {version} of model {c.name}, which is not "
                        f"currently available (no version folder {version} under {c.base_path}). Labels can only "
                        "point to available versions; the current config keeps serving")
        with self._load_lock:
            previous = self.config()
            self.set_config(config)
            self._poll_all()
            try:
                self.check_labels()
            except ServingError:
                self.set_config(previous)
                self._poll_all()
                raise

    def check_labels(self):
        """FAILED_PRECONDITION unless every version label names an AVAILABLE version (TF Serving:
        labels can only point to available versions)."""
        with self._lock:
            entries = list(self._models.values())
        for entry in entries:
            for label, version in sorted(entry.labels.items()):
                if version not in entry.available:
                    raise failed_precondition(
                        f"Request to assign label '{label}' to version {version} of model {entry.config.name}, which "
                        f"is not currently available (available: {sorted(entry.available) or 'none'}). Labels can "
                        "only point to available versions")

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self):
        """Load what is on disk now (blocking, as TF Serving does at startup), then keep polling
        (and retrying failed loads, even with polling off)."""
        self.poll_once()
        self._thread = threading.Thread(target=self._poll_loop, name="version-watcher", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            entries = list(self._models.values())
        for entry in entries:
            self._unload_all(entry)
        self.request_logger.close()  # after the last request: what is queued is written and flushed

    def _poll_loop(self):
        """Poll every ``poll_seconds``, and wake for a due load retry. With polling off (0) only the
        retries run: the versions found at startup are retried, no new folder is looked for."""
        polling = bool(self.poll_seconds and self.poll_seconds > 0)
        while True:
            due = self._next_retry()
            waits = [self.poll_seconds] if polling else []
            if due is not None:
                waits.append(max(0.0, due - time.monotonic()))
            if self._stop.wait(min(waits) if waits else 0.5):
                return
            if not polling and (due is None or time.monotonic() < due):
                continue
            try:
                with self._load_lock:
                    self._poll_all(known_only=not polling)
            except Exception:  # the watcher must survive anything a folder can throw at it
                log.exception("version poll failed")

    def _next_retry(self):
        with self._lock:
            times = [r.retry_at for e in self._models.values() for r in e.records.values()
                     if r.state == State.LOADING and r.retry_at is not None]
        return min(times) if times else None

    # -- the poll ------------------------------------------------------------------------------
    def poll_once(self):
        with self._load_lock:
            self._poll_all()

    def _poll_all(self, known_only=False):
        with self._lock:
            entries = list(self._models.values())
        for entry in entries:
            self._poll_model(entry, known_only)

    def _report(self, entry, health, level=logging.WARNING):
        """Log a model's condition once when it begins (and once when it clears)."""
        if health != entry.health:
            if health is not None:
                log.log(level, "model %s: %s", entry.config.name, health)
            elif entry.health is not None:
                log.info("model %s: base path %s readable again, versions %s on disk", entry.config.name,
                         entry.config.base_path, sorted(self._safe_list(entry)))
            entry.health = health

    @staticmethod
    def _safe_list(entry):
        try:
            return list_versions(entry.config.base_path)
        except OSError:
            return {}

    def _versions_on_disk(self, entry):
        """``{version: folder}``, or None when the base path cannot be listed (nothing changes then)."""
        base = entry.config.base_path
        try:
            return list_versions(base)
        except OSError as error:
            serving = sorted(entry.available)
            self._report(entry, f"cannot list base path {base} ({error.strerror or error}); "
                                + (f"versions {serving} keep serving" if serving else "nothing to serve yet")
                                + f"; {NUMERIC_FOLDER_RULE}", logging.ERROR)
            return None

    def _aspired(self, entry, candidates):
        policy = entry.config.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return set(candidates)
        if kind == "specific":
            return set(policy.specific.versions) & set(candidates)
        n = max(1, policy.latest.num_versions) if kind == "latest" else 1
        return set(sorted(candidates)[-n:])

    def _poll_model(self, entry, known_only=False):
        """One poll of a model; ``known_only``: consider only versions seen before (retries)."""
        on_disk = self._versions_on_disk(entry)
        if on_disk is None:
            return  # base path unlistable: keep what serves (TF Serving's file-system source)
        if known_only:
            on_disk = {v: p for v, p in on_disk.items() if v in entry.records}
        candidates, not_ready = {}, []
        for version, path in on_disk.items():
            if not version_is_ready(path):
                not_ready.append(version)
                continue  # still being written; TF Serving exporters rename a finished folder in
            record = entry.records.get(version)
            if record is not None and record.state == State.END and record.error and \
                    record.marker == _ready_marker(path):
                continue  # given up and unchanged since
            candidates[version] = path
        aspired = self._aspired(entry, candidates)
        for version in sorted(aspired, reverse=True):
            self._load_if_due(entry, version, candidates[version])
        # Given up during this poll: aspire the next versions instead.
        while aspired and all(self._given_up(entry, v) for v in aspired):
            for version in aspired:
                candidates.pop(version, None)
            aspired = self._aspired(entry, candidates)
            for version in sorted(aspired, reverse=True):
                self._load_if_due(entry, version, candidates[version])
        serving_aspired = entry.available.keys() & aspired
        latest_policy = entry.config.model_version_policy.WhichOneof("policy_choice") in (None, "latest")
        if aspired and not serving_aspired and not entry.available and latest_policy:
            # Nothing serves while the aspired versions retry: the newest older version that loads
            # answers meanwhile (unloaded again once an aspired version is available).
            for version in sorted(set(candidates) - aspired, reverse=True):
                if self._load_if_due(entry, version, candidates[version]):
                    break
        # Unload only once what is aspired is serving (availability preserving), or when the
        # base path lists no version at all (as TF Serving does).
        if serving_aspired or not aspired:
            for version in list(entry.available):
                if version not in aspired:
                    self._unload(entry, version)
        self._report(entry, self._health(entry, on_disk, not_ready))

    def _health(self, entry, on_disk, not_ready):
        """What keeps a model from serving, for the log (None when it serves)."""
        if entry.available:
            return None
        base = entry.config.base_path
        if not on_disk:
            return f"no versions found under base path {base}: {NUMERIC_FOLDER_RULE}; nothing is servable"
        failed = {v: r.error for v, r in entry.records.items() if r.error}
        parts = []
        if not_ready:
            parts.append(f"version folders {sorted(not_ready)} hold no saved_model.pb yet")
        if failed:
            parts.append("; ".join(f"version {v}: {e}" for v, e in sorted(failed.items())))
        return f"nothing is servable under {base}: " + ("; ".join(parts) or "no version fits the version policy")

    def _given_up(self, entry, version):
        record = entry.records.get(version)
        return record is not None and record.state == State.END and bool(record.error)

    def _load_if_due(self, entry, version, path):
        """Load ``version`` unless it serves, or waits for its next retry; True once AVAILABLE."""
        record = entry.records.get(version)
        if record is not None:
            if record.state == State.AVAILABLE:
                return True
            if record.state == State.LOADING and record.retry_at is not None and time.monotonic() < record.retry_at:
                return False
            if record.state == State.END and record.error and record.marker == _ready_marker(path):
                return False
        return self._load(entry, version, path)

    def _load(self, entry, version, path):
        """One load attempt (with warmup). On failure: LOADING with the error and a retry time, or
        END once the retries are spent. Returns True when the version is AVAILABLE."""
        name = entry.config.name
        record = entry.records.get(version)
        if record is None or record.state != State.LOADING or record.path != path:
            record = VersionRecord(version, path)
        record.state = State.LOADING
        record.retry_at = None
        with self._lock:
            entry.records[version] = record
        started = time.monotonic()
        servable = None
        try:
            servable = Servable(name, version, path, self.batching_options, self.run_gate)
            if self.enable_warmup:
                try:
                    record.warmup_requests = run_warmup(servable, self.warmup_iterations)
                except Exception as error:
                    raise RuntimeError(f"warmup failed: {getattr(error, 'message', error)}") from error
        except Exception as error:  # a broken folder must never take the server down
            if servable is not None:
                servable.close()
            record.attempts += 1
            attempts = self.max_num_load_retries + 1
            message = f"{type(error).__name__}: {error}".strip()
            record.marker = _ready_marker(path)
            if record.attempts < attempts:
                record.error = f"load attempt {record.attempts} of {attempts} failed, retrying: {message}"
                record.retry_at = time.monotonic() + self.load_retry_interval_s
                log.warning("model %s version %d: load attempt %d of %d failed (retry in %.3gs): %s", name, version,
                            record.attempts, attempts, self.load_retry_interval_s, message)
            else:
                record.state = State.END
                record.error = message if attempts == 1 else f"failed {attempts} load attempts: {message}"
                log.error("model %s version %d failed to load (%d attempts, given up until its files change): %s",
                          name, version, attempts, message)
            return False
        with self._lock:
            record.servable = servable
            record.state = State.AVAILABLE
            record.error = ""
            available = dict(entry.available)
            available[version] = servable
            entry.available = available
        log.info("model %s version %d AVAILABLE (%.2fs, %d warmup requests%s)", name, version,
                 time.monotonic() - started, record.warmup_requests,
                 f", after {record.attempts} failed attempts" if record.attempts else "")
        return True

    def _unload(self, entry, version):
        with self._lock:
            record = entry.records.get(version)
            available = dict(entry.available)
            servable = available.pop(version, None)
            entry.available = available
            if record is not None:
                record.state = State.UNLOADING
        if servable is not None:
            servable.close()
        if record is not None:
            record.servable = None
            record.state = State.END
        log.info("model %s version %d unloaded", entry.config.name, version)

    def _unload_all(self, entry):
        for version in list(entry.available):
            self._unload(entry, version)

    # -- lookups -------------------------------------------------------------------------------
    def model_names(self):
        with self._lock:
            return sorted(self._models)

    def _entry(self, name):
        with self._lock:
            entry = self._models.get(name)
        if entry is None:
            raise not_found(f"Servable not found for request: Latest({name}): no model named '{name}' "
                            f"(serving {', '.join(self.model_names()) or 'nothing'})")
        return entry

    def available_versions(self, name):
        return sorted(self._entry(name).available)

    def health(self, name):
        """Why a model serves nothing (None when it serves)."""
        return self._entry(name).health

    def resolve_version(self, name, version=None, label=None):
        """The version number a (name, version | label) request means; NOT_FOUND for unknown labels."""
        entry = self._entry(name)
        if label:
            if label not in entry.labels:
                raise not_found(f"Unrecognized servable version label: {label} (model '{name}' has "
                                f"{sorted(entry.labels) or 'no labels'})")
            return entry, entry.labels[label]
        return entry, version

    def get_servable(self, name, version=None, label=None):
        """The Servable for a request; NOT_FOUND for an unknown model, version or label."""
        entry, version = self.resolve_version(name, version, label)
        available = entry.available
        if version is None:
            if not available:
                why = f" ({entry.health})" if entry.health else ""
                raise not_found(f"Servable not found for request: Latest({name}): no version is available{why}")
            return available[max(available)]
        servable = available.get(version)
        if servable is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version}); available versions: "
                            f"{sorted(available) or 'none'}")
        return servable

    def status(self, name, version=None, label=None):
        """[VersionRecord] for GetModelStatus (newest first)."""
        entry, version = self.resolve_version(name, version, label)
        with self._lock:
            records = sorted(entry.records.values(), key=lambda r: -r.version)
        if version is not None:
            records = [r for r in records if r.version == version]
            if not records:
                raise not_found(f"Could not find version {version} of model {name}")
        elif not records:
            raise not_found(f"Could not find any versions of model {name}")
        return records

    def config(self):
        with self._lock:
            config = model_server_config_pb2.ModelServerConfig()
            for entry in self._models.values():
                config.model_config_list.config.add().CopyFrom(entry.config)
            return config
