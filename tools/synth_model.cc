#include "tools/synth_model.h"

#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "codec/container.h"
#include "tools/file_io.h"

namespace zipnn::tool {
namespace {

uint16_t ToBF16(float f) {  // round to nearest even, as torch's .to(torch.bfloat16)
  uint32_t u = std::bit_cast<uint32_t>(f);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

struct Tensor {
  std::string name;
  uint64_t rows = 0, cols = 0;  // cols == 0: a vector of `rows` elements
  enum Kind { kWeight, kNorm, kZero } kind = kWeight;
};

}  // namespace

Status WriteSyntheticSafetensors(const std::string& path, const SynthModelOptions& opts) {
  if (opts.dtype != DType::kBF16 && opts.dtype != DType::kF32) {
    return Status::InvalidArgument("synthetic models are BF16 or F32");
  }
  if (opts.layers < 1 || opts.dim < 8) return Status::InvalidArgument("model too small");
  const size_t elem = DTypeSize(opts.dtype);
  const uint64_t d = static_cast<uint64_t>(opts.dim);

  std::vector<Tensor> tensors;
  for (int l = 0; l < opts.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    tensors.push_back({p + "input_layernorm.weight", d, 0, Tensor::kNorm});
    tensors.push_back({p + "self_attn.o_proj.weight", d, d, Tensor::kWeight});
    tensors.push_back({p + "self_attn.o_proj.bias", d, 0, Tensor::kZero});
    tensors.push_back({p + "mlp.up_proj.weight", 2 * d, d, Tensor::kWeight});
  }

  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}, {"source", "zipnn synthetic model"}};
  uint64_t offset = 0;
  for (const Tensor& t : tensors) {
    const uint64_t bytes = t.rows * (t.cols ? t.cols : 1) * elem;
    nlohmann::ordered_json shape =
        t.cols ? nlohmann::ordered_json{t.rows, t.cols} : nlohmann::ordered_json{t.rows};
    header[t.name] = {{"dtype", std::string(DTypeName(opts.dtype))},
                      {"shape", shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json = header.dump();
  json.resize((json.size() + 7) / 8 * 8, ' ');  // pad so tensor data is 8-byte aligned

  // An output that may not be replaced is refused before the work of building the model.
  Result<AtomicOutputFile> f = AtomicOutputFile::Create(path, opts.overwrite, 0644);
  if (!f.ok()) return f.status();
  // The model is built in memory: refuse what RAM cannot hold, rather than count on the
  // allocation failing (with overcommit it may not, and the zero-fill then meets the OOM killer).
  const uint64_t total = 8 + json.size() + offset;
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0 && total > static_cast<uint64_t>(pages) * static_cast<uint64_t>(page))
    return Status::InvalidArgument(path + ": model too large for memory (" +
                                   std::to_string(total >> 20) + " MiB)");
  std::vector<uint8_t> file(total);
  const uint64_t json_size = json.size();
  std::memcpy(file.data(), &json_size, 8);
  std::memcpy(file.data() + 8, json.data(), json.size());
  uint8_t* out = file.data() + 8 + json.size();

  std::mt19937_64 rng(opts.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto put = [&](float v) {
    if (opts.dtype == DType::kBF16) {
      uint16_t h = ToBF16(v);
      std::memcpy(out, &h, 2);
    } else {
      std::memcpy(out, &v, 4);
    }
    out += elem;
  };
  for (const Tensor& t : tensors) {
    if (t.kind == Tensor::kZero) {
      out += t.rows * elem;  // the buffer is zero already
    } else if (t.kind == Tensor::kNorm) {
      for (uint64_t i = 0; i < t.rows; ++i) put(1.0f + 0.05f * normal(rng));
    } else {
      // Typical init scale 1/sqrt(fan_in), varied per row by a log-normal factor.
      const float base = 1.0f / std::sqrt(static_cast<float>(t.cols));
      for (uint64_t r = 0; r < t.rows; ++r) {
        const float scale = base * std::exp(0.3f * normal(rng));
        for (uint64_t c = 0; c < t.cols; ++c) put(scale * normal(rng));
      }
    }
  }

  ZIPNN_RETURN_IF_ERROR(WithPath(path, WriteFull(f->fd(), file)));
  return f->Commit();
}

}  // namespace zipnn::tool
