"""The server's codecs per request: TensorProto (gRPC) against TensorFlow's own, JSON (REST) against json.

Every gRPC Predict decodes each input TensorProto and encodes each output, so this runs on
every request next to the model. Measured on the tensors of one ``rank`` request (1 user, a
history of ``--history`` events, ``--candidates`` videos: 15 inputs) and its answer (11 outputs
of ``[1, candidates]``), each side timed as a whole request, the two implementations interleaved
in the same run:

* decode: ``serving.tensors.to_numpy`` vs ``tf.make_ndarray``
* encode: ``serving.tensors.to_proto`` into a ``PredictResponse`` vs ``tf.make_tensor_proto`` +
  ``CopyFrom``
* REST answer: ``serving.json_codec`` (``predict_outputs`` + ``dumps``, orjson from NumPy) vs the
  standard library (``json.dumps`` of the outputs' ``tolist()``), columnar format

    .venv/bin/python benchmarks/bench_tensor_codec.py --repeats 7
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np


def rank_request_arrays(candidates, history):
    """A ``rank`` request's inputs (``export_rank.sample_request``, the export's own well-formed
    request, for 1 user) and an answer of the model's outputs, ``[1, candidates]`` each."""
    from tfrec_kuai.export.shared_history import sample_request
    from tfrec_kuai.models.ranking import OUTPUT_NAMES
    rng = np.random.default_rng(0)
    corpus = {"video_id": np.arange(1000, dtype=np.int64), "author_id": rng.integers(0, 300, 1000),
              "tag": rng.integers(0, 40, 1000), "duration_s": rng.uniform(5, 300, 1000).astype(np.float32)}
    user, cand = sample_request(corpus, history, users=1, candidates=candidates)
    outputs = {k: rng.random([1, candidates], np.float32) for k in OUTPUT_NAMES}
    return {**user, **cand}, outputs


def timed(fn, number):
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--history", type=int, default=50)
    p.add_argument("--repeats", type=int, default=7, help="timed runs per implementation (median reported)")
    p.add_argument("--number", type=int, default=300, help="requests per timed run")
    args = p.parse_args(argv)

    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    import json
    from serving import json_codec, tensors

    inputs, outputs = rank_request_arrays(args.candidates, args.history)
    request = predict_pb2.PredictRequest()
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))

    def decode_ours():
        return {k: tensors.to_numpy(v) for k, v in request.inputs.items()}

    def decode_tf():
        return {k: tf.make_ndarray(v) for k, v in request.inputs.items()}

    def encode_ours():
        response = predict_pb2.PredictResponse()
        for k, v in outputs.items():
            tensors.to_proto(v, response.outputs[k])
        return response

    def encode_tf():
        response = predict_pb2.PredictResponse()
        for k, v in outputs.items():
            response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
        return response

    def rest_ours():
        return json_codec.dumps(json_codec.predict_outputs(outputs, "columnar"))

    def rest_json():
        return json.dumps({"outputs": {k: v.astype(np.float64).tolist() for k, v in outputs.items()}}).encode()

    decoded, encoded = decode_tf(), encode_ours()   # same values both ways before timing anything
    for k, v in decode_ours().items():
        np.testing.assert_array_equal(v, decoded[k])
    for k, v in outputs.items():
        np.testing.assert_array_equal(tf.make_ndarray(encoded.outputs[k]), v)

    rest_back = json.loads(rest_ours())["outputs"]
    for k, v in outputs.items():
        np.testing.assert_array_equal(np.asarray(rest_back[k], np.float32), v)
    pairs = {"decode 15 inputs": (decode_ours, decode_tf), "encode 11 outputs": (encode_ours, encode_tf),
             "REST answer (JSON)": (rest_ours, rest_json)}
    print(f"rank request: 1 user, {args.history} history events, {args.candidates} candidates; "
          f"median of {args.repeats} runs of {args.number} requests")
    print(f"{'step':<20}{'serving us':>12}{'TF / json us':>14}{'them / ours':>13}")
    for name, (ours, theirs) in pairs.items():
        times = {"ours": [], "tf": []}
        for _ in range(args.repeats):            # interleaved: both see the same machine load
            times["ours"].append(timed(ours, args.number))
            times["tf"].append(timed(theirs, args.number))
        a, b = statistics.median(times["ours"]), statistics.median(times["tf"])
        print(f"{name:<20}{a:>12.1f}{b:>14.1f}{b / a:>12.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
