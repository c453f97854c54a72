"""``python -m serving.server``: a model server that speaks TF Serving's gRPC and REST APIs.

Stock ``tensorflow_model_server`` cannot load a custom op without a rebuild, so the fused export
needs this server; it takes ``tensorflow_model_server``'s flag names so the two are used alike:

    python -m serving.server --port=8500 --rest_api_port=8501 \
        --model_name=kuai --model_base_path=/abs/export/kuai \
        [--model_config_file=models.config] [--enable_batching --batching_parameters_file=batching.config]

The op library is loaded before any SavedModel, so fused exports run. It listens on 127.0.0.1
unless ``--host`` says otherwise.
"""
import argparse
import concurrent.futures
import logging
import os
import signal
import sys
import threading

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
from serving import admission

log = logging.getLogger("serving.server")
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


def _bool(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0 = pick a free one)")
    p.add_argument("--rest_api_port", type=int, default=0, help="REST port; 0 disables REST (as in TF Serving), -1 picks a free port")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--model_name", default="kuai")
    p.add_argument("--model_base_path", default="", help="folder holding numeric version folders")
    p.add_argument("--model_config_file", default="", help="text-format ModelServerConfig (instead of --model_*)")
    p.add_argument("--enable_batching", type=_bool, nargs="?", const=True, default=False)
    p.add_argument("--batching_parameters_file", default="", help="text-format BatchingParameters")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                   help="how often to look for new versions; 0 = only at startup")
    p.add_argument("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True)
    p.add_argument("--num_request_iterations_for_warmup", type=int, default=1)
    p.add_argument("--max_message_size_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                   help="largest gRPC message / REST body accepted (RESOURCE_EXHAUSTED / 413 beyond)")
    p.add_argument("--rest_read_timeout_s", type=float, default=30.0,
                   help="REST: how long a connection may wait for its next request, and how long one request's "
                        "header and body may take to arrive in total (408 and the connection closed beyond)")
    p.add_argument("--max_num_load_retries", type=int, default=5,
                   help="times a version that failed to load is retried before it is given up (TF Serving's "
                        "flag and default); a version whose files change later is tried again")
    p.add_argument("--load_retry_interval_micros", type=int, default=60_000_000,
                   help="wait between load retries, microseconds (TF Serving's default: one minute)")
    p.add_argument("--grpc_max_threads", type=int, default=64,
                   help="threads serving gRPC calls (gRPC Python: calls in flight; the C++ transport: calls "
                        "being handled, not those waiting for their batch)")
    p.add_argument("--max_concurrent_model_runs", type=int, default=admission.DEFAULT_SLOTS,
                   help="unbatched model runs at once, across models and transports; the others wait, first "
                        "come first served (default: 4 x the cores, TF Serving's default number of request "
                        "threads; 0: no limit). Batched signatures are bounded by num_batch_threads instead")
    p.add_argument("--grpc_transport", choices=("auto", "native", "python"), default="auto",
                   help="who does the RPC work: gRPC C++ (native, where it was built), gRPC Python, or "
                        "native when available (auto); the same servicers answer either way")
    p.add_argument("--request_log_seed", type=int, default=None,
                   help="seed of the request loggers' samplers (a model config's logging_config); default: "
                        "the OS's entropy, as TF Serving. Seeded, the same number of the first N calls is logged")
    p.add_argument("--ssl_config_file", default="",
                   help="text-format SSLConfig (server_key, server_cert, custom_ca, client_verify) for gRPC TLS")
    p.add_argument("--op_library", action="append", default=[],
                   help="extra custom-op .so to load before models (the tfrec_kuai op library is always tried)")
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                   help="threads inside one op (0 = TensorFlow's default: all cores)")
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                   help="ops run at once (0 = TensorFlow's default)")
    p.add_argument("--log_level", default="INFO")
    p.add_argument("--verbose", action="store_true",
                   help="keep TensorFlow's C++ start-up notices (quiet by default, as in every tfrec-kuai command)")
    return p


def load_op_libraries(extra=()):
    """Register the fused attention op (and any extra libraries) so fused SavedModels load."""
    import tensorflow as tf
    loaded = []
    try:
        from tfrec_kuai import ops
        ops.load_op_library()
        loaded.append("tfrec_kuai")
    except Exception as error:  # the portable export still serves without it
        log.warning("tfrec_kuai op library not loaded (%s); fused exports will fail to load", error)
    for path in extra:
        tf.load_op_library(path)
        loaded.append(path)
    return loaded


def read_flag_file(flag, path, read):
    """``read(path)``, with a file that is missing or does not parse as one clear line naming the
    flag (SystemExit), not a traceback."""
    from google.protobuf import text_format
    try:
        return read(path)
    except OSError as error:
        raise SystemExit(f"--{flag}={path}: {error.strerror or error}") from None
    except (text_format.ParseError, ValueError) as error:
        raise SystemExit(f"--{flag}={path}: not a valid text-format file: {error}") from None


def model_server_config(args):
    """The ModelServerConfig from --model_config_file, or one model from --model_name/--model_base_path."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    config = model_server_config_pb2.ModelServerConfig()
    if args.model_config_file:
        def read(path):
            with open(path) as f:
                text_format.Parse(f.read(), config)
        read_flag_file("model_config_file", args.model_config_file, read)
    elif args.model_base_path:
        model = config.model_config_list.config.add()
        model.name = args.model_name
        model.base_path = os.path.abspath(args.model_base_path)
        model.model_platform = "tensorflow"
    else:
        raise SystemExit("give --model_base_path or --model_config_file")
    return config


def _ssl_credentials(ssl):
    import grpc
    return grpc.ssl_server_credentials(
        [(ssl.server_key.encode(), ssl.server_cert.encode())],
        root_certificates=ssl.custom_ca.encode() if ssl.custom_ca else None,
        require_client_auth=bool(ssl.client_verify))


def _choose_transport(requested):
    """``native`` / ``python`` for ``--grpc_transport``; ``auto`` is native where it was built."""
    from serving import native_grpc
    if requested == "native" and not native_grpc.available():
        raise SystemExit(f"--grpc_transport=native: not built here ({native_grpc.IMPORT_ERROR}); "
                         "install gRPC C++ (libgrpc++-dev) and rebuild, or use --grpc_transport=python")
    if requested == "auto":
        return "native" if native_grpc.available() else "python"
    return requested


def _python_grpc_server(address, prediction, model, args, ssl):
    """A started gRPC Python server for the two servicers, and its port."""
    import grpc
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
    options = [("grpc.max_receive_message_length", args.max_message_size_bytes),
               ("grpc.max_send_message_length", args.max_message_size_bytes),
               ("grpc.so_reuseport", 0)]
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=args.grpc_max_threads, thread_name_prefix="grpc"),
        options=options, maximum_concurrent_rpcs=None)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model, server)
    port = server.add_secure_port(address, _ssl_credentials(ssl)) if ssl is not None else server.add_insecure_port(address)
    if not port:
        raise SystemExit(f"cannot listen on {address}")
    server.start()
    return server, port


class ModelServer:
    """The whole server in-process: manager + gRPC + optional REST. ``start()`` then ``stop()``."""

    def __init__(self, args):
        self.args = args
        self.manager = None
        self.grpc_server = None
        self.grpc_transport = None  # "native" or "python" once started
        self.rest_server = None
        self.port = None
        self.rest_port = None

    def start(self):
        """Load the models and listen; a configuration it cannot take stops it with one line
        (SystemExit) after releasing what it had started."""
        from serving.errors import ServingError
        try:
            return self._start()
        except ServingError as error:
            self.stop()
            raise SystemExit(f"cannot start: {error.message}") from None
        except BaseException:
            self.stop()
            raise

    def _start(self):
        from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2
        from serving.batching import BatchingOptions
        from serving.grpc_service import ModelServicer, PredictionServicer
        from serving.manager import ModelManager
        from serving.native_grpc import NativeGrpcServer
        from serving.rest import RestServer
        from serving.ssl_config import read_ssl_config

        args = self.args
        import tensorflow as tf
        try:  # only possible before TensorFlow has run anything in this process
            if args.tensorflow_intra_op_parallelism:
                tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
            if args.tensorflow_inter_op_parallelism:
                tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
        except RuntimeError as error:
            log.warning("thread pool sizes not applied: %s", error)
        load_op_libraries(args.op_library)
        batching = None
        if args.enable_batching:
            batching = (read_flag_file("batching_parameters_file", args.batching_parameters_file,
                                       BatchingOptions.from_file)
                        if args.batching_parameters_file else BatchingOptions())
            log.info("dynamic batching on: %s", batching)
        self.manager = ModelManager(model_server_config(args), args.file_system_poll_wait_seconds, batching,
                                    args.num_request_iterations_for_warmup, args.enable_model_warmup,
                                    admission.FairGate(args.max_concurrent_model_runs), args.max_num_load_retries,
                                    args.load_retry_interval_micros / 1e6, args.request_log_seed)
        self.manager.start()
        self.manager.check_labels()  # as TF Serving: a label must name an available version
        prediction, model = PredictionServicer(self.manager, args.max_message_size_bytes), ModelServicer(self.manager)
        ssl = read_flag_file("ssl_config_file", args.ssl_config_file, read_ssl_config) if args.ssl_config_file else None
        address = f"{args.host}:{args.port}"
        self.grpc_transport = _choose_transport(args.grpc_transport)
        if self.grpc_transport == "native":
            services = [(prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"], prediction),
                        (model_service_pb2.DESCRIPTOR.services_by_name["ModelService"], model)]
            self.grpc_server = NativeGrpcServer(address, services, args.max_message_size_bytes,
                                                args.grpc_max_threads, ssl)
            self.port = self.grpc_server.start()
        else:
            self.grpc_server, self.port = _python_grpc_server(address, prediction, model, args, ssl)
        log.info("gRPC (%s transport) on %s:%s", self.grpc_transport, args.host, self.port)
        if args.rest_api_port:  # -1: any free port (printed at startup)
            self.rest_server = RestServer(self.manager, args.host, max(0, args.rest_api_port),
                                          args.max_message_size_bytes, args.rest_read_timeout_s).start()
            self.rest_port = self.rest_server.port
        return self

    def stop(self):
        if self.rest_server is not None:
            self.rest_server.stop()
        if self.grpc_server is not None:
            self.grpc_server.stop(1.0).wait()
        if self.manager is not None:
            self.manager.stop()


def start_in_process(**flags):
    """Start a server from keyword flags (tests, benchmarks). ``rest_api_port=-1`` = a free REST port."""
    argv = []
    for key, value in flags.items():
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            argv.append(f"--{key}={item}")
    return ModelServer(build_parser().parse_args(argv)).start()


def main(argv=None):
    args = build_parser().parse_args(argv)
    from tfrec_kuai.quiet import quiet_tensorflow
    quiet_tensorflow(args.verbose)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Before anything is announced: a SIGTERM right after "listening" must drain and stop, not kill.
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    server = ModelServer(args).start()
    for name in server.manager.model_names():
        versions = server.manager.available_versions(name)
        print(f"model {name}: " + (f"serving versions {versions}" if versions else
                                   f"NOTHING servable yet ({server.manager.health(name)})"), flush=True)
    for path in server.manager.request_logger.files():
        print(f"request log: {path}", flush=True)
    print(f"gRPC listening on {args.host}:{server.port}", flush=True)
    if server.rest_port:
        print(f"REST listening on {args.host}:{server.rest_port}", flush=True)
    # A timed wait: the kernel may hand SIGTERM to any of the server's threads, and Python runs
    # its handler only when the main thread runs again — an untimed wait could sleep through it.
    while not done.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
