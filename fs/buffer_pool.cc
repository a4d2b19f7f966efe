#include "fs/buffer_pool.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <new>
#include <system_error>

#include "codec/page_buffer.h"

namespace zipnn::fs {

namespace {

uint8_t* MapBuffer(size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
}

size_t PageSize() {
  static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

}  // namespace

size_t BufferPool::PageRound(size_t bytes) {
  return (bytes + PageSize() - 1) / PageSize() * PageSize();
}

std::shared_ptr<BufferPool> BufferPool::Create(size_t unit, size_t max_free_bytes,
                                               size_t reserve_bytes) {
  std::shared_ptr<BufferPool> pool(new BufferPool(unit, max_free_bytes, reserve_bytes));
  if (pool->reserve_ > 0) {
    try {
      pool->refiller_ = std::thread([p = pool.get()] { p->RefillLoop(); });
    } catch (const std::system_error&) {  // no thread: buffers are mapped when needed
    }
  }
  return pool;
}

BufferPool::~BufferPool() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  refill_cv_.notify_one();
  if (refiller_.joinable()) refiller_.join();
  for (uint8_t* p : free_) ::munmap(p, unit_);
}

std::unique_ptr<BufferPool::Buffer> BufferPool::Get(size_t size) {
  if (size <= unit_ / 8) {
    auto* data = new (std::nothrow) uint8_t[std::max<size_t>(size, 1)];
    if (data == nullptr) return nullptr;
    auto* b = new (std::nothrow) Buffer(shared_from_this(), data, size, 0);
    if (b == nullptr) delete[] data;
    return std::unique_ptr<Buffer>(b);
  }
  const size_t mapped = size <= unit_ ? unit_ : size;
  uint8_t* data = nullptr;
  if (mapped == unit_) {
    std::lock_guard lock(mu_);
    if (!free_.empty()) {
      data = free_.back();
      free_.pop_back();
    }
    if (Short()) refill_cv_.notify_one();
  }
  if (data == nullptr && (data = MapBuffer(mapped)) == nullptr) return nullptr;
  auto* b = new (std::nothrow) Buffer(shared_from_this(), data, size, mapped);
  if (b == nullptr) Put(data, mapped);
  return std::unique_ptr<Buffer>(b);
}

bool BufferPool::FillReserve() {
  // Units come on huge pages, a huge page's worth or more at a time, and are touched here:
  // readers find them warm (see codec/page_buffer.h). They are unmapped one by one all the same.
  const size_t mapped = HugePageRound(unit_);
  const size_t batch = mapped / unit_;
  const size_t page = PageSize();
  std::unique_lock lock(mu_);
  while (Short() && !stop_) {
    lock.unlock();
    uint8_t* p = MapHugePages(mapped);
    if (p != nullptr) {
      if (mapped > batch * unit_) ::munmap(p + batch * unit_, mapped - batch * unit_);
      for (size_t i = 0; i < batch * unit_; i += page)
        reinterpret_cast<volatile uint8_t*>(p)[i] = 0;
    }
    lock.lock();
    if (p == nullptr) return false;
    for (size_t i = 0; i < batch; ++i) {
      if ((free_.size() + 1) * unit_ <= max_free_) {
        free_.push_back(p + i * unit_);
      } else {  // freed buffers filled it meanwhile
        ::munmap(p + i * unit_, unit_);
      }
    }
  }
  return true;
}

size_t BufferPool::free_buffers() {
  std::lock_guard lock(mu_);
  return free_.size();
}

void BufferPool::RefillLoop() {
  // Below the threads that decode what readers wait for: mapping ahead is for idle time.
  (void)::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);
  std::unique_lock lock(mu_);
  for (;;) {
    refill_cv_.wait(lock, [this] { return stop_ || Short(); });
    if (stop_) return;
    lock.unlock();
    const bool ok = FillReserve();
    lock.lock();
    // Out of memory: wait for the next Get to ask again rather than spin.
    if (!ok && !stop_) refill_cv_.wait(lock);
  }
}

void BufferPool::Put(uint8_t* data, size_t mapped) {
  if (mapped == 0) {
    delete[] data;
    return;
  }
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
