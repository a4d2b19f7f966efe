// BufferPool: memory for decoded chunks, mapped straight from the kernel and recycled.
//
// Chunks are large (256 KiB), many, and short-lived. From malloc they would either cost an
// mmap, page faults and munmap each (above the mmap threshold) or linger in per-thread heaps
// (below it), so RSS would drift from what the cache holds. Here a freed buffer goes back to a
// small free list (its pages stay mapped and warm) or is unmapped at once: memory in use is the
// live chunks plus at most `max_free_bytes`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
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

   private:
    friend class BufferPool;
    Buffer(std::shared_ptr<BufferPool> pool, uint8_t* data, size_t size, size_t mapped)
        : pool_(std::move(pool)), data_(data), size_(size), mapped_(mapped) {}
    std::shared_ptr<BufferPool> pool_;
    uint8_t* data_;
    size_t size_;
    size_t mapped_;  // bytes mapped: size rounded up to the pool's unit
  };

  static std::shared_ptr<BufferPool> Create(size_t unit, size_t max_free_bytes);
  ~BufferPool();

  // Null if the memory cannot be mapped.
  std::unique_ptr<Buffer> Get(size_t size);

 private:
  BufferPool(size_t unit, size_t max_free_bytes) : unit_(unit), max_free_(max_free_bytes) {}
  void Put(uint8_t* data, size_t mapped);

  const size_t unit_;      // buffers of up to this size are recycled
  const size_t max_free_;  // bytes kept on the free list, at most
  std::mutex mu_;
  std::vector<uint8_t*> free_;
};

}  // namespace zipnn::fs
