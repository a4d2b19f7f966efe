// What the fuzz targets share: an invariant that fails aborts, so libFuzzer reports it.
#pragma once

#include <cstdlib>

namespace zipnn::fuzz {

inline void Check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace zipnn::fuzz
