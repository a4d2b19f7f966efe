// BufferPool: memory for decoded chunks, mapped straight from the kernel and recycled.
//
// Chunks are large (256 KiB), many, and short-lived. From malloc they would either cost an
// mmap, page faults and munmap each (above the mmap threshold) or linger in per-thread heaps
// (below it), so RSS would drift from what the cache holds. Here a freed buffer goes back to a
// small free list (its pages stay mapped and warm) or is unmapped at once: memory in use is the
// live chunks plus at most `max_free_bytes`. A buffer of up to an eighth of a unit (a small file,
// a tiny tensor's chunk) comes from the heap, far below malloc's mmap threshold, so freed memory
// is reused without mapping: a unit each made a read across 20k chunks of ~40 bytes hold 5 GB. A
// larger one takes a whole unit, and tells so (footprint), which is what the cache charges for
// it: mapped to its own size instead, it would cost a map, faults and an unmap each time (~3 us
// per KiB in this VM, 10 times the decode of a 64 KiB chunk).
//
// Until the cache is full, every decoded chunk needs fresh memory, which the kernel must map and
// clear, and which in a VM may trap again on its first access from user space: 70 to 350 us per
// 256 KiB (measured here), up to half of a random read. A thread of low priority keeps
// `reserve_bytes` of the free list mapped and touched ahead, so a read finds its buffer ready,
// and maps it 2 MiB at a time on transparent huge pages where it can: one trap per 2 MiB.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace zipnn::fs {

class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  // A buffer of `size` bytes (contents undefined), returned to its pool when destroyed.
  class Buffer {
   public:
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer();
    uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    // Bytes of memory it holds: whole pages, or its size (and the heap's header) from the heap.
    size_t footprint() const { return mapped_ != 0 ? mapped_ : size_ + 16; }

   private:
    friend class BufferPool;
    Buffer(std::shared_ptr<BufferPool> pool, uint8_t* data, size_t size, size_t mapped)
        : pool_(std::move(pool)), data_(data), size_(size), mapped_(mapped) {}
    std::shared_ptr<BufferPool> pool_;
    uint8_t* data_;
    size_t size_;
    size_t mapped_;  // bytes mapped: a unit, or the size of an oversized buffer; 0: heap
  };

  // reserve_bytes (at most max_free_bytes) are mapped ahead by a thread; 0: no thread.
  static std::shared_ptr<BufferPool> Create(size_t unit, size_t max_free_bytes,
                                            size_t reserve_bytes = 0);
  ~BufferPool();  // stops the thread

  // Null if the memory cannot be mapped.
  std::unique_ptr<Buffer> Get(size_t size);
  // Maps buffers until the free list holds the reserve, on the calling thread (false: no memory).
  bool FillReserve();
  size_t free_buffers();

 private:
  BufferPool(size_t unit, size_t max_free_bytes, size_t reserve_bytes)
      : unit_(PageRound(unit)),  // units are mapped and unmapped on their own
        max_free_(max_free_bytes),
        reserve_(std::min((reserve_bytes + unit_ - 1) / unit_, max_free_bytes / unit_)) {}
  static size_t PageRound(size_t bytes);
  void Put(uint8_t* data, size_t mapped);
  bool Short() const { return free_.size() < reserve_; }  // with mu_ held
  void RefillLoop();

  const size_t unit_;      // buffers of up to this size are recycled
  const size_t max_free_;  // bytes kept on the free list, at most
  const size_t reserve_;   // buffers the thread keeps on the free list, when it can
  std::mutex mu_;
  std::condition_variable refill_cv_;
  bool stop_ = false;
  std::vector<uint8_t*> free_;
  std::thread refiller_;
};

}  // namespace zipnn::fs
