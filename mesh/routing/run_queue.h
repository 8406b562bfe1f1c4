// The spore's queue of tasks that have not started: the highest priority first, first in first
// out within a priority (the order the nexus assigned them in). A worker takes a run of tasks
// of one priority only, and a run it gives back goes in front of the tasks of its priority that
// came later, so the order holds whatever the hand-outs.
//
// Thread rule: not thread-safe; owned by the spore's loop.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <iterator>
#include <map>
#include <utility>
#include <vector>

#include "mesh/util/result.h"

namespace mesh::routing {

template <class T>
class RunQueue {
 public:
  bool empty() const { return size_ == 0; }
  std::size_t size() const { return size_; }

  // Queues `item` behind every queued item of the same or a higher priority.
  void push(std::uint8_t priority, T item) {
    levels_[priority].push_back(std::move(item));
    ++size_;
  }

  // Puts back items taken from the front (a run a worker did not start), in their order, ahead
  // of what was queued at their priority since.
  void pushFront(std::uint8_t priority, std::vector<T> items) {
    if (items.empty()) return;
    auto& level = levels_[priority];
    size_ += items.size();
    for (auto it = items.rbegin(); it != items.rend(); ++it) level.push_front(std::move(*it));
  }

  // The priority of the item that would be taken next. Requires !empty().
  std::uint8_t topPriority() const {
    MESH_ASSERT(!empty(), "topPriority of an empty RunQueue");
    return levels_.begin()->first;
  }

  // How many items of the top priority are queued (0 when empty).
  std::size_t topCount() const { return empty() ? 0 : levels_.begin()->second.size(); }

  // The next item. Requires !empty().
  const T& front() const {
    MESH_ASSERT(!empty(), "front of an empty RunQueue");
    return levels_.begin()->second.front();
  }

  // Takes up to `most` items (at least one when not empty) from the front, all of the top
  // priority: a run never mixes priorities.
  std::vector<T> takeRun(std::size_t most) {
    return takeRun(most, [](const T&) { return false; });
  }
  // The same, ending the run before any item after the first for which `stopBefore` is true.
  template <class Pred>
  std::vector<T> takeRun(std::size_t most, Pred stopBefore) {
    std::vector<T> run;
    if (empty()) return run;
    auto level = levels_.begin();
    std::size_t n = std::min(std::max<std::size_t>(1, most), level->second.size());
    run.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (i > 0 && stopBefore(level->second.front())) break;
      run.push_back(std::move(level->second.front()));
      level->second.pop_front();
    }
    size_ -= run.size();
    if (level->second.empty()) levels_.erase(level);
    return run;
  }

  // Removes every item for which `drop(item)` is true, keeping the order of the rest; returns
  // how many it removed. `drop` may have side effects (it is called once per item).
  template <class Pred>
  std::size_t removeIf(Pred drop) {
    std::size_t removed = 0;
    for (auto level = levels_.begin(); level != levels_.end();) {
      auto& q = level->second;
      std::size_t before = q.size();
      q.erase(std::remove_if(q.begin(), q.end(), drop), q.end());
      removed += before - q.size();
      level = q.empty() ? levels_.erase(level) : std::next(level);
    }
    size_ -= removed;
    return removed;
  }

 private:
  std::map<std::uint8_t, std::deque<T>, std::greater<>> levels_;  // never holds an empty level
  std::size_t size_ = 0;
};

}  // namespace mesh::routing
