#include "fs/buffer_pool.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <system_error>

namespace zipnn::fs {

namespace {

constexpr size_t kHugePage = 2u << 20;

uint8_t* MapBuffer(size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
}

// Maps `bytes` starting on a 2 MiB boundary, advised to transparent huge pages, and writes a
// byte of every page. A new page's first write from user space is costly where the hypervisor
// shadows page tables (this machine's does): 2.5-3.2 us per KiB with 4 KiB pages, measured here,
// but 0.07-0.9 us per KiB where the kernel gives a huge page (one trap per 2 MiB), and writes to
// it are faster after too (fewer TLB misses). Without huge pages, touching on the reserve thread
// still leaves readers only warm memory.
uint8_t* MapTouched(size_t bytes) {
  const size_t span = bytes + kHugePage;
  void* m = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  const auto base = reinterpret_cast<uintptr_t>(m);
  const uintptr_t start = (base + kHugePage - 1) & ~uintptr_t{kHugePage - 1};
  if (start > base) ::munmap(m, start - base);
  if (base + span > start + bytes)
    ::munmap(reinterpret_cast<void*>(start + bytes), base + span - start - bytes);
  auto* p = reinterpret_cast<uint8_t*>(start);
  (void)::madvise(p, bytes, MADV_HUGEPAGE);  // a hint: without it, 4 KiB pages
  static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  for (size_t i = 0; i < bytes; i += page) reinterpret_cast<volatile uint8_t*>(p)[i] = 0;
  return p;
}

}  // namespace

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
  return std::unique_ptr<Buffer>(new Buffer(shared_from_this(), data, size, mapped));
}

bool BufferPool::FillReserve() {
  // Units come a huge page's worth at a time (they are unmapped one by one all the same).
  const size_t batch = std::clamp<size_t>((kHugePage + unit_ - 1) / unit_, 1, reserve_);
  std::unique_lock lock(mu_);
  while (Short() && !stop_) {
    lock.unlock();
    uint8_t* p = MapTouched(batch * unit_);
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
