// Synthetic model weights, for benchmarks and tests when no real weights are at hand.
#pragma once

#include <cstdint>
#include <string>

#include "codec/codec.h"
#include "codec/status.h"

namespace zipnn::tool {

struct SynthModelOptions {
  DType dtype = DType::kBF16;  // kBF16 or kF32
  int layers = 4;
  int dim = 1024;  // hidden size: each layer holds dim x dim and 2*dim x dim matrices
  uint64_t seed = 1;
  bool overwrite = true;  // replace an existing file (devices, pipes and /dev/stdout: written to)
};

// Writes a valid .safetensors file shaped like a transformer checkpoint: per layer, Gaussian
// weight matrices whose rows have their own scales (as trained weights do), a norm vector near 1
// and an all-zero bias, behind a JSON header with __metadata__.
Status WriteSyntheticSafetensors(const std::string& path, const SynthModelOptions& opts);

}  // namespace zipnn::tool
