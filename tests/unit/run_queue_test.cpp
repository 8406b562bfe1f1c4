#include <doctest/doctest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "mesh/routing/run_queue.h"

using mesh::routing::RunQueue;

namespace {
std::vector<int> drain(RunQueue<int>& q) {
  std::vector<int> out;
  while (!q.empty()) {
    for (int x : q.takeRun(1)) out.push_back(x);
  }
  return out;
}
}  // namespace

TEST_CASE("a run queue hands out the highest priority first, in arrival order within a priority") {
  RunQueue<int> q;
  q.push(0, 1);
  q.push(0, 2);
  q.push(200, 3);
  q.push(5, 4);
  q.push(200, 5);
  q.push(0, 6);
  CHECK(q.size() == 6);
  CHECK(q.topPriority() == 200);
  CHECK(q.topCount() == 2);
  CHECK(q.front() == 3);
  CHECK(drain(q) == std::vector<int>{3, 5, 4, 1, 2, 6});
  CHECK(q.empty());
  CHECK(q.topCount() == 0);
}

TEST_CASE("a run of a run queue never mixes priorities") {
  RunQueue<int> q;
  for (int i = 0; i < 10; ++i) q.push(1, i);
  q.push(9, 100);
  q.push(9, 101);
  CHECK(q.takeRun(64) == std::vector<int>{100, 101});
  CHECK(q.takeRun(4) == std::vector<int>{0, 1, 2, 3});
  CHECK(q.takeRun(0) == std::vector<int>{4});  // at least one
  CHECK(q.size() == 5);
  CHECK(q.takeRun(64) == std::vector<int>{5, 6, 7, 8, 9});
  CHECK(q.takeRun(64).empty());
}

// The spore keeps tasks of a handler seen slow out of runs: a run ends before one, and one
// that is first in line goes alone.
TEST_CASE("a run ends before an item its predicate stops at, but always takes the first") {
  RunQueue<int> q;
  for (int x : {1, 2, 100, 3, 4}) q.push(0, x);
  auto slow = [](int x) { return x >= 100; };
  CHECK(q.takeRun(10, slow) == std::vector<int>{1, 2});
  CHECK(q.takeRun(10, slow) == std::vector<int>{100, 3, 4});  // the first is always taken
  CHECK(q.empty());
  for (int x : {5, 6}) q.push(0, x);
  CHECK(q.takeRun(1, slow) == std::vector<int>{5});
  CHECK(q.size() == 1);
}

TEST_CASE("a run given back goes ahead of what came later at its priority, behind higher ones") {
  RunQueue<int> q;
  for (int i = 0; i < 6; ++i) q.push(3, i);
  auto run = q.takeRun(4);  // 0 1 2 3
  q.push(3, 6);
  q.push(7, 50);
  run.erase(run.begin());  // 0 started; 1 2 3 come back
  q.pushFront(3, run);
  q.pushFront(3, {});
  CHECK(q.size() == 7);
  CHECK(drain(q) == std::vector<int>{50, 1, 2, 3, 4, 5, 6});
}

TEST_CASE("removing from a run queue keeps the order of the rest and drops emptied levels") {
  RunQueue<int> q;
  for (int i = 0; i < 8; ++i) q.push(static_cast<std::uint8_t>(i % 2 ? 10 : 20), i);
  std::vector<int> seen;
  std::size_t removed = q.removeIf([&](int x) {
    seen.push_back(x);
    return x % 4 == 0 || x == 1 || x == 5;  // every priority-20 item but 2 and 6; two of the others
  });
  CHECK(removed == 4);
  CHECK(seen.size() == 8);
  CHECK(q.size() == 4);
  CHECK(q.topPriority() == 20);
  CHECK(drain(q) == std::vector<int>{2, 6, 3, 7});
  for (int i = 0; i < 3; ++i) q.push(20, i);
  CHECK(q.removeIf([](int) { return true; }) == 3);
  CHECK(q.empty());
  q.push(1, 9);
  CHECK(q.topPriority() == 1);  // the emptied level 20 is gone
}

TEST_CASE("an empty run queue refuses front and topPriority") {
  RunQueue<int> q;
  CHECK_THROWS(q.front());
  CHECK_THROWS(q.topPriority());
}

TEST_CASE("a run queue matches a stable sort by priority under random pushes, runs and give-backs") {
  std::srand(7);
  for (int round = 0; round < 200; ++round) {
    RunQueue<std::pair<int, int>> q;  // (priority, arrival)
    std::vector<std::pair<int, int>> model;  // what is queued, in arrival order
    int arrival = 0;
    for (int step = 0; step < 60; ++step) {
      int op = std::rand() % 4;
      if (op < 2) {
        int p = std::rand() % 4 * 60;
        q.push(static_cast<std::uint8_t>(p), {p, arrival});
        model.push_back({p, arrival++});
      } else if (!q.empty()) {
        // The model's next: the first queued of the highest priority.
        auto run = q.takeRun(static_cast<std::size_t>(std::rand() % 5));
        REQUIRE(!run.empty());
        for (const auto& item : run) {
          auto best = model.begin();
          for (auto it = model.begin(); it != model.end(); ++it) {
            if (it->first > best->first) best = it;
          }
          CHECK(item == *best);
          CHECK(item.first == run.front().first);
          model.erase(best);
        }
        if (op == 3 && run.size() > 1) {
          // Give back all but the first, as a worker that started one does.
          std::vector<std::pair<int, int>> back(run.begin() + 1, run.end());
          model.insert(model.begin(), back.begin(), back.end());
          std::stable_sort(model.begin(), model.end(), [](const auto& a, const auto& b) { return a.second < b.second; });
          q.pushFront(static_cast<std::uint8_t>(run.front().first), back);
        }
      }
      REQUIRE(q.size() == model.size());
    }
  }
}
