// Counters: named event counts a node keeps (bad frames, refused keys, duplicates dropped, ...)
// and reports in `mesh status`. Thread rule: owned by one actor; not thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace mesh::util {

class Counters {
 public:
  void add(const std::string& name, std::uint64_t n = 1) { values_[name] += n; }
  std::uint64_t get(const std::string& name) const {
    auto it = values_.find(name);
    return it == values_.end() ? 0 : it->second;
  }
  const std::map<std::string, std::uint64_t>& all() const { return values_; }

 private:
  std::map<std::string, std::uint64_t> values_;
};

}  // namespace mesh::util
