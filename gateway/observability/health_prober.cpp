#include "gateway/observability/health_prober.hpp"

#include <iostream>
#include <unordered_set>

#include "adapters/backend_kinds.hpp"
#include "gateway/server/server.hpp"

namespace tollgate::gateway {

namespace net = boost::asio;
using clock = std::chrono::steady_clock;

namespace {
constexpr auto tick_period = std::chrono::milliseconds(200);

std::size_t discard(char*, std::size_t size, std::size_t count, void*) { return size * count; }
}  // namespace

struct health_prober::probe_state {
  std::shared_ptr<routing::target_health> health;
  clock::time_point next{};
  CURL* easy = nullptr;  ///< set while a probe is in flight
  curl_slist* headers = nullptr;
  std::string url;
  unsigned good = 0;  ///< consecutive
  unsigned bad = 0;   ///< consecutive
  config::health_check_config hc;
  std::string name;
};

health_prober::health_prober(server_shared& shared, routing::health_registry& health)
    : shared_(shared), health_(health), curl_(io_), timer_(io_) {}

health_prober::~health_prober() {
  if (thread_.joinable()) {
    net::post(io_, [this] {
      timer_.cancel();
      for (auto& [name, st] : states_) {
        if (st->easy != nullptr) {
          curl_.remove(st->easy);
          curl_.release(st->easy);
          st->easy = nullptr;
        }
      }
    });
    io_.stop();
    thread_.join();
  }
  for (auto& [name, st] : states_) curl_slist_free_all(st->headers);
}

void health_prober::start() {
  tick();
  thread_ = std::thread([this] { io_.run(); });
}

void health_prober::tick() {
  const auto rt = shared_.current.load();
  const auto now = clock::now();
  std::unordered_set<std::string> seen;
  for (const auto& b : rt->cfg.backends) {
    seen.insert(b.name);
    auto it = states_.find(b.name);
    const config::remote_backend_config* remote = b.remote();
    if (remote == nullptr || !remote->health_check.enabled) {
      if (it != states_.end() && it->second->easy == nullptr) {
        it->second->health->set_probed_down(false);  // checks turned off: no verdict stands
        curl_slist_free_all(it->second->headers);
        states_.erase(it);
      }
      continue;
    }
    if (it == states_.end()) {
      auto st = std::make_unique<probe_state>();
      st->health = health_.get(b.name);
      st->name = b.name;
      it = states_.emplace(b.name, std::move(st)).first;
    }
    probe_state& st = *it->second;
    st.hc = remote->health_check;
    if (st.easy == nullptr && now >= st.next) {
      st.next = now + remote->health_check.interval;
      launch(st, remote->base_url + remote->health_check.path, b, remote->health_check, b.timeouts);
    }
  }
  for (auto it = states_.begin(); it != states_.end();) {
    if (!seen.count(it->first) && it->second->easy == nullptr) {
      curl_slist_free_all(it->second->headers);
      it = states_.erase(it);
    } else {
      ++it;
    }
  }
  timer_.expires_after(tick_period);
  timer_.async_wait([this](boost::system::error_code ec) {
    if (!ec) tick();
  });
}

void health_prober::launch(probe_state& st, const std::string& url, const config::backend_config& b,
                           const config::health_check_config& hc, const config::timeouts_config& timeouts) {
  curl_slist_free_all(st.headers);
  st.headers = nullptr;
  if (const auto probe_headers = adapters::kind_of(b).probe_headers) {
    for (const auto& [name, value] : probe_headers(b)) {
      st.headers = curl_slist_append(st.headers, (name + ": " + value).c_str());
    }
  }
  st.url = url;
  CURL* easy = curl_.acquire();
  curl_easy_setopt(easy, CURLOPT_URL, st.url.c_str());
  curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, st.headers);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &discard);
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, static_cast<long>(hc.timeout.count()));
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(std::min(hc.timeout, timeouts.connect).count()));
  curl_easy_setopt(easy, CURLOPT_USERAGENT, "tollgate-health-check");
  st.easy = easy;
  curl_.add(easy, [this, &st](CURLcode code) {
    long status = 0;
    curl_easy_getinfo(st.easy, CURLINFO_RESPONSE_CODE, &status);
    curl_.release(st.easy);
    st.easy = nullptr;
    const bool ok = code == CURLE_OK && status >= 200 && status < 300;
    if (ok) {
      st.bad = 0;
      if (++st.good >= st.hc.healthy_after && st.health->probed_down()) {
        st.health->set_probed_down(false);
        std::cerr << "tollgate: backend " << st.name << " is healthy again" << std::endl;
      }
    } else {
      st.good = 0;
      if (++st.bad >= st.hc.unhealthy_after && !st.health->probed_down()) {
        st.health->set_probed_down(true);
        std::cerr << "tollgate: backend " << st.name << " is unhealthy: "
                  << (code != CURLE_OK ? curl_easy_strerror(code) : "status " + std::to_string(status)) << std::endl;
      }
    }
  });
}

}  // namespace tollgate::gateway
