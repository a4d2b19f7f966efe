#include "fs/buffer_pool.h"

#include <sys/mman.h>

namespace zipnn::fs {

std::shared_ptr<BufferPool> BufferPool::Create(size_t unit, size_t max_free_bytes) {
  return std::shared_ptr<BufferPool>(new BufferPool(unit, max_free_bytes));
}

BufferPool::~BufferPool() {
  for (uint8_t* p : free_) ::munmap(p, unit_);
}

std::unique_ptr<BufferPool::Buffer> BufferPool::Get(size_t size) {
  const size_t mapped = size <= unit_ ? unit_ : size;
  uint8_t* data = nullptr;
  if (mapped == unit_) {
    std::lock_guard lock(mu_);
    if (!free_.empty()) {
      data = free_.back();
      free_.pop_back();
    }
  }
  if (data == nullptr) {
    void* p = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    data = static_cast<uint8_t*>(p);
  }
  return std::unique_ptr<Buffer>(new Buffer(shared_from_this(), data, size, mapped));
}

void BufferPool::Put(uint8_t* data, size_t mapped) {
  if (mapped == unit_) {
    std::lock_guard lock(mu_);
    if ((free_.size() + 1) * unit_ <= max_free_) {
      free_.push_back(data);
      return;
    }
  }
  ::munmap(data, mapped);
}

BufferPool::Buffer::~Buffer() { pool_->Put(data_, mapped_); }

}  // namespace zipnn::fs
