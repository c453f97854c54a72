"""``python -m serving.client``: send one request to TF Serving (or ``serving.server``) and print the answer.

The request is built from the model's own metadata: the client asks for the signature's inputs
(names, dtypes, shapes) and fills each from an eval ``tf.Example`` (inputs are §6 feature names,
so they match one to one) or from ``--feature name=v1,v2`` flags. Candidate-axis inputs (shape
``[-1, -1]``, the ``rank`` signature) are filled from ``--candidates`` video ids, looked up in the
examples' corpus. Over gRPC it uses the official ``tensorflow-serving-api`` stubs; ``--rest``
sends TF Serving's REST JSON instead.

    python -m serving.client --server 127.0.0.1:8500 --examples out/examples --signature recommend
    python -m serving.client --server 127.0.0.1:8500 --examples out/examples --signature rank --num_candidates 20
    python -m serving.client --rest http://127.0.0.1:8501 --examples out/examples --method classify
    python -m serving.client --server 127.0.0.1:8500 --status
"""
import argparse
import base64
import dataclasses
import json
import sys
import urllib.error
import urllib.request

import tfrec_kuai  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np

_NUMPY = {"DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_INT32": np.int32, "DT_INT64": np.int64,
          "DT_STRING": object, "DT_BOOL": np.bool_}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m serving.client", description=__doc__.splitlines()[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--server", help="gRPC address host:port")
    target.add_argument("--rest", help="REST base URL, e.g. http://127.0.0.1:8501")
    p.add_argument("--model_name", default="kuai")
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--label", default=None, help="version label")
    p.add_argument("--signature", default="", help="signature name (default serving_default = recommend)")
    p.add_argument("--method", choices=("predict", "classify", "regress"), default="predict")
    p.add_argument("--examples", default=None, help="examples folder: requests from its eval split")
    p.add_argument("--index", type=int, default=0, help="which eval example (first of --count)")
    p.add_argument("--count", type=int, default=1, help="examples per request (the batch)")
    p.add_argument("--feature", action="append", default=[], metavar="NAME=V1,V2",
                   help="set/override an input; a list fills a [L] or candidate input")
    p.add_argument("--candidates", default=None, help="comma-separated video ids for candidate-axis inputs")
    p.add_argument("--num_candidates", type=int, default=10, help="corpus videos used when --candidates is absent")
    p.add_argument("--metadata", action="store_true", help="print the model's signatures and exit")
    p.add_argument("--status", action="store_true", help="print the model's version status and exit")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--json", action="store_true", help="print the raw answer as JSON")
    return p


# -- transport -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Target:
    """Which servable a request asks for: a model name and, optionally, a version or a label."""
    model_name: str = "kuai"
    version: int | None = None
    label: str | None = None


class GrpcTransport:
    """TF Serving's gRPC API through the official ``tensorflow-serving-api`` stubs."""

    def __init__(self, address, timeout):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20),
                                                               ("grpc.max_send_message_length", 64 << 20)])
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.timeout = timeout

    @staticmethod
    def _spec(spec, target, signature=None):
        spec.name = target.model_name
        if target.version is not None:
            spec.version.value = target.version
        elif target.label:
            spec.version_label = target.label
        if signature is not None:
            spec.signature_name = signature

    def signatures(self, target):
        """{name: {"inputs": {key: (dtype name, shape)}, "outputs": {...}}} from GetModelMetadata."""
        from tensorflow_serving.apis import get_model_metadata_pb2
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, target)
        response = self.predict_stub.GetModelMetadata(request, timeout=self.timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        from tensorflow.core.framework import types_pb2

        def describe(infos):
            return {k: (types_pb2.DataType.Name(v.dtype), [d.size for d in v.tensor_shape.dim]) for k, v in infos.items()}

        return {name: {"inputs": describe(s.inputs), "outputs": describe(s.outputs)}
                for name, s in signature_map.signature_def.items()}

    def status(self, target):
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, target)
        return json_format.MessageToDict(self.model_stub.GetModelStatus(request, timeout=self.timeout))

    def predict(self, target, signature, inputs):
        """``(version, {output: ndarray})`` of one Predict call."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, target, signature)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        response = self.predict_stub.Predict(request, timeout=self.timeout)
        return response.model_spec.version.value, {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def infer(self, target, signature, method, serialized):
        """Classify (``method="classify"``) or Regress serialized examples."""
        from tensorflow_serving.apis import classification_pb2, regression_pb2
        request = (classification_pb2.ClassificationRequest() if method == "classify"
                   else regression_pb2.RegressionRequest())
        self._spec(request.model_spec, target, signature)
        for record in serialized:
            request.input.example_list.examples.add().ParseFromString(record)
        if method == "classify":
            result = self.predict_stub.Classify(request, timeout=self.timeout).result
            return [[(c.label, c.score) for c in r.classes] for r in result.classifications]
        return [r.value for r in self.predict_stub.Regress(request, timeout=self.timeout).result.regressions]


class RestTransport:
    """TF Serving's REST API (JSON), the same calls as :class:`GrpcTransport`."""

    def __init__(self, url, timeout):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _path(self, target):
        path = f"{self.url}/v1/models/{target.model_name}"
        if target.version is not None:
            path += f"/versions/{target.version}"
        elif target.label:
            path += f"/labels/{target.label}"
        return path

    def _call(self, url, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                message = json.loads(body).get("error")
            except (ValueError, AttributeError):
                message = body[:200].decode("utf-8", "replace")
            raise SystemExit(f"HTTP {error.code}: {message}") from None

    def signatures(self, target):
        meta = self._call(self._path(target) + "/metadata")["metadata"]["signature_def"]["signature_def"]

        def describe(infos):
            return {k: (v["dtype"], [int(d["size"]) for d in v.get("tensor_shape", {}).get("dim", [])])
                    for k, v in infos.items()}

        return {name: {"inputs": describe(s.get("inputs", {})), "outputs": describe(s.get("outputs", {}))}
                for name, s in meta.items()}

    def status(self, target):
        return self._call(self._path(target))

    def predict(self, target, signature, inputs):
        def jsonable(v):
            if v.dtype == object:
                return [{"b64": base64.b64encode(x).decode()} for x in v.reshape(-1)] if v.ndim == 1 else v.tolist()
            return v.tolist()

        body = {"signature_name": signature, "inputs": {k: jsonable(np.asarray(v)) for k, v in inputs.items()}}
        outputs = self._call(self._path(target) + ":predict", body)["outputs"]
        if not isinstance(outputs, dict):
            outputs = {"output": outputs}
        return target.version, {k: np.asarray(v) for k, v in outputs.items()}

    def infer(self, target, signature, method, serialized):
        import tensorflow as tf
        examples = []
        for record in serialized:
            example = tf.train.Example.FromString(record)
            row = {}
            for name, feature in example.features.feature.items():
                kind = feature.WhichOneof("kind")
                values = list(getattr(feature, kind).value) if kind else []
                if kind == "bytes_list":
                    values = [{"b64": base64.b64encode(v).decode()} for v in values]
                row[name] = values
            examples.append(row)
        body = {"signature_name": signature, "examples": examples}
        return self._call(self._path(target) + (":classify" if method == "classify" else ":regress"), body)["results"]


# -- building inputs ----------------------------------------------------------------------------
def example_features(record):
    """``{feature name: list of values}`` of one serialized ``tf.train.Example``: the rows
    :func:`build_inputs` fills a request from."""
    import tensorflow as tf
    example = tf.train.Example.FromString(record)
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind:
            out[name] = list(getattr(feature, kind).value)
    return out


def _parse_flag(text):
    name, _, values = text.partition("=")
    if not name or not _:
        raise SystemExit(f"--feature wants NAME=V1,V2: {text!r}")
    return name, [v for v in values.split(",") if v != ""]


def build_inputs(signature, rows, overrides, candidates):
    """Fill every input of ``signature`` from example rows, flags and candidate columns."""
    inputs = {}
    for key, (dtype, shape) in signature["inputs"].items():
        np_type = _NUMPY.get(dtype, np.float32)
        if key in overrides:
            values = overrides[key]
            column = [values if len(shape) > 1 else values[0] for _ in range(max(1, len(rows)))]
        elif len(shape) == 2 and shape[1] == -1 and key in candidates:  # candidate axis [B, C]
            column = [candidates[key] for _ in range(max(1, len(rows)))]
        elif rows and all(key in r for r in rows):
            column = [r[key] if len(shape) > 1 else r[key][0] for r in rows]
        else:
            raise SystemExit(f"input '{key}' ({dtype} {shape}) is not in the example: give --feature {key}=...")
        inputs[key] = np.asarray(column, dtype=np_type) if np_type is not object else np.asarray(
            [c if isinstance(c, bytes) else str(c).encode() for c in column], dtype=object)
    return inputs


def pick_candidates(corpus, wanted=None, count=10):
    """Corpus columns of the ``wanted`` video ids (all must be in the corpus), or of the first
    ``count`` corpus videos: what fills a candidate-axis input."""
    if corpus is None:
        return {}
    if wanted:
        index = {int(v): i for i, v in enumerate(corpus["video_id"])}
        missing = [v for v in wanted if v not in index]
        if missing:
            raise SystemExit(f"--candidates not in the corpus: {missing}")
        rows = [index[v] for v in wanted]
    else:
        rows = list(range(min(count, len(corpus["video_id"]))))
    return {name: [values[i].item() for i in rows] for name, values in corpus.items()}


# -- printing ------------------------------------------------------------------------------------
def format_predict(outputs):
    """A table when outputs are [B, N] per item (recommend / rank / retrieve), arrays otherwise."""
    lines = []
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    shapes = {v.shape for v in arrays.values()}
    if len(shapes) == 1 and len(next(iter(shapes))) == 2:
        keys = (["video_id"] if "video_id" in arrays else []) + sorted(k for k in arrays if k != "video_id")
        for b in range(next(iter(shapes))[0]):
            lines.append(f"request row {b}:")
            lines.append("  " + " ".join(f"{k:>15}" for k in ["#"] + keys))
            for i in range(next(iter(shapes))[1]):
                cells = [f"{i + 1:>15}"] + [
                    f"{arrays[k][b, i]:>15}" if arrays[k].dtype.kind in "iu" else f"{float(arrays[k][b, i]):>15.4f}"
                    for k in keys]
                lines.append("  " + " ".join(cells))
    else:
        for key in sorted(arrays):
            lines.append(f"{key} {list(arrays[key].shape)}: {np.array2string(arrays[key], precision=4)}")
    return "\n".join(lines)


def main(argv=None):
    """The command: a server's refusal, an unreachable server or an ``--examples`` folder it cannot
    read is one line and exit status 1."""
    import grpc

    from tfrec_kuai.errors import InputError
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except InputError as error:
        raise SystemExit(str(error)) from None
    except grpc.RpcError as error:
        raise SystemExit(f"gRPC {error.code().name} from {args.server}: {error.details()}") from None
    except urllib.error.URLError as error:
        raise SystemExit(f"cannot reach {args.rest}: {error.reason}") from None


def _read_examples(examples_dir, index, count):
    """``(serialized eval examples [index, index + count), corpus or None)`` of an examples folder,
    through the model package's one reader of that folder."""
    if not examples_dir:
        return [], None
    from tfrec_kuai.data.examples import read_corpus, read_serialized_examples, split_files
    from tfrec_kuai.errors import InputError
    serialized = read_serialized_examples(examples_dir, "eval", index + count)[index:]
    try:
        split_files(examples_dir, "corpus")
    except InputError:
        return serialized, None  # requests without a candidate axis need no corpus
    return serialized, read_corpus(examples_dir)


def _run(args):
    transport = RestTransport(args.rest, args.timeout) if args.rest else GrpcTransport(args.server, args.timeout)
    target = Target(args.model_name, args.version, args.label)
    if args.status:
        print(json.dumps(transport.status(target), indent=2))
        return 0
    serialized, corpus = _read_examples(args.examples, args.index, args.count)  # before any request
    signatures = transport.signatures(target)
    if args.metadata:
        for name, signature in sorted(signatures.items()):
            print(f"signature '{name}':")
            for side in ("inputs", "outputs"):
                for key, (dtype, shape) in sorted(signature[side].items()):
                    print(f"  {side[:-1]:6} {key:18} {dtype:10} {shape}")
        return 0
    if args.method != "predict":
        if not serialized:
            raise SystemExit("--method classify/regress needs --examples")
        signature = args.signature or ("examples" if args.method == "classify" else "examples_score")
        results = transport.infer(target, signature, args.method, serialized)
        print(json.dumps(results, indent=2) if args.json else "\n".join(
            f"example {i}: {r}" for i, r in enumerate(results)))
        return 0
    name = args.signature or "serving_default"
    if name not in signatures:
        raise SystemExit(f"model has no signature '{name}'; it has {sorted(signatures)}")
    rows = [example_features(r) for r in serialized]
    overrides = dict(_parse_flag(f) for f in args.feature)
    wanted = [int(v) for v in args.candidates.split(",")] if args.candidates else None
    inputs = build_inputs(signatures[name], rows, overrides, pick_candidates(corpus, wanted, args.num_candidates))
    version, outputs = transport.predict(target, name, inputs)
    if args.json:
        print(json.dumps({k: np.asarray(v).tolist() for k, v in outputs.items()}, default=str))
    else:
        print(f"model {args.model_name} version {version} signature {name}")
        print(format_predict(outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
