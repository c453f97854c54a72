// TensorFlow registration of FeedbackWeightedAttention and its fused gradient (docs/design.md §7).
//
// The kernels validate everything the core relies on (ranks, matching dimensions, lengths in
// [0, L]) and answer InvalidArgument naming the input, so no input can make the core read out of
// bounds. Work is split over the flattened (batch, head) units on TF's intra-op thread pool with
// its cost-model ParallelFor, which cuts more blocks than threads: the cost of a unit varies with
// lengths[b], and on a shared machine a descheduled thread must not hold back the whole op.
// The gradient function that wires the two ops together is registered in Python
// (tfrec_kuai/ops.py), next to the tf.load_op_library call.
#include <cmath>
#include <string>

#include "fwa_kernel.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/threadpool.h"

#ifndef TFREC_KUAI_TF_VERSION
#error "TFREC_KUAI_TF_VERSION must be defined by the build (the TensorFlow version compiled against)"
#endif

// Read from the file by tfrec_kuai/ops.py before loading, to refuse a library built for another
// TensorFlow with a clear message instead of an obscure symbol or ABI error.
extern "C" __attribute__((used, visibility("default"))) const char tfrec_kuai_fwa_tf_version[] =
    "tfrec_kuai_built_against_tf=" TFREC_KUAI_TF_VERSION;

namespace tfrec_kuai {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;

// Shape function shared by both ops: checks ranks, unifies B, L, H, D, Dv across the inputs (the
// first `first_input` inputs are skipped: the gradient op's incoming gradient) and returns them.
Status InferDims(InferenceContext* c, int first_input, DimensionHandle* B, DimensionHandle* L, DimensionHandle* H,
                 DimensionHandle* D, DimensionHandle* Dv, ShapeHandle shapes[6]) {
  const int ranks[6] = {3, 4, 4, 3, 3, 1};
  const char* names[6] = {"query", "keys", "values", "bias", "gate", "lengths"};
  for (int i = 0; i < 6; ++i) {
    Status s = c->WithRank(c->input(first_input + i), ranks[i], &shapes[i]);
    if (!s.ok()) return errors::InvalidArgument(names[i], " must have rank ", ranks[i], ": ", s.message());
  }
  const ShapeHandle &q = shapes[0], &k = shapes[1], &v = shapes[2], &bias = shapes[3], &gate = shapes[4],
                    &len = shapes[5];
  auto merge = [c](DimensionHandle a, DimensionHandle b, DimensionHandle* out, const char* what) -> Status {
    Status s = c->Merge(a, b, out);
    if (!s.ok()) return errors::InvalidArgument(what, ": ", s.message());
    return Status();
  };
  *B = c->Dim(q, 0);
  TF_RETURN_IF_ERROR(merge(*B, c->Dim(k, 0), B, "keys dim 0 (B) must match query dim 0"));
  TF_RETURN_IF_ERROR(merge(*B, c->Dim(v, 0), B, "values dim 0 (B) must match query dim 0"));
  TF_RETURN_IF_ERROR(merge(*B, c->Dim(bias, 0), B, "bias dim 0 (B) must match query dim 0"));
  TF_RETURN_IF_ERROR(merge(*B, c->Dim(gate, 0), B, "gate dim 0 (B) must match query dim 0"));
  TF_RETURN_IF_ERROR(merge(*B, c->Dim(len, 0), B, "lengths dim 0 (B) must match query dim 0"));
  *L = c->Dim(k, 1);
  TF_RETURN_IF_ERROR(merge(*L, c->Dim(v, 1), L, "values dim 1 (L) must match keys dim 1"));
  TF_RETURN_IF_ERROR(merge(*L, c->Dim(bias, 1), L, "bias dim 1 (L) must match keys dim 1"));
  TF_RETURN_IF_ERROR(merge(*L, c->Dim(gate, 1), L, "gate dim 1 (L) must match keys dim 1"));
  *H = c->Dim(q, 1);
  TF_RETURN_IF_ERROR(merge(*H, c->Dim(k, 2), H, "keys dim 2 (H) must match query dim 1"));
  TF_RETURN_IF_ERROR(merge(*H, c->Dim(v, 2), H, "values dim 2 (H) must match query dim 1"));
  TF_RETURN_IF_ERROR(merge(*H, c->Dim(bias, 2), H, "bias dim 2 (H) must match query dim 1"));
  TF_RETURN_IF_ERROR(merge(*H, c->Dim(gate, 2), H, "gate dim 2 (H) must match query dim 1"));
  *D = c->Dim(q, 2);
  TF_RETURN_IF_ERROR(merge(*D, c->Dim(k, 3), D, "keys dim 3 (D) must match query dim 2"));
  *Dv = c->Dim(v, 3);
  return Status();
}

}  // namespace
}  // namespace tfrec_kuai

REGISTER_OP("FeedbackWeightedAttention")
    .Input("query: float")
    .Input("keys: float")
    .Input("values: float")
    .Input("bias: float")
    .Input("gate: float")
    .Input("lengths: int32")
    .Output("output: float")
    .Attr("scale: float = -1.0")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      using namespace ::tensorflow::shape_inference;
      DimensionHandle B, L, H, D, Dv;
      ShapeHandle shapes[6];
      TF_RETURN_IF_ERROR(tfrec_kuai::InferDims(c, 0, &B, &L, &H, &D, &Dv, shapes));
      c->set_output(0, c->MakeShape({B, H, Dv}));
      return ::tensorflow::Status();
    })
    .Doc(R"doc(
Feedback-weighted target attention over a padded history (tfrec-kuai docs/design.md section 7).

For every b, h over l < lengths[b] only: p = softmax(scale * <query[b,h], keys[b,l,h]> +
bias[b,l,h]) and output[b,h] = sum_l p_l * gate[b,l,h] * values[b,l,h]; lengths[b] = 0 gives zeros.

query: [B, H, D]
keys: [B, L, H, D]
values: [B, L, H, Dv]
bias: [B, L, H], added to the logits.
gate: [B, L, H], multiplies each value (may be negative).
lengths: [B], each in [0, L].
output: [B, H, Dv]
scale: logit scale; a negative value (the default) means 1/sqrt(D).
)doc");

REGISTER_OP("FeedbackWeightedAttentionGrad")
    .Input("grad: float")
    .Input("query: float")
    .Input("keys: float")
    .Input("values: float")
    .Input("bias: float")
    .Input("gate: float")
    .Input("lengths: int32")
    .Output("dquery: float")
    .Output("dkeys: float")
    .Output("dvalues: float")
    .Output("dbias: float")
    .Output("dgate: float")
    .Attr("scale: float = -1.0")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      using namespace ::tensorflow::shape_inference;
      DimensionHandle B, L, H, D, Dv;
      ShapeHandle shapes[6];
      TF_RETURN_IF_ERROR(tfrec_kuai::InferDims(c, 1, &B, &L, &H, &D, &Dv, shapes));
      ShapeHandle grad;
      TF_RETURN_IF_ERROR(c->Merge(c->input(0), c->MakeShape({B, H, Dv}), &grad));
      for (int i = 0; i < 5; ++i) c->set_output(i, shapes[i]);
      return ::tensorflow::Status();
    })
    .Doc(R"doc(
Fused gradient of FeedbackWeightedAttention with respect to query, keys, values, bias and gate,
given grad = d(loss)/d(output) [B, H, Dv]. Padding positions (l >= lengths[b]) get zeros.
)doc");

namespace tfrec_kuai {
namespace {

// Checks every input of both kernels at run time (the shape functions may have seen only
// partial shapes) and fills `in` with the dimensions and pointers. `offset` skips the gradient
// op's incoming gradient.
Status ValidateAndGather(OpKernelContext* ctx, int offset, float scale_attr, FwaInputs* in) {
  const char* names[6] = {"query", "keys", "values", "bias", "gate", "lengths"};
  const int ranks[6] = {3, 4, 4, 3, 3, 1};
  const Tensor* t[6];
  for (int i = 0; i < 6; ++i) {
    t[i] = &ctx->input(offset + i);
    if (t[i]->dims() != ranks[i]) {
      return errors::InvalidArgument(names[i], " must have rank ", ranks[i], ", got shape ",
                                     t[i]->shape().DebugString());
    }
  }
  FwaShape s;
  s.batch = t[0]->dim_size(0);
  s.heads = t[0]->dim_size(1);
  s.depth = t[0]->dim_size(2);
  s.length = t[1]->dim_size(1);
  s.value_depth = t[2]->dim_size(3);
  const TensorShape expected[6] = {
      TensorShape({s.batch, s.heads, s.depth}),
      TensorShape({s.batch, s.length, s.heads, s.depth}),
      TensorShape({s.batch, s.length, s.heads, s.value_depth}),
      TensorShape({s.batch, s.length, s.heads}),
      TensorShape({s.batch, s.length, s.heads}),
      TensorShape({s.batch}),
  };
  for (int i = 1; i < 6; ++i) {
    if (t[i]->shape() != expected[i]) {
      return errors::InvalidArgument(names[i], " has shape ", t[i]->shape().DebugString(), " but ",
                                     expected[i].DebugString(), " is required by query ",
                                     t[0]->shape().DebugString(), " and keys ", t[1]->shape().DebugString(),
                                     " ([B,H,D], [B,L,H,D], values [B,L,H,Dv], bias/gate [B,L,H], lengths [B])");
    }
  }
  const int32_t* lengths = t[5]->flat<int32_t>().data();
  const std::string bad = FwaCheckLengths(lengths, s.batch, s.length);
  if (!bad.empty()) return errors::InvalidArgument(bad);
  in->shape = s;
  in->query = t[0]->flat<float>().data();
  in->keys = t[1]->flat<float>().data();
  in->values = t[2]->flat<float>().data();
  in->bias = t[3]->flat<float>().data();
  in->gate = t[4]->flat<float>().data();
  in->lengths = lengths;
  in->scale = scale_attr >= 0.0f ? scale_attr : (s.depth > 0 ? 1.0f / std::sqrt(static_cast<float>(s.depth)) : 1.0f);
  return Status();
}

class FeedbackWeightedAttentionOp : public OpKernel {
 public:
  explicit FeedbackWeightedAttentionOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &scale_));
  }

  void Compute(OpKernelContext* ctx) override {
    FwaInputs in;
    OP_REQUIRES_OK(ctx, ValidateAndGather(ctx, 0, scale_, &in));
    const FwaShape& s = in.shape;
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({s.batch, s.heads, s.value_depth}), &out));
    float* o = out->flat<float>().data();
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    workers->workers->ParallelFor(s.batch * s.heads, FwaForwardCostPerUnit(s),
                                  [&in, o](int64_t begin, int64_t end) { FwaForward(in, o, begin, end); });
  }

 private:
  float scale_;
};

class FeedbackWeightedAttentionGradOp : public OpKernel {
 public:
  explicit FeedbackWeightedAttentionGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &scale_));
  }

  void Compute(OpKernelContext* ctx) override {
    FwaInputs in;
    OP_REQUIRES_OK(ctx, ValidateAndGather(ctx, 1, scale_, &in));
    const FwaShape& s = in.shape;
    const Tensor& grad = ctx->input(0);
    const TensorShape out_shape({s.batch, s.heads, s.value_depth});
    OP_REQUIRES(ctx, grad.shape() == out_shape,
                errors::InvalidArgument("grad has shape ", grad.shape().DebugString(), " but the output shape ",
                                        out_shape.DebugString(), " [B,H,Dv] is required"));
    FwaGradients g;
    float** slots[5] = {&g.query, &g.keys, &g.values, &g.bias, &g.gate};
    for (int i = 0; i < 5; ++i) {
      Tensor* t = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(i, ctx->input(1 + i).shape(), &t));
      *slots[i] = t->flat<float>().data();
    }
    const float* go = grad.flat<float>().data();
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    workers->workers->ParallelFor(s.batch * s.heads, FwaBackwardCostPerUnit(s),
                                  [&in, go, &g](int64_t begin, int64_t end) { FwaBackward(in, go, g, begin, end); });
  }

 private:
  float scale_;
};

REGISTER_KERNEL_BUILDER(Name("FeedbackWeightedAttention").Device(::tensorflow::DEVICE_CPU),
                        FeedbackWeightedAttentionOp);
REGISTER_KERNEL_BUILDER(Name("FeedbackWeightedAttentionGrad").Device(::tensorflow::DEVICE_CPU),
                        FeedbackWeightedAttentionGradOp);

}  // namespace
}  // namespace tfrec_kuai
