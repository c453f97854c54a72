// A closed-loop gRPC load generator in C++, for benchmarks/bench_serving.py: ``clients`` calls of
// one unary method in flight, each client sending its next request as soon as its answer is in
// (the model of ghz and of TF Serving's own load tools).
//
// Why: the benchmark's clients run on the same 2 cores as the server. A client on gRPC Python (the
// official stubs) spends ≈ 0.3 ms of CPU per call under its own interpreter lock, so at 8 clients
// the load generator itself spaces the requests of a batch ≈ 0.55 ms apart and takes CPU the
// server's model needs (benchmarks/RESULTS.md, "Where a batched rank cycle goes"). Real clients
// run on other machines; this one costs the host a few tens of microseconds per call, so what it
// measures is closer to the server alone. The request bytes are a serialized PredictRequest made by the official
// ``tensorflow-serving-api`` classes; the answers are not parsed, only their status is checked.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <pybind11/pybind11.h>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

using Clock = std::chrono::steady_clock;

// Python's float seconds as a duration the clocks accept.
std::chrono::microseconds Seconds(double seconds) {
  return std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6));
}

// One client: its own channel, as each Python client in the benchmark has, and its call in flight.
struct Client {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<grpc::GenericStub> stub;
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
  grpc::ByteBuffer response;
  grpc::Status status;
  Clock::time_point start;
};

struct LoadResult {
  std::vector<double> latencies_ms;  // answered OK, started inside the measured window
  long errors = 0;                   // every call that did not answer OK, window or not
  std::string first_error;
};

void StartCall(Client& client, const std::string& method, const grpc::ByteBuffer& request,
               grpc::CompletionQueue* queue, double timeout_seconds) {
  client.context = std::make_unique<grpc::ClientContext>();
  client.context->set_deadline(std::chrono::system_clock::now() + Seconds(timeout_seconds));
  client.response.Clear();
  client.start = Clock::now();
  client.reader = client.stub->PrepareUnaryCall(client.context.get(), method, request, queue);
  client.reader->StartCall();
  client.reader->Finish(&client.response, &client.status, &client);
}

// The loop runs on the calling thread (without the GIL): one completion queue, every call async.
LoadResult ClosedLoop(const std::string& target, const std::string& method, const std::string& request_bytes,
                      int clients, double warmup_seconds, double seconds, double timeout_seconds) {
  if (clients < 1) throw std::invalid_argument("clients must be at least 1");
  if (warmup_seconds < 0 || seconds < 0) throw std::invalid_argument("warmup_seconds and seconds must be >= 0");
  grpc::Slice slice(request_bytes.data(), request_bytes.size());
  const grpc::ByteBuffer request(&slice, 1);
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(-1);
  arguments.SetMaxSendMessageSize(-1);
  grpc::CompletionQueue queue;
  std::vector<Client> pool(clients);
  const auto begin = Clock::now();
  const auto window_start = begin + Seconds(warmup_seconds);
  const auto window_end = window_start + Seconds(seconds);
  for (auto& client : pool) {
    client.channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), arguments);
    client.stub = std::make_unique<grpc::GenericStub>(client.channel);
    StartCall(client, method, request, &queue, timeout_seconds);
  }
  LoadResult result;
  int in_flight = clients;
  void* tag = nullptr;
  bool ok = false;
  while (in_flight > 0 && queue.Next(&tag, &ok)) {
    const auto now = Clock::now();
    Client& client = *static_cast<Client*>(tag);
    if (ok && client.status.ok()) {
      if (client.start >= window_start) {
        result.latencies_ms.push_back(std::chrono::duration<double, std::milli>(now - client.start).count());
      }
    } else {
      ++result.errors;
      if (result.first_error.empty()) {
        result.first_error = "code " + std::to_string(static_cast<int>(client.status.error_code())) + ": " +
                             client.status.error_message();
      }
    }
    if (now < window_end) {
      StartCall(client, method, request, &queue, timeout_seconds);
    } else {
      --in_flight;
    }
  }
  queue.Shutdown();
  while (queue.Next(&tag, &ok)) {
  }
  return result;
}

}  // namespace

PYBIND11_MODULE(_grpc_load, m) {
  m.doc() = "Closed-loop gRPC load in C++ (benchmarks): clients in flight, each resending on its answer";
  m.def(
      "closed_loop",
      [](const std::string& target, const std::string& method, py::bytes request, int clients,
         double warmup_seconds, double seconds, double timeout_seconds) {
        std::string request_bytes = request;  // copied with the GIL
        LoadResult result;
        {
          py::gil_scoped_release release;
          result = ClosedLoop(target, method, request_bytes, clients, warmup_seconds, seconds, timeout_seconds);
        }
        py::dict out;
        py::list latencies;
        for (double latency : result.latencies_ms) latencies.append(latency);
        out["latencies_ms"] = latencies;
        out["errors"] = result.errors;
        out["first_error"] = result.first_error;
        return out;
      },
      py::arg("target"), py::arg("method"), py::arg("request"), py::arg("clients"), py::arg("warmup_seconds"),
      py::arg("seconds"), py::arg("timeout_seconds") = 30.0,
      "Send ``request`` (serialized bytes) to ``method`` (\"/package.Service/Method\") at ``target`` from "
      "``clients`` concurrent closed-loop clients for ``warmup_seconds`` + ``seconds``. Returns "
      "{latencies_ms: [calls answered OK that started in the last ``seconds``], errors: calls not answered "
      "OK (any time), first_error: str}.");
}
