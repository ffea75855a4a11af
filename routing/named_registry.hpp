// State kept per name across config reloads (backend health, key counters): the same name gets
// the same object from every config that uses it. Looked up when a config is built, never per
// request.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace tollgate::routing {

template <class T>
class named_registry {
 public:
  std::shared_ptr<T> get(const std::string& name) {
    std::lock_guard lock(mutex_);
    auto& slot = by_name_[name];
    if (!slot) slot = std::make_shared<T>();
    return slot;
  }

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, std::shared_ptr<T>> by_name_;
};

}  // namespace tollgate::routing
