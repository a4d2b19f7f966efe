// Memory for large, long-lived buffers, mapped on transparent huge pages where the kernel gives
// them.
//
// A fresh 4 KiB page's first write traps to the kernel, and under a hypervisor that shadows page
// tables (this machine's does) costs 2.5-3.2 us per KiB, measured here: a process that fills
// 10 MiB of new buffers spends ~30 ms on it. Mapped 2 MiB-aligned and advised MADV_HUGEPAGE, the
// same memory costs one trap per 2 MiB: 0.07-0.9 us per KiB here, and later accesses miss the
// TLB less. Where the kernel has no huge page to give (or THP is off), it is ordinary memory.
// Measured again on another day: 0.6-0.8 us per KiB for 4 KiB pages, but 1-2.8 us per KiB for
// huge pages a process touches first after a pause (freed pages handed back to the host): huge
// pages pay for buffers that live and are reused, not for short-lived ones.
#pragma once

#include <cstddef>
#include <cstdint>

namespace zipnn {

inline constexpr size_t kHugePageSize = 2u << 20;

// `bytes` rounded up to whole huge pages: what MapHugePages maps for them.
inline constexpr size_t HugePageRound(size_t bytes) {
  return (bytes + kHugePageSize - 1) & ~(kHugePageSize - 1);
}

// Maps `bytes`, rounded up to whole huge pages (2 MiB), on a 2 MiB boundary, advised to huge
// pages. Null when out of memory. Release with UnmapPages, with the same `bytes` or for any
// 2 MiB-aligned part of it, its size.
uint8_t* MapHugePages(size_t bytes);
void UnmapPages(uint8_t* p, size_t bytes);

// Maps in the pages wholly inside [p, p + bytes) before their first writes: one call instead of a
// trap per 4 KiB page, which under this machine's hypervisor costs 2.6-3.8 us per KiB against
// 0.6-0.8 prefaulted (measured). Pages already mapped stay as they are; without the kernel's
// MADV_POPULATE_WRITE (Linux < 5.14) it does nothing. For buffers about to be filled.
void PrefaultPages(void* p, size_t bytes);

// A byte buffer of MapHugePages memory, in whole huge pages (2 MiB), that only grows; contents
// are undefined after a growth.
class PageBuffer {
 public:
  PageBuffer() = default;
  ~PageBuffer() { UnmapPages(data_, capacity_); }
  PageBuffer(PageBuffer&& o) noexcept : data_(o.data_), capacity_(o.capacity_) {
    o.data_ = nullptr;
    o.capacity_ = 0;
  }
  PageBuffer& operator=(PageBuffer&& o) noexcept {
    if (this != &o) {
      UnmapPages(data_, capacity_);
      data_ = o.data_;
      capacity_ = o.capacity_;
      o.data_ = nullptr;
      o.capacity_ = 0;
    }
    return *this;
  }
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;

  // Makes room for at least `bytes`; false when out of memory (the buffer is then empty).
  bool Reserve(size_t bytes);
  uint8_t* data() const { return data_; }
  size_t capacity() const { return capacity_; }

 private:
  uint8_t* data_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace zipnn
