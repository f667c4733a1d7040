// oneDNN's 2-D convolutions as XLA FFI handlers: the conv impl "onednn" (fcnn/ops/onednn.py builds
// this file on first use and registers its handlers with jax.ffi).
//
// Layouts: x and dX NHWC, w and dW HWIO, z and dZ NHWC (fcnn's channels-last); groups 1. Each
// handler takes the forward's geometry as attributes: strides (sh, sw), pads (plh, phh, plw, phw)
// and dilations (dh, dw; fcnn's, 1 = dense: oneDNN counts the gaps, so it gets d - 1). float32 or
// bfloat16 x / w / dZ; z and dX in the input dtype, dW always float32 (bf16 products accumulate in
// f32). oneDNN picks its own weight layout ("any"); the HWIO kernel is reordered into it per call.
// Two handlers carry the layer's bias as well: the forward adds a (cout,) bias of the input dtype
// inside the convolution (one rounding of the f32 sum), and the kernel gradient also returns
// dB = sum of dZ over batch and space, in float32, from the same pass over dZ.
// Threads: every handler takes a ``threads`` attribute, the OpenMP team size its convolution runs
// with (0: OpenMP's default, all cores); fcnn/ops/onednn.py picks 1 for small convolutions, whose
// team start-up costs more than the second core gives back inside XLA's own schedule.
// Primitive descriptors and primitives are built once per geometry, dtype, team size and calling
// thread, and cached. Per thread, because oneDNN's thread-safety contract asks for it (its
// dnnl_scratchpad_mode_t documentation): with the library-managed scratchpad a primitive must run on
// the thread that created it (the default build) and must never run on two threads at once (the
// DNNL_ENABLE_CONCURRENT_EXEC build), while XLA runs these handlers on any of its worker threads,
// two layers of one geometry at the same time. Shared across threads, a cached backward primitive
// once waited forever in its own barrier (docs/perf_notes.md item 68).
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Geometry {
  memory::dims src, weights, dst, strides, dilates, pad_l, pad_r;
  memory::data_type dtype;
  int threads;  // the OpenMP team size (0: OpenMP's default)
  std::string Key(char kind) const {
    std::string k(1, kind);
    for (const memory::dims* v : {&src, &weights, &dst, &strides, &dilates, &pad_l, &pad_r})
      for (auto d : *v) k += "," + std::to_string(d);
    return k + "|" + std::to_string(static_cast<int>(dtype)) + "|t" + std::to_string(threads);
  }
};

// The calling thread's OpenMP team size while one handler runs (oneDNN sizes its work split by it
// when it builds a primitive, and runs with it), restored afterwards: XLA's worker threads are shared.
class TeamSize {
 public:
  explicit TeamSize(int threads) : saved_(omp_get_max_threads()) {
    if (threads > 0) omp_set_num_threads(threads);
  }
  ~TeamSize() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};

// x_like: NHWC (n, h, w, cin); w_like: HWIO (kh, kw, cin, cout); z_like: NHWC (n, oh, ow, cout)
Geometry MakeGeometry(const ffi::AnyBuffer& x_like, const ffi::AnyBuffer& w_like, const ffi::AnyBuffer& z_like,
                      ffi::DataType dtype, int64_t sh, int64_t sw, int64_t plh, int64_t phh, int64_t plw,
                      int64_t phw, int64_t dh, int64_t dw, int64_t threads) {
  auto x = x_like.dimensions();
  auto w = w_like.dimensions();
  auto z = z_like.dimensions();
  Geometry g;
  g.src = {x[0], x[3], x[1], x[2]};
  g.weights = {w[3], w[2], w[0], w[1]};
  g.dst = {z[0], z[3], z[1], z[2]};
  g.strides = {sh, sw};
  g.dilates = {dh - 1, dw - 1};
  g.pad_l = {plh, plw};
  g.pad_r = {phh, phw};
  g.dtype = dtype == ffi::DataType::BF16 ? memory::data_type::bf16 : memory::data_type::f32;
  g.threads = static_cast<int>(threads);
  return g;
}

memory::desc Plain(const memory::dims& dims, memory::data_type dtype, tag t) { return memory::desc(dims, dtype, t); }

memory::desc Bias(const Geometry& g, memory::data_type dtype) { return memory::desc({g.dst[1]}, dtype, tag::a); }

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g, bool bias = false) {
  auto src = Plain(g.src, g.dtype, tag::nhwc), weights = Plain(g.weights, g.dtype, tag::any);
  auto dst = Plain(g.dst, g.dtype, tag::nhwc);
  if (bias)
    return dnnl::convolution_forward::primitive_desc(Engine(), dnnl::prop_kind::forward_training,
                                                     dnnl::algorithm::convolution_direct, src, weights,
                                                     Bias(g, g.dtype), dst, g.strides, g.dilates, g.pad_l, g.pad_r);
  return dnnl::convolution_forward::primitive_desc(Engine(), dnnl::prop_kind::forward_training,
                                                   dnnl::algorithm::convolution_direct, src, weights, dst,
                                                   g.strides, g.dilates, g.pad_l, g.pad_r);
}

// A convolution whose kernel goes in (forward, backward data): the primitive and the reorder of the
// HWIO kernel into its layout; and the kernel gradient's, whose result comes out of its layout.
template <class PD, class Prim>
struct KernelIn {
  PD pd;
  Prim conv;
  dnnl::reorder weights_in;
};
using Forward = KernelIn<dnnl::convolution_forward::primitive_desc, dnnl::convolution_forward>;
using BackwardData = KernelIn<dnnl::convolution_backward_data::primitive_desc, dnnl::convolution_backward_data>;
struct BackwardWeights {
  dnnl::convolution_backward_weights::primitive_desc pd;
  dnnl::convolution_backward_weights conv;
  dnnl::reorder weights_out;
};

// The cache, keyed by the calling thread and the geometry's key (one primitive per thread: above).
std::mutex cache_mutex;
template <class T>
using CacheMap = std::map<std::pair<std::thread::id, std::string>, std::shared_ptr<T>>;
template <class T>
CacheMap<T>& Cache() {
  static CacheMap<T> cache;
  return cache;
}

template <class T, class Make>
std::shared_ptr<T> Cached(const std::string& key, Make make) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto& cache = Cache<T>();
  auto at = std::make_pair(std::this_thread::get_id(), key);
  auto it = cache.find(at);
  if (it != cache.end()) return it->second;
  auto entry = std::make_shared<T>(make());
  cache[at] = entry;
  return entry;
}

template <class F>
ffi::Error Guarded(F body) {
  try {
    body();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

// Runs a KernelIn convolution: ``in`` (NHWC, descriptor ``in_desc``) and the HWIO kernel ``w`` give
// ``out`` (plus a bias when ``bias`` is not null); ``make_pd`` builds its primitive descriptor the first
// time ``kind`` meets this geometry.
template <class Entry, class MakePD>
void RunKernelIn(const Geometry& g, char kind, MakePD make_pd, void* w, int in_arg, const memory::desc& in_desc,
                 void* in, int out_arg, const memory::desc& out_desc, void* out, void* bias = nullptr) {
  auto user_w = Plain(g.weights, g.dtype, tag::hwio);
  auto e = Cached<Entry>(g.Key(kind), [&] {
    auto pd = make_pd();
    return Entry{pd, decltype(Entry::conv)(pd),
                 dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), user_w, Engine(), pd.weights_desc()))};
  });
  dnnl::stream s(Engine());
  memory w_user(user_w, Engine(), w);
  memory w_conv(e->pd.weights_desc(), Engine());
  e->weights_in.execute(s, w_user, w_conv);
  std::unordered_map<int, memory> args{{in_arg, memory(in_desc, Engine(), in)},
                                       {DNNL_ARG_WEIGHTS, w_conv},
                                       {out_arg, memory(out_desc, Engine(), out)}};
  if (bias != nullptr) args.insert({DNNL_ARG_BIAS, memory(Bias(g, g.dtype), Engine(), bias)});
  e->conv.execute(s, args);
  s.wait();
}

// z = conv(x, w) (+ b): the forward, with a bias when ``b`` is given.
ffi::Error RunForward(ffi::AnyBuffer x, ffi::AnyBuffer w, const ffi::AnyBuffer* b, ffi::Result<ffi::AnyBuffer> z,
                      int64_t sh, int64_t sw, int64_t plh, int64_t phh, int64_t plw, int64_t phw, int64_t dh,
                      int64_t dw, int64_t threads) {
  return Guarded([&] {
    Geometry g = MakeGeometry(x, w, *z, x.element_type(), sh, sw, plh, phh, plw, phw, dh, dw, threads);
    TeamSize team(g.threads);
    bool bias = b != nullptr;
    RunKernelIn<Forward>(g, bias ? 'F' : 'f', [&] { return ForwardDesc(g, bias); }, w.untyped_data(),
                         DNNL_ARG_SRC, Plain(g.src, g.dtype, tag::nhwc), x.untyped_data(),
                         DNNL_ARG_DST, Plain(g.dst, g.dtype, tag::nhwc), z->untyped_data(),
                         bias ? b->untyped_data() : nullptr);
  });
}

ffi::Error ForwardImpl(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> z, int64_t sh, int64_t sw,
                       int64_t plh, int64_t phh, int64_t plw, int64_t phw, int64_t dh, int64_t dw,
                       int64_t threads) {
  return RunForward(x, w, nullptr, z, sh, sw, plh, phh, plw, phw, dh, dw, threads);
}

ffi::Error ForwardBiasImpl(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> z,
                           int64_t sh, int64_t sw, int64_t plh, int64_t phh, int64_t plw, int64_t phw, int64_t dh,
                           int64_t dw, int64_t threads) {
  return RunForward(x, w, &b, z, sh, sw, plh, phh, plw, phw, dh, dw, threads);
}

ffi::Error BackwardDataImpl(ffi::AnyBuffer dz, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx, int64_t sh,
                            int64_t sw, int64_t plh, int64_t phh, int64_t plw, int64_t phw, int64_t dh, int64_t dw,
                            int64_t threads) {
  return Guarded([&] {
    Geometry g = MakeGeometry(*dx, w, dz, dz.element_type(), sh, sw, plh, phh, plw, phw, dh, dw, threads);
    TeamSize team(g.threads);
    auto make_pd = [&] {
      return dnnl::convolution_backward_data::primitive_desc(
          Engine(), dnnl::algorithm::convolution_direct, Plain(g.src, g.dtype, tag::nhwc),
          Plain(g.weights, g.dtype, tag::any), Plain(g.dst, g.dtype, tag::nhwc), g.strides, g.dilates, g.pad_l,
          g.pad_r, ForwardDesc(g));
    };
    RunKernelIn<BackwardData>(g, 'd', make_pd, w.untyped_data(),
                              DNNL_ARG_DIFF_DST, Plain(g.dst, g.dtype, tag::nhwc), dz.untyped_data(),
                              DNNL_ARG_DIFF_SRC, Plain(g.src, g.dtype, tag::nhwc), dx->untyped_data());
  });
}

// dW = x * dZ (HWIO, float32), and dB = sum(dZ) (float32) when ``db_out`` is given.
ffi::Error RunBackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dz, ffi::Result<ffi::AnyBuffer> dw_out,
                              ffi::Result<ffi::AnyBuffer>* db_out, int64_t sh, int64_t sw, int64_t plh, int64_t phh,
                              int64_t plw, int64_t phw, int64_t dh, int64_t dw, int64_t threads) {
  return Guarded([&] {
    Geometry g = MakeGeometry(x, *dw_out, dz, x.element_type(), sh, sw, plh, phh, plw, phw, dh, dw, threads);
    TeamSize team(g.threads);
    bool bias = db_out != nullptr;
    auto user_dw = Plain(g.weights, memory::data_type::f32, tag::hwio);
    auto e = Cached<BackwardWeights>(g.Key(bias ? 'W' : 'w'), [&] {
      auto src = Plain(g.src, g.dtype, tag::nhwc), diff_dst = Plain(g.dst, g.dtype, tag::nhwc);
      auto diff_weights = Plain(g.weights, memory::data_type::f32, tag::any);
      auto pd = bias ? dnnl::convolution_backward_weights::primitive_desc(
                           Engine(), dnnl::algorithm::convolution_direct, src, diff_weights,
                           Bias(g, memory::data_type::f32), diff_dst, g.strides, g.dilates, g.pad_l, g.pad_r,
                           ForwardDesc(g, true))
                     : dnnl::convolution_backward_weights::primitive_desc(
                           Engine(), dnnl::algorithm::convolution_direct, src, diff_weights, diff_dst, g.strides,
                           g.dilates, g.pad_l, g.pad_r, ForwardDesc(g));
      return BackwardWeights{pd, dnnl::convolution_backward_weights(pd),
                             dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), pd.diff_weights_desc(), Engine(),
                                                                         user_dw))};
    });
    dnnl::stream s(Engine());
    memory dw_conv(e->pd.diff_weights_desc(), Engine());
    memory src(e->pd.src_desc(), Engine(), x.untyped_data());
    memory diff_dst(e->pd.diff_dst_desc(), Engine(), dz.untyped_data());
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                                         {DNNL_ARG_DIFF_WEIGHTS, dw_conv}};
    if (bias)
      args.insert({DNNL_ARG_DIFF_BIAS, memory(Bias(g, memory::data_type::f32), Engine(), (*db_out)->untyped_data())});
    e->conv.execute(s, args);
    memory dw_user(user_dw, Engine(), dw_out->untyped_data());
    e->weights_out.execute(s, dw_conv, dw_user);
    s.wait();
  });
}

ffi::Error BackwardWeightsImpl(ffi::AnyBuffer x, ffi::AnyBuffer dz, ffi::Result<ffi::AnyBuffer> dw_out, int64_t sh,
                               int64_t sw, int64_t plh, int64_t phh, int64_t plw, int64_t phw, int64_t dh,
                               int64_t dw, int64_t threads) {
  return RunBackwardWeights(x, dz, dw_out, nullptr, sh, sw, plh, phh, plw, phw, dh, dw, threads);
}

ffi::Error BackwardWeightsBiasImpl(ffi::AnyBuffer x, ffi::AnyBuffer dz, ffi::Result<ffi::AnyBuffer> dw_out,
                                   ffi::Result<ffi::AnyBuffer> db_out, int64_t sh, int64_t sw, int64_t plh,
                                   int64_t phh, int64_t plw, int64_t phw, int64_t dh, int64_t dw,
                                   int64_t threads) {
  return RunBackwardWeights(x, dz, dw_out, &db_out, sh, sw, plh, phh, plw, phw, dh, dw, threads);
}

}  // namespace

#define FCNN_CONV_ATTRS                                                                                     \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("plh").Attr<int64_t>("phh")                        \
  .Attr<int64_t>("plw").Attr<int64_t>("phw").Attr<int64_t>("dh").Attr<int64_t>("dw")        \
  .Attr<int64_t>("threads")
#define FCNN_CONV_BINDING \
  ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>() FCNN_CONV_ATTRS

XLA_FFI_DEFINE_HANDLER_SYMBOL(FcnnOnednnConvForward, ForwardImpl, FCNN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(FcnnOnednnConvBackwardData, BackwardDataImpl, FCNN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(FcnnOnednnConvBackwardWeights, BackwardWeightsImpl, FCNN_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(FcnnOnednnConvForwardBias, ForwardBiasImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() FCNN_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(FcnnOnednnConvBackwardWeightsBias, BackwardWeightsBiasImpl,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() FCNN_CONV_ATTRS);

// The oneDNN kernels chosen so far, one line per cached primitive ("<key> -> <impl>"; a key once per
// thread that ran it), for tests and notes.
namespace {
template <class T>
void AppendKernels(std::string& text) {
  for (auto& kv : Cache<T>()) text += kv.first.second + " -> " + kv.second->pd.impl_info_str() + "\n";
}
}  // namespace

extern "C" const char* fcnn_onednn_kernels() {
  static std::string text;
  std::lock_guard<std::mutex> lock(cache_mutex);
  text.clear();
  AppendKernels<Forward>(text);
  AppendKernels<BackwardData>(text);
  AppendKernels<BackwardWeights>(text);
  return text.c_str();
}
