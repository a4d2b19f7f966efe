#include "codec/page_buffer.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

namespace zipnn {
uint8_t* MapHugePages(size_t bytes) {
  if (bytes == 0) return nullptr;
  bytes = HugePageRound(bytes);
  // Over-map by a huge page and trim both ends to the aligned part.
  const size_t span = bytes + kHugePageSize;
  void* m = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  const auto base = reinterpret_cast<uintptr_t>(m);
  const uintptr_t start = (base + kHugePageSize - 1) & ~(kHugePageSize - 1);
  if (start > base) ::munmap(m, start - base);
  if (base + span > start + bytes) {
    ::munmap(reinterpret_cast<void*>(start + bytes), base + span - start - bytes);
  }
  auto* p = reinterpret_cast<uint8_t*>(start);
  (void)::madvise(p, bytes, MADV_HUGEPAGE);  // a hint: without it, 4 KiB pages
  return p;
}

void PrefaultPages(void* p, size_t bytes) {
#ifdef MADV_POPULATE_WRITE
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(page - 1);
  if (end > begin)
    (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
#else
  (void)p;
  (void)bytes;
#endif
}

void UnmapPages(uint8_t* p, size_t bytes) {
  if (p != nullptr) ::munmap(p, HugePageRound(bytes));
}

bool PageBuffer::Reserve(size_t bytes) {
  if (bytes <= capacity_) return true;
  UnmapPages(data_, capacity_);
  capacity_ = HugePageRound(bytes);
  data_ = MapHugePages(capacity_);
  if (data_ == nullptr) capacity_ = 0;
  return data_ != nullptr;
}

}  // namespace zipnn
