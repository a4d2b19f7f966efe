#include "fs/chunk_cache.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cstring>

namespace zipnn::fs {

size_t ChunkCache::KeyHash::operator()(const index::ChunkHash& h) const {
  size_t v;  // the key is already a strong hash: any 8 bytes of it will do
  std::memcpy(&v, h.data() + h.size() - sizeof(v), sizeof(v));
  return v;
}

// What a cached chunk costs: its buffer's memory and the entry's own (map node, list node, ref
// count; a cache of 40-byte chunks is mostly entries).
uint64_t ChunkCache::Charge(const ChunkBytes& c) { return c.footprint() + kEntryBytes; }

ChunkCache::ChunkCache(uint64_t capacity_bytes, uint64_t consumed_budget)
    : capacity_(capacity_bytes), consumed_budget_(consumed_budget) {}

Result<ChunkRef> ChunkCache::Get(const index::ChunkHash& key, const ChunkLoader& load) {
  std::unique_lock lock(mu_);
  auto it = map_.find(key);
  if (it != map_.end() && it->second.data) {
    Entry& e = it->second;
    ++stats_.hits;
    if (e.prefetched_unused) {
      ++stats_.prefetch_hits;
      e.prefetched_unused = false;
    }
    if (e.consumed) {  // asked for again: back among the live chunks
      e.consumed = false;
      e.served = 0;
      consumed_bytes_ -= Charge(*e.data);
      lru_.splice(lru_.begin(), consumed_, e.lru);
    } else {
      lru_.splice(lru_.begin(), lru_, e.lru);
    }
    return e.data;
  }
  if (it != map_.end()) {
    std::shared_ptr<Flight> flight = it->second.flight;
    ++stats_.joins;
    lock.unlock();
    std::unique_lock flight_lock(flight->mu);
    if (!flight->done && flight->prefetcher != 0) {
      (void)::setpriority(PRIO_PROCESS, static_cast<id_t>(flight->prefetcher), 0);
    }
    flight->cv.wait(flight_lock, [&] { return flight->done; });
    return flight->result;
  }
  auto flight = std::make_shared<Flight>();
  map_[key].flight = flight;
  ++stats_.misses;
  lock.unlock();
  return Load(key, load, std::move(flight), /*prefetch=*/false);
}

bool ChunkCache::Prefetch(const index::ChunkHash& key, const ChunkLoader& load) {
  std::unique_lock lock(mu_);
  if (map_.count(key) != 0) return false;
  auto flight = std::make_shared<Flight>();
  flight->prefetcher = ::gettid();
  map_[key].flight = flight;
  lock.unlock();
  return Load(key, load, std::move(flight), /*prefetch=*/true).ok();
}

Result<ChunkRef> ChunkCache::Load(const index::ChunkHash& key, const ChunkLoader& load,
                                  std::shared_ptr<Flight> flight, bool prefetch) {
  // Waiters block until this flight ends: it must end even if the loader throws.
  Result<ChunkRef> result = Status::Io("chunk load failed");
  try {
    result = load();
  } catch (const std::exception& e) {
    result = Status::Io(std::string("chunk load failed: ") + e.what());
  }
  {
    std::lock_guard lock(mu_);
    auto it = map_.find(key);  // only this loader removes or fills its entry
    if (result.ok()) {
      Entry& e = it->second;
      e.data = *result;
      e.flight.reset();
      e.prefetched_unused = prefetch;
      lru_.push_front(key);
      e.lru = lru_.begin();
      bytes_ += Charge(*e.data);
      if (prefetch) ++stats_.prefetched;
      EvictLocked();
    } else {
      map_.erase(it);
      ++stats_.failures;
    }
  }
  {
    std::lock_guard flight_lock(flight->mu);
    flight->result = result;
    flight->done = true;
  }
  flight->cv.notify_all();
  return result;
}

void ChunkCache::NoteServed(const index::ChunkHash& key, uint64_t bytes) {
  std::lock_guard lock(mu_);
  auto it = map_.find(key);
  if (it == map_.end() || !it->second.data || it->second.consumed) return;
  Entry& e = it->second;
  e.served += bytes;
  if (e.served < e.data->size()) return;
  e.consumed = true;
  consumed_bytes_ += Charge(*e.data);
  consumed_.splice(consumed_.begin(), lru_, e.lru);
  EvictLocked();
}

template <class Over>
void ChunkCache::EvictFrom(std::list<index::ChunkHash>& list, Over over) {
  // A ChunkRef is copied only under mu_, so a use count of one (the cache's) cannot grow while
  // we look at it: such a chunk is not in use and may go.
  for (auto it = list.end(); over() && it != list.begin();) {
    --it;
    auto entry = map_.find(*it);
    if (entry->second.data.use_count() > 1) continue;
    const uint64_t size = Charge(*entry->second.data);
    bytes_ -= size;
    if (entry->second.consumed) consumed_bytes_ -= size;
    ++stats_.evictions;
    map_.erase(entry);
    it = list.erase(it);
  }
}

void ChunkCache::EvictLocked() {
  EvictFrom(consumed_, [&] { return consumed_bytes_ > consumed_budget_ || bytes_ > capacity_; });
  EvictFrom(lru_, [&] { return bytes_ > capacity_; });
}

bool ChunkCache::Contains(const index::ChunkHash& key) const {
  std::lock_guard lock(mu_);
  return map_.count(key) != 0;
}

ChunkCacheStats ChunkCache::stats() const {
  std::lock_guard lock(mu_);
  ChunkCacheStats s = stats_;
  s.bytes = bytes_;
  s.entries = map_.size();
  return s;
}

}  // namespace zipnn::fs
