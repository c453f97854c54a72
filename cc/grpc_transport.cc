// The server's gRPC transport in C++: gRPC C++'s async generic service accepts every call,
// reads its one request message and hands (method, request bytes, responder) to a single Python
// function, which answers (status code, details, response bytes) at once, or returns None and
// answers later through ``responder.respond(...)`` from any thread (a batch thread, once the
// batch has run).
//
// Why: with gRPC Python every request costs the server ≈ 0.5 ms of interpreter time before any
// of our code runs (its poller, its thread pool hand-off, its Cython call objects), all of it
// under the GIL, so at 8 concurrent clients the requests of one batch queue behind each other
// (benchmarks/RESULTS.md, "Where a batched rank cycle goes"). Here the RPC work — HTTP/2, TLS,
// framing, the size limits — runs without the GIL on these threads; Python is entered once per
// call, for the handler only.
// The protobuf parsing and everything after it stay in Python (serving/native_grpc.py), so both
// transports run the same servicers.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace {

class Transport;
constexpr int kInternal = static_cast<int>(grpc::StatusCode::INTERNAL);

// One RPC: accepted, its request read, answered, then deleted (the completion-queue tag is
// the object itself, as in gRPC's async examples).
class Call {
 public:
  explicit Call(Transport* transport);
  void Proceed(bool ok);
  // Sends the answer (code 0: ``response`` as the message; else the status alone). Any thread;
  // the call is deleted once gRPC is done with it, so nothing may touch it afterwards.
  void Respond(int code, const std::string& details, const std::string& response);

 private:
  enum class State { kAccepting, kReading, kAnswering };
  void Answer();

  Transport* transport_;
  grpc::GenericServerContext context_;
  grpc::GenericServerAsyncReaderWriter stream_{&context_};
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  State state_ = State::kAccepting;
};

class Transport {
 public:
  Transport(std::string address, int max_message_bytes, py::object handler, int threads, bool tls,
            std::string server_key, std::string server_cert, std::string custom_ca, bool client_verify)
      : address_(std::move(address)), max_message_bytes_(max_message_bytes), handler_(std::move(handler)),
        num_threads_(threads < 1 ? 1 : threads), tls_(tls), server_key_(std::move(server_key)),
        server_cert_(std::move(server_cert)), custom_ca_(std::move(custom_ca)), client_verify_(client_verify) {}

  ~Transport() {
    if (server_) {
      py::gil_scoped_release release;
      Shutdown(0.0);
    }
  }

  // Binds, starts the threads and returns the port (the chosen one for port 0).
  int Start() {
    std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
    if (tls_) {
      grpc::SslServerCredentialsOptions options(
          client_verify_ ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                         : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
      options.pem_root_certs = custom_ca_;
      options.pem_key_cert_pairs.push_back({server_key_, server_cert_});
      credentials = grpc::SslServerCredentials(options);
    }
    grpc::ServerBuilder builder;
    builder.AddListeningPort(address_, credentials, &port_);
    builder.SetMaxReceiveMessageSize(max_message_bytes_);
    builder.SetMaxSendMessageSize(max_message_bytes_);
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.RegisterAsyncGenericService(&service_);
    queue_ = builder.AddCompletionQueue();
    server_ = builder.BuildAndStart();
    if (!server_ || port_ == 0) {
      server_.reset();
      throw std::runtime_error("cannot listen on " + address_);
    }
    // Several accepts outstanding, so concurrent calls are not accepted one after another.
    for (int i = 0; i < num_threads_; ++i) new Call(this);
    for (int i = 0; i < num_threads_; ++i) threads_.emplace_back([this] { Serve(); });
    return port_;
  }

  // Stops accepting, lets calls in flight finish for up to ``grace_seconds``, joins the threads.
  // Must be called without the GIL: the calls in flight need it to finish.
  void Shutdown(double grace_seconds) {
    if (!server_) return;
    stopping_ = true;
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<int64_t>(grace_seconds * 1e6));
    server_->Shutdown(deadline);  // deferred answers still go out until the deadline
    {
      std::lock_guard<std::mutex> lock(answer_mutex_);
      closed_ = true;
    }
    queue_->Shutdown();
    for (auto& thread : threads_) thread.join();
    threads_.clear();
    server_.reset();
    queue_.reset();
  }

  bool stopping() const { return stopping_; }
  // Held while an accept or an answer is handed to gRPC, and by Shutdown while it closes the
  // queue: nothing may start a gRPC operation once the queue is shut down.
  std::mutex& answer_mutex() { return answer_mutex_; }
  bool closed() const { return closed_; }
  grpc::AsyncGenericService* service() { return &service_; }
  grpc::ServerCompletionQueue* queue() { return queue_.get(); }
  const py::object& handler() const { return handler_; }

 private:
  // One Python thread state per serving thread, made once and kept: entering Python per call is
  // then a GIL acquire, not a thread state built and torn down (with its thread-locals) per call.
  void Serve() {
    PyGILState_STATE outer = PyGILState_Ensure();
    PyThreadState* state = PyEval_SaveThread();
    void* tag = nullptr;
    bool ok = false;
    while (queue_->Next(&tag, &ok)) static_cast<Call*>(tag)->Proceed(ok);
    PyEval_RestoreThread(state);
    PyGILState_Release(outer);
  }

  std::string address_;
  int max_message_bytes_;
  py::object handler_;
  int num_threads_;
  bool tls_;
  std::string server_key_, server_cert_, custom_ca_;
  bool client_verify_;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::mutex answer_mutex_;
  bool closed_ = false;
  grpc::AsyncGenericService service_;
  std::unique_ptr<grpc::ServerCompletionQueue> queue_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::thread> threads_;
};

Call::Call(Transport* transport) : transport_(transport) {
  transport_->service()->RequestCall(&context_, &stream_, transport_->queue(), transport_->queue(), this);
}

void Call::Proceed(bool ok) {
  switch (state_) {
    case State::kAccepting: {
      // Under the answer mutex, so no operation starts once Shutdown has closed the queue.
      std::lock_guard<std::mutex> lock(transport_->answer_mutex());
      if (!ok || transport_->closed()) {  // shutting down: this accept will never be used
        delete this;
        return;
      }
      if (!transport_->stopping()) new Call(transport_);
      state_ = State::kReading;
      stream_.Read(&request_, this);
      return;
    }
    case State::kReading:
      state_ = State::kAnswering;
      if (!ok) {  // the client closed its side without a request message
        Respond(static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT), "no request message", "");
        return;
      }
      Answer();
      return;
    case State::kAnswering:
      delete this;
      return;
  }
}

// The Python side's handle on a call it answers later. Answering twice is an error; a responder
// dropped without an answer answers INTERNAL, so a call is never left hanging.
class Responder {
 public:
  explicit Responder(Call* call) : call_(call) {}
  Responder(Responder&& other) noexcept : call_(other.call_.exchange(nullptr)) {}
  Responder(const Responder&) = delete;
  Responder& operator=(const Responder&) = delete;
  ~Responder() {
    if (Call* call = call_.exchange(nullptr)) call->Respond(kInternal, "the call was dropped unanswered", "");
  }

  bool armed() const { return call_.load() != nullptr; }

  // Called without the GIL (see the binding): the exchange makes a second answer, even a
  // concurrent one, an error instead of a second operation on the call.
  void Respond(int code, const std::string& details, const std::string& response) {
    Call* call = call_.exchange(nullptr);
    if (call == nullptr) throw std::runtime_error("this call was already answered");
    call->Respond(code, details, response);
  }

 private:
  std::atomic<Call*> call_;
};

void Call::Respond(int code, const std::string& details, const std::string& response) {
  std::lock_guard<std::mutex> lock(transport_->answer_mutex());
  // After shutdown the queue takes no more operations; gRPC already cancelled the call. The
  // object is left alone rather than deleted under gRPC's feet (only at shutdown, only for an
  // answer later than the grace period).
  if (transport_->closed()) return;
  if (code != 0) {  // (state_ is already kAnswering: set before the handler ran)
    stream_.Finish(grpc::Status(static_cast<grpc::StatusCode>(code), details), this);
    return;
  }
  grpc::Slice slice(response.data(), response.size());
  response_ = grpc::ByteBuffer(&slice, 1);
  stream_.WriteAndFinish(response_, grpc::WriteOptions(), grpc::Status::OK, this);
}

void Call::Answer() {
  std::vector<grpc::Slice> slices;
  std::string body;
  if (request_.Dump(&slices).ok()) {
    body.reserve(request_.Length());
    for (const auto& slice : slices) body.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  const std::string method = context_.method();
  py::gil_scoped_acquire gil;  // this thread's own state (Transport::Serve)
  py::object responder = py::cast(Responder(this));
  Responder& handle = responder.cast<Responder&>();
  // From here on `this` may be deleted as soon as an answer is handed to gRPC: only `handle`.
  try {
    py::object answer = transport_->handler()(py::str(method), py::bytes(body), responder);
    if (answer.is_none()) return;  // answered, or to be answered, through the responder
    py::tuple fields = answer.cast<py::tuple>();
    handle.Respond(fields[0].cast<int>(), fields[1].cast<std::string>(), fields[2].cast<std::string>());
  } catch (py::error_already_set& error) {  // the handler itself broke: report, keep serving
    if (handle.armed()) handle.Respond(kInternal, std::string("transport handler failed: ") + error.what(), "");
  } catch (std::exception& error) {
    if (handle.armed()) handle.Respond(kInternal, std::string("transport handler failed: ") + error.what(), "");
  }
}

}  // namespace

PYBIND11_MODULE(_grpc_transport, m) {
  m.doc() = "gRPC C++ transport for serving/: every call's (method, request bytes) to one Python handler";
  py::class_<Responder>(m, "Responder", "Answers one call later, from any thread; once.")
      .def("respond", &Responder::Respond, py::arg("code"), py::arg("details"), py::arg("response"),
           py::call_guard<py::gil_scoped_release>(),  // the arguments are copied first, with the GIL
           "code 0: send ``response`` (bytes); else the status ``code`` with ``details``.");
  py::class_<Transport>(m, "Transport")
      .def(py::init<std::string, int, py::object, int, bool, std::string, std::string, std::string, bool>(),
           py::arg("address"), py::arg("max_message_bytes"), py::arg("handler"), py::arg("threads"),
           py::arg("tls") = false, py::arg("server_key") = "", py::arg("server_cert") = "",
           py::arg("custom_ca") = "", py::arg("client_verify") = false,
           "handler(method: str, request: bytes, responder: Responder) -> (code: int, details: str, "
           "response: bytes), or None when it answers through the responder")
      .def("start", &Transport::Start, "Bind and serve; returns the port.")
      .def("shutdown", &Transport::Shutdown, py::arg("grace_seconds") = 1.0,
           py::call_guard<py::gil_scoped_release>(), "Stop accepting, finish calls in flight, join the threads.");
}
