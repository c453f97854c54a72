"""The model manager: which versions exist on disk, which should serve, and the swap between them.

It follows TF Serving's file-system source and availability-preserving policy: every
``--file_system_poll_wait_seconds`` it lists the numeric version folders under each model's base
path, chooses the aspired versions by the model's version policy (latest N / all / specific),
loads and warms up the new ones, makes them AVAILABLE, and only then unloads versions no longer
aspired. Lookups read an immutable snapshot that is replaced in one assignment, so a request
never sees a half-swapped state and in-flight requests finish on the version they started on.
A version that fails to load or warm up is reported (state END with its error) and left out of
the aspired set, so the previous version keeps serving.
"""
import logging
import os
import threading
import time

from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import invalid_argument, not_found
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
        self.marker = None  # (mtime of saved_model.pb) of a failed load: retried once it changes
        self.warmup_requests = 0


class ModelEntry:
    def __init__(self, config):
        self.config = config
        self.records = {}
        self.available = {}  # version -> Servable; replaced, never mutated
        self.labels = dict(config.version_labels)


def _ready_marker(path):
    for name in ("saved_model.pb", "saved_model.pbtxt"):
        full = os.path.join(path, name)
        if os.path.exists(full):
            return os.stat(full).st_mtime_ns
    return None


class ModelManager:
    """Owns every model's versions; thread-safe lookups, one background poller."""

    def __init__(self, config, poll_seconds=1.0, batching_options=None, warmup_iterations=1, enable_warmup=True,
                 run_gate=None):
        """``run_gate``: the ``serving.admission.FairGate`` that bounds unbatched model runs across all
        the servables (None: unbounded)."""
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
        self.set_config(config)

    # -- configuration -------------------------------------------------------------------------
    def set_config(self, config):
        """Adopt a ModelServerConfig: new models are added, removed ones unloaded on the next poll."""
        if config.WhichOneof("config") != "model_config_list":
            raise invalid_argument("only model_config_list configs are supported")
        names = [c.name for c in config.model_config_list.config]
        if len(set(names)) != len(names):
            raise invalid_argument(f"duplicate model names in config: {names}")
        for c in config.model_config_list.config:
            if c.model_platform and c.model_platform != "tensorflow":
                raise invalid_argument(f"model '{c.name}': unsupported model_platform '{c.model_platform}'")
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

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self):
        """Load what is on disk now (blocking, as TF Serving does at startup), then keep polling."""
        self.poll_once()
        if self.poll_seconds and self.poll_seconds > 0:
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

    def _poll_loop(self):
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # the watcher must survive anything a folder can throw at it
                log.exception("version poll failed")

    # -- the poll ------------------------------------------------------------------------------
    def poll_once(self):
        with self._load_lock:
            with self._lock:
                entries = list(self._models.values())
            for entry in entries:
                self._poll_model(entry)

    def _versions_on_disk(self, entry):
        base = entry.config.base_path
        try:
            names = os.listdir(base)
        except OSError as error:
            log.warning("model %s: cannot list base path %s: %s", entry.config.name, base, error)
            return {}
        found = {}
        for name in names:
            if name.isdigit() and os.path.isdir(os.path.join(base, name)):
                found[int(name)] = os.path.join(base, name)
        return found

    def _aspired(self, entry, candidates):
        policy = entry.config.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return set(candidates)
        if kind == "specific":
            return set(policy.specific.versions) & set(candidates)
        n = max(1, policy.latest.num_versions) if kind == "latest" else 1
        return set(sorted(candidates)[-n:])

    def _poll_model(self, entry):
        on_disk = self._versions_on_disk(entry)
        candidates = {}
        for version, path in on_disk.items():
            if not version_is_ready(path):
                continue  # still being written; TF Serving exporters rename a finished folder in
            record = entry.records.get(version)
            if record is not None and record.state == State.END and record.error and \
                    record.marker == _ready_marker(path):
                continue  # failed before and unchanged since
            candidates[version] = path
        aspired = self._aspired(entry, candidates)
        for version in sorted(aspired, reverse=True):
            record = entry.records.get(version)
            if record is None or record.state not in (State.AVAILABLE, State.LOADING):
                self._load(entry, version, candidates[version])
        # Unload only once what is aspired is serving (availability preserving).
        if entry.available.keys() & aspired or not aspired:
            for version in list(entry.available):
                if version not in aspired:
                    self._unload(entry, version)

    def _load(self, entry, version, path):
        name = entry.config.name
        record = VersionRecord(version, path)
        record.state = State.LOADING
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
            record.state, record.error, record.marker = State.END, f"{type(error).__name__}: {error}", _ready_marker(path)
            log.error("model %s version %d failed to load: %s", name, version, record.error)
            return
        with self._lock:
            record.servable = servable
            record.state = State.AVAILABLE
            available = dict(entry.available)
            available[version] = servable
            entry.available = available
        log.info("model %s version %d AVAILABLE (%.2fs, %d warmup requests)", name, version,
                 time.monotonic() - started, record.warmup_requests)

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
                raise not_found(f"Servable not found for request: Latest({name}): no version is available yet")
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
