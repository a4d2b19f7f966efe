// ThreadPool and ParallelCodec: chunk-level parallelism with one codec context per thread.
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <system_error>
#include <thread>

#include "codec/codec.h"

namespace zipnn {

struct ThreadPool::Impl {
  std::mutex mu;
  std::condition_variable work_cv, done_cv;
  const std::function<void(size_t, unsigned)>* fn = nullptr;
  size_t n = 0;
  std::atomic<size_t> next{0};
  size_t active = 0;  // workers still inside the current job
  uint64_t generation = 0;
  bool stop = false;
  std::mutex call_mu;  // one ParallelFor at a time
  std::vector<std::thread> threads;

  void Drain(unsigned id) {
    for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) (*fn)(i, id);
  }

  void Run(unsigned id) {
    uint64_t seen = 0;
    std::unique_lock lk(mu);
    for (;;) {
      work_cv.wait(lk, [&] { return stop || generation != seen; });
      if (stop) return;
      seen = generation;
      lk.unlock();
      Drain(id);
      lk.lock();
      if (--active == 0) done_cv.notify_all();
    }
  }
};

ThreadPool::ThreadPool(unsigned threads) : impl_(std::make_unique<Impl>()) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 1; i < threads; i++) impl_->threads.emplace_back([this, i] { impl_->Run(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lk(impl_->mu);
    impl_->stop = true;
  }
  impl_->work_cv.notify_all();
  for (auto& t : impl_->threads) t.join();
}

unsigned ThreadPool::size() const { return static_cast<unsigned>(impl_->threads.size()) + 1; }

void ThreadPool::ParallelFor(size_t n, const std::function<void(size_t, unsigned)>& fn) {
  if (n == 0) return;
  if (impl_->threads.empty() || n == 1) {
    for (size_t i = 0; i < n; i++) fn(i, 0);
    return;
  }
  std::lock_guard call(impl_->call_mu);
  {
    std::lock_guard lk(impl_->mu);
    impl_->fn = &fn;
    impl_->n = n;
    impl_->next.store(0);
    impl_->active = impl_->threads.size();
    impl_->generation++;
  }
  impl_->work_cv.notify_all();
  impl_->Drain(0);
  std::unique_lock lk(impl_->mu);
  impl_->done_cv.wait(lk, [&] { return impl_->active == 0; });
}

ParallelCodec::ParallelCodec(unsigned threads, const EncodeOptions& opts) : pool_(threads) {
  for (unsigned i = 0; i < pool_.size(); i++) {
    encoders_.push_back(std::make_unique<FrameEncoder>(opts));
    decoders_.push_back(std::make_unique<FrameDecoder>(&tables_));
  }
}
ParallelCodec::~ParallelCodec() = default;

unsigned ParallelCodec::threads() const { return pool_.size(); }

namespace {
Status FirstError(const std::vector<Status>& st) {
  for (const Status& s : st)
    if (!s.ok()) return s;
  return Status::Ok();
}
}  // namespace

Status ParallelCodec::EncodeAll(std::span<const uint8_t> data, uint64_t base,
                                std::span<const ChunkSpec> plan,
                                std::vector<std::vector<uint8_t>>& frames,
                                std::vector<EncodeStats>* stats) {
  for (const ChunkSpec& c : plan)
    if (c.offset < base || c.offset - base + c.size > data.size())
      return Status::InvalidArgument("chunk outside the data given");
  frames.resize(plan.size());
  if (stats) stats->assign(plan.size(), {});
  std::vector<Status> st(plan.size());
  pool_.ParallelFor(plan.size(), [&](size_t i, unsigned w) {
    const ChunkSpec& c = plan[i];
    frames[i].clear();
    st[i] = encoders_[w]->Encode(data.subspan(c.offset - base, c.size), c.dtype, frames[i],
                                 c.segments, stats ? &(*stats)[i] : nullptr, c.grid);
  });
  return FirstError(st);
}

Status ParallelCodec::DecodeAll(std::span<const std::span<const uint8_t>> frames,
                                std::span<const std::span<uint8_t>> outs) {
  if (frames.size() != outs.size())
    return Status::InvalidArgument("frames and outputs differ in number");
  std::vector<Status> st(frames.size());
  pool_.ParallelFor(frames.size(), [&](size_t i, unsigned w) {
    st[i] = decoders_[w]->Decode(frames[i], outs[i]);
  });
  return FirstError(st);
}

Status ParallelCodec::Run(size_t n, const std::function<Status(size_t, unsigned)>& fn) {
  // Calls below a failure still run (one may fail too, and its error is the one reported);
  // calls above it are skipped.
  std::mutex mu;
  std::atomic<size_t> failed_at{SIZE_MAX};
  Status first;
  pool_.ParallelFor(n, [&](size_t i, unsigned w) {
    if (i > failed_at.load(std::memory_order_relaxed)) return;
    Status s = fn(i, w);
    if (s.ok()) return;
    std::lock_guard lk(mu);
    if (i < failed_at.load(std::memory_order_relaxed)) {
      failed_at.store(i, std::memory_order_relaxed);
      first = std::move(s);
    }
  });
  return first;
}

Status ThreadPool::RunOrdered(
    size_t n, size_t window,
    const std::function<Status(size_t, unsigned, std::vector<uint8_t>&)>& make,
    const std::function<Status(size_t, std::span<const uint8_t>)>& consume) {
  window = std::max<size_t>(window, 1);
  struct Slot {
    std::vector<uint8_t> buf;
    bool ready = false;
  };
  std::vector<Slot> slots(window);
  std::mutex mu;
  std::condition_variable space, ready;
  size_t consumed = 0;     // buffers [0, consumed) are consumed
  bool consuming = false;  // a thread is in Drain
  bool done = false;       // no more buffers will be made
  bool idle = false;       // the consumer thread waits for buffers
  size_t failed_at = SIZE_MAX;
  Status first;
  auto fail = [&](size_t i, Status s) {  // with mu held
    if (i < failed_at) failed_at = i, first = std::move(s);
    space.notify_all();
  };
  // Consumes the buffers ready in line, with mu held (released around consume).
  auto drain = [&](std::unique_lock<std::mutex>& lk) {
    consuming = true;
    for (Slot* next; consumed < failed_at && (next = &slots[consumed % window])->ready;) {
      lk.unlock();
      Status st = consume(consumed, next->buf);
      lk.lock();
      if (!st.ok()) {
        fail(consumed, std::move(st));
        break;
      }
      next->ready = false;
      consumed++;
      space.notify_all();
    }
    consuming = false;
  };
  // With one worker, the consumer has a thread of its own so that its I/O overlaps coding. With
  // more, the worker that finishes the buffer next in line consumes it (and any ready behind it):
  // no thread more than cores.
  std::thread consumer;
  if (size() == 1) {
    try {
      consumer = std::thread([&] {
        std::unique_lock lk(mu);
        for (;;) {
          drain(lk);
          if (done) return;
          idle = true;
          ready.wait(lk);
          idle = false;
        }
      });
    } catch (const std::system_error&) {  // no thread to be had: the worker consumes too
    }
  }
  // Index i waits for slot i % window to be free. The indices below it are out already (the pool
  // hands them out in order) and none of them waits, so `consumed` moves on: no deadlock.
  ParallelFor(n, [&](size_t i, unsigned w) {
    std::unique_lock lk(mu);
    space.wait(lk, [&] { return failed_at < i || i < consumed + window; });
    if (failed_at < i) return;
    Slot& slot = slots[i % window];
    lk.unlock();
    Status st = make(i, w, slot.buf);
    lk.lock();
    if (!st.ok()) return fail(i, std::move(st));
    slot.ready = true;
    if (consumer.joinable()) {
      // A thread woken costs as much as writing a small buffer: wake the idle consumer once half
      // the window is ready, not for each buffer (it drains all it finds; the window cannot fill
      // while it sleeps).
      if (idle && i + 1 - consumed >= (window + 1) / 2) ready.notify_one();
    } else if (!consuming) {  // else the consuming thread checks for this buffer before it stops
      drain(lk);
    }
  });
  if (consumer.joinable()) {
    {
      std::lock_guard lk(mu);
      done = true;
    }
    ready.notify_one();
    consumer.join();
  }
  return first;
}

}  // namespace zipnn
