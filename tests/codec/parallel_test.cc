// ThreadPool and ParallelCodec: every index once, no shared worker slot, and parallel coding equal
// to single-threaded coding.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "codec/codec.h"
#include "tests/codec/test_util.h"

namespace zipnn {
namespace {

using test::Bytes;

TEST(ThreadPoolTest, SizeCountsTheCaller) {
  EXPECT_EQ(ThreadPool(1).size(), 1u);
  EXPECT_EQ(ThreadPool(2).size(), 2u);
  EXPECT_EQ(ThreadPool(4).size(), 4u);
  EXPECT_EQ(ThreadPool(0).size(), std::max(1u, std::thread::hardware_concurrency()));
}

TEST(ThreadPoolTest, RunsEveryIndexOnceWithExclusiveWorkers) {
  for (unsigned threads : {1u, 2u, 4u, 7u}) {
    ThreadPool pool(threads);
    for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{3}, size_t{100}, size_t{10007}}) {
      std::vector<std::atomic<int>> hits(n);
      std::vector<std::atomic<int>> busy(pool.size());
      std::atomic<int> bad_worker{0}, shared_worker{0};
      pool.ParallelFor(n, [&](size_t i, unsigned w) {
        if (w >= pool.size()) {
          bad_worker++;
          return;
        }
        if (busy[w].fetch_add(1) != 0) shared_worker++;
        hits[i]++;
        busy[w].fetch_sub(1);
      });
      for (size_t i = 0; i < n; i++) {
        ASSERT_EQ(hits[i].load(), 1) << threads << "/" << n << "/" << i;
      }
      EXPECT_EQ(bad_worker.load(), 0);
      EXPECT_EQ(shared_worker.load(), 0) << "two concurrent calls shared a worker index";
    }
  }
}

TEST(ThreadPoolTest, ReturnsOnlyWhenAllWorkIsDone) {
  ThreadPool pool(4);
  for (int round = 0; round < 2000; round++) {
    std::atomic<size_t> done{0};
    const size_t n = 1 + round % 13;
    pool.ParallelFor(n, [&](size_t, unsigned) { done.fetch_add(1, std::memory_order_relaxed); });
    ASSERT_EQ(done.load(), n) << "round " << round;
  }
}

TEST(ThreadPoolTest, UsesMoreThanOneThreadForLongJobs) {
  ThreadPool pool(2);
  std::vector<std::atomic<int>> seen(pool.size());
  std::atomic<int> started{0};
  // Each call waits (bounded) for another participant to start, so one thread alone cannot
  // finish quickly; with two participants the rendezvous succeeds.
  pool.ParallelFor(2, [&](size_t, unsigned w) {
    seen[w]++;
    started++;
    for (int spin = 0; spin < 200000000 && started.load() < 2; spin++) std::this_thread::yield();
  });
  EXPECT_EQ(started.load(), 2);
  EXPECT_EQ(seen[0].load() + seen[1].load(), 2);
  EXPECT_EQ(seen[0].load(), 1) << "the caller participates";
  EXPECT_EQ(seen[1].load(), 1) << "the worker participates";
}

TEST(ThreadPoolTest, ConstructAndDestroyWithoutWork) {
  for (int i = 0; i < 50; i++) {
    ThreadPool pool(4);
    if (i % 2) pool.ParallelFor(3, [](size_t, unsigned) {});
  }
}

// ---- ParallelCodec ------------------------------------------------------------------------------

// A buffer of mixed chunks (floats, ints, zeros, random, untyped) and its plan.
struct Workload {
  Bytes data;
  std::vector<ChunkSpec> plan;
};

Workload MakeWorkload(uint64_t base) {
  Workload w;
  std::mt19937_64 rng(99);
  const DType kinds[] = {DType::kBF16, DType::kF32, DType::kF16,    DType::kI32, DType::kBytes,
                         DType::kU8,   DType::kF64, DType::kF8E4M3, DType::kI64};
  for (int i = 0; i < 70; i++) {
    const DType t = kinds[i % std::size(kinds)];
    const size_t size = DTypeSize(t) * (1 + rng() % 20000);
    Bytes chunk = i % 11 == 5  ? Bytes(size, 0)
                  : i % 7 == 3 ? test::RandomBytes(size, i)
                               : test::TypicalData(t, size, i);
    ChunkSpec c;
    c.offset = base + w.data.size();
    c.size = static_cast<uint32_t>(size);
    c.dtype = t;
    if (i % 5 == 0 && size / DTypeSize(t) > 10)
      c.segments = {static_cast<uint32_t>(size / DTypeSize(t) / 3)};
    w.plan.push_back(c);
    w.data.insert(w.data.end(), chunk.begin(), chunk.end());
  }
  return w;
}

std::vector<Bytes> EncodeWith(unsigned threads, const Workload& w, uint64_t base) {
  ParallelCodec codec(threads);
  EXPECT_EQ(codec.threads(), threads);
  std::vector<Bytes> frames;
  std::vector<EncodeStats> stats;
  const Status st = codec.EncodeAll(w.data, base, w.plan, frames, &stats);
  EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(frames.size(), w.plan.size());
  EXPECT_EQ(stats.size(), w.plan.size());
  return frames;
}

// Reproducible output: the same input and options give the same frames on any number of threads
// (so a file compresses to the same bytes every time).
TEST(ParallelCodecTest, ParallelEncodingEqualsSingleThreaded) {
  const uint64_t base = 1000;
  const Workload w = MakeWorkload(base);
  // Reference: one FrameEncoder, chunk by chunk.
  std::vector<Bytes> ref(w.plan.size());
  FrameEncoder enc;
  for (size_t i = 0; i < w.plan.size(); i++) {
    const ChunkSpec& c = w.plan[i];
    ASSERT_TRUE(
        enc.Encode(std::span(w.data).subspan(c.offset - base, c.size), c.dtype, ref[i], c.segments)
            .ok());
  }
  for (unsigned threads : {1u, 2u, 4u}) {
    const std::vector<Bytes> frames = EncodeWith(threads, w, base);
    ASSERT_EQ(frames.size(), ref.size());
    for (size_t i = 0; i < ref.size(); i++)
      EXPECT_EQ(frames[i], ref[i]) << "frame " << i << " with " << threads << " threads";
  }
}

// Whatever the encoders' state, frames coded on any number of threads decode to the input and
// cost about the same.
TEST(ParallelCodecTest, ParallelEncodingRoundTrips) {
  const Workload w = MakeWorkload(0);
  size_t single = 0;
  for (unsigned threads : {1u, 2u, 4u}) {
    const std::vector<Bytes> frames = EncodeWith(threads, w, 0);
    size_t total = 0;
    FrameDecoder dec;
    for (size_t i = 0; i < frames.size(); i++) {
      Bytes out(w.plan[i].size);
      ASSERT_TRUE(dec.Decode(frames[i], out).ok()) << "frame " << i;
      ASSERT_TRUE(std::equal(out.begin(), out.end(), w.data.begin() + w.plan[i].offset))
          << "frame " << i << " with " << threads << " threads";
      total += frames[i].size();
    }
    if (threads == 1) single = total;
    EXPECT_LE(total, single + single / 200) << threads << " threads";
  }
}

TEST(ParallelCodecTest, ParallelDecodingRestoresEveryChunk) {
  const Workload w = MakeWorkload(0);
  const std::vector<Bytes> frames = EncodeWith(2, w, 0);
  for (unsigned threads : {1u, 2u, 4u}) {
    ParallelCodec codec(threads);
    Bytes out(w.data.size(), 0xEE);
    std::vector<std::span<const uint8_t>> in;
    std::vector<std::span<uint8_t>> outs;
    for (size_t i = 0; i < frames.size(); i++) {
      in.emplace_back(frames[i]);
      outs.push_back(std::span(out).subspan(w.plan[i].offset, w.plan[i].size));
    }
    for (int repeat = 0; repeat < 3; repeat++) {
      ASSERT_TRUE(codec.DecodeAll(in, outs).ok()) << threads << " threads";
      ASSERT_EQ(out, w.data) << threads << " threads";
    }
  }
}

TEST(ParallelCodecTest, DecodeAllReportsAnErrorAndStillDecodesTheRest) {
  const Workload w = MakeWorkload(0);
  std::vector<Bytes> frames = EncodeWith(2, w, 0);
  const size_t broken = 17;
  frames[broken][frames[broken].size() - 1] ^= 0x40;
  ParallelCodec codec(2);
  Bytes out(w.data.size(), 0);
  std::vector<std::span<const uint8_t>> in;
  std::vector<std::span<uint8_t>> outs;
  for (size_t i = 0; i < frames.size(); i++) {
    in.emplace_back(frames[i]);
    outs.push_back(std::span(out).subspan(w.plan[i].offset, w.plan[i].size));
  }
  EXPECT_FALSE(codec.DecodeAll(in, outs).ok());
  for (size_t i = 0; i < frames.size(); i++) {
    if (i == broken) continue;
    const ChunkSpec& c = w.plan[i];
    EXPECT_TRUE(std::equal(out.begin() + c.offset, out.begin() + c.offset + c.size,
                           w.data.begin() + c.offset))
        << "chunk " << i << " was not decoded";
  }
}

// Run reports the failure of the lowest index, whichever came first in time, after running every
// call below it; one thread skips every call above it. (The wait only makes a wrong order likely
// to show; the assertions hold whatever the timing.)
TEST(ParallelCodecTest, RunReportsTheLowestFailure) {
  constexpr size_t kCalls = 1000;
  for (unsigned threads : {1u, 2u, 4u}) {
    ParallelCodec codec(threads);
    for (int round = 0; round < 50; round++) {
      std::vector<std::atomic<int>> ran(kCalls);
      const Status st = codec.Run(kCalls, [&](size_t i, unsigned) {
        ran[i]++;
        if (i == 500) {  // give 501 a head start (bounded: it may not run at all)
          const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(2);
          while (ran[501] == 0 && std::chrono::steady_clock::now() < until)
            std::this_thread::yield();
        }
        if (i == 500 || i == 501 || i == 900) return Status::Io("call " + std::to_string(i));
        return Status::Ok();
      });
      ASSERT_EQ(st.message(), "call 500") << threads << " threads";
      for (size_t i = 0; i <= 500; i++) ASSERT_EQ(ran[i], 1) << "call " << i;
      if (threads == 1) {
        for (size_t i = 501; i < kCalls; i++) ASSERT_EQ(ran[i], 0) << "call " << i;
      }
    }
  }
  ParallelCodec codec(2);
  EXPECT_TRUE(codec.Run(0, [](size_t, unsigned) { return Status::Io("never"); }).ok());
}

TEST(ParallelCodecTest, RunOrderedConsumesInOrderWithinTheWindow) {
  constexpr size_t kCalls = 2000;
  for (unsigned threads : {1u, 2u, 4u}) {
    for (size_t window : {1u, 3u, 16u}) {
      ParallelCodec codec(threads);
      std::atomic<size_t> out{0}, most_out{0};
      std::vector<size_t> order;
      std::atomic<int> consuming{0};
      const Status st = codec.RunOrdered(
          kCalls, window,
          [&](size_t i, unsigned, std::vector<uint8_t>& buf) {
            const size_t now = ++out;
            size_t m = most_out;
            while (now > m && !most_out.compare_exchange_weak(m, now)) {
            }
            buf.assign(1 + i % 7, static_cast<uint8_t>(i));  // a recycled buffer is overwritten
            return Status::Ok();
          },
          [&](size_t i, std::span<const uint8_t> buf) {
            EXPECT_EQ(++consuming, 1) << "consume calls overlap";
            EXPECT_EQ(buf.size(), 1 + i % 7);
            EXPECT_TRUE(std::all_of(buf.begin(), buf.end(),
                                    [&](uint8_t b) { return b == static_cast<uint8_t>(i); }));
            order.push_back(i);
            out--;
            consuming--;
            return Status::Ok();
          });
      ASSERT_TRUE(st.ok()) << st.message();
      ASSERT_EQ(order.size(), kCalls);
      for (size_t i = 0; i < kCalls; i++) ASSERT_EQ(order[i], i);
      EXPECT_LE(most_out, window) << threads << " threads";
    }
  }
}

TEST(ParallelCodecTest, RunOrderedStopsAtTheFirstFailureInOrder) {
  constexpr size_t kCalls = 1000;
  for (unsigned threads : {1u, 2u, 4u}) {
    ParallelCodec codec(threads);
    for (bool in_consume : {false, true}) {
      size_t consumed = 0;
      const Status st = codec.RunOrdered(
          kCalls, 8,
          [&](size_t i, unsigned, std::vector<uint8_t>&) {
            if (!in_consume && (i == 300 || i == 700))
              return Status::Io("make " + std::to_string(i));
            return Status::Ok();
          },
          [&](size_t i, std::span<const uint8_t>) {
            if (in_consume && (i == 300 || i == 700))
              return Status::Io("consume " + std::to_string(i));
            consumed++;
            return Status::Ok();
          });
      EXPECT_EQ(st.message(), in_consume ? "consume 300" : "make 300") << threads << " threads";
      EXPECT_EQ(consumed, 300u) << "consumed past a failure, or stopped before it";
    }
  }
}

TEST(ParallelCodecTest, RejectsMismatchedArguments) {
  const Workload w = MakeWorkload(0);
  ParallelCodec codec(2);
  std::vector<Bytes> frames;
  // A chunk beyond the data, and one before the base.
  std::vector<ChunkSpec> plan = w.plan;
  plan.back().size += 1;
  EXPECT_EQ(codec.EncodeAll(w.data, 0, plan, frames).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(codec.EncodeAll(w.data, 1, w.plan, frames).code(), StatusCode::kInvalidArgument);
  // Frames and outputs differing in number.
  frames = EncodeWith(2, w, 0);
  Bytes out(w.data.size());
  std::vector<std::span<const uint8_t>> in(frames.begin(), frames.end());
  std::vector<std::span<uint8_t>> outs(in.size() - 1, std::span<uint8_t>(out).first(0));
  EXPECT_EQ(codec.DecodeAll(in, outs).code(), StatusCode::kInvalidArgument);
  // Empty work is fine.
  EXPECT_TRUE(codec.DecodeAll({}, {}).ok());
  EXPECT_TRUE(codec.EncodeAll({}, 0, {}, frames).ok());
  EXPECT_TRUE(frames.empty());
}

TEST(ParallelCodecTest, HonoursEncodeOptions) {
  const Workload w = MakeWorkload(0);
  EncodeOptions raw;
  raw.force_method = Method::kRaw;
  ParallelCodec codec(2, raw);
  std::vector<Bytes> frames;
  ASSERT_TRUE(codec.EncodeAll(w.data, 0, w.plan, frames).ok());
  for (const Bytes& f : frames) {
    EXPECT_EQ(test::InfoOf(f).method, Method::kRaw);
  }
}

// ---- Shared decode tables
// ------------------------------------------------------------------------

// Decoders on many threads sharing one table cache (as the filesystem's do) decode every frame
// exactly, also when the cache holds fewer tables than the frames use and evicts while others
// read.
TEST(DecoderTableCacheTest, ThreadsSharingTablesDecodeExactly) {
  const Workload w = MakeWorkload(0);
  const std::vector<Bytes> frames = EncodeWith(1, w, 0);
  for (size_t max_tables : {size_t{1}, size_t{4}, size_t{256}}) {
    DecoderTableCache tables(max_tables);
    std::atomic<int> wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; t++) {
      threads.emplace_back([&, t] {
        FrameDecoder decoder(&tables);
        for (int round = 0; round < 3; round++) {
          for (size_t k = 0; k < frames.size(); k++) {
            const size_t i = (k * 7 + static_cast<size_t>(t) * 13 + round) % frames.size();
            const ChunkSpec& c = w.plan[i];
            Bytes out(c.size);
            const Status st = decoder.Decode(frames[i], out);
            if (!st.ok() || !std::equal(out.begin(), out.end(), w.data.begin() + c.offset)) {
              wrong++;
            }
          }
        }
      });
    }
    for (std::thread& th : threads) th.join();
    EXPECT_EQ(wrong.load(), 0) << "max_tables " << max_tables;
  }
}

}  // namespace
}  // namespace zipnn
