#include "adapters/curl_multi.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <unistd.h>

namespace tollgate::adapters {

namespace net = boost::asio;

namespace {
// Deadlines further away than this go to the coarse tick; nearer ones get a precise timer.
constexpr auto precise_below = std::chrono::milliseconds(250);
constexpr auto tick_period = std::chrono::milliseconds(100);
}  // namespace

struct curl_multi::socket_state {
  socket_state(net::io_context& io, curl_socket_t s) : fd(s), descriptor(io, s) {}
  curl_socket_t fd;
  // Watches curl's socket without owning it. It stays registered with the reactor while curl
  // keeps the connection idle in its cache (want == 0), and is released in on_close_socket,
  // just before curl closes the descriptor.
  net::posix::stream_descriptor descriptor;
  int want = 0;
  bool reading = false;
  bool writing = false;
  bool removed = false;
};

namespace {
struct global_init {
  global_init() { curl_global_init(CURL_GLOBAL_DEFAULT); }
};
}  // namespace

curl_multi::curl_multi(net::io_context& io) : io_(io), timer_(io), tick_(io) {
  static global_init once;
  multi_ = curl_multi_init();
  curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &curl_multi::on_socket);
  curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
  curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &curl_multi::on_timer);
  curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
  // Room for many idle keep-alive connections per worker; HTTP/2 multiplexes where offered.
  curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, 512L);
  curl_multi_setopt(multi_, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
}

curl_multi::~curl_multi() {
  for (auto& [easy, _] : done_) curl_multi_remove_handle(multi_, easy);
  done_.clear();
  for (CURL* easy : pool_) curl_easy_cleanup(easy);
  curl_multi_cleanup(multi_);  // closes cached connections, calling on_socket with REMOVE
  for (auto& [fd, state] : sockets_) {  // sockets curl left open: stop watching, never close
    state->removed = true;
    state->descriptor.release();
  }
}

int curl_multi::on_close_socket(void* self_ptr, curl_socket_t fd) {
  auto* self = static_cast<curl_multi*>(self_ptr);
  if (auto it = self->sockets_.find(fd); it != self->sockets_.end()) {
    it->second->removed = true;
    it->second->descriptor.release();
    self->sockets_.erase(it);
  }
  return ::close(fd);
}

CURL* curl_multi::acquire() {
  if (!pool_.empty()) {
    CURL* easy = pool_.back();
    pool_.pop_back();
    return easy;
  }
  CURL* easy = curl_easy_init();
  // Every socket curl closes passes through us, so a parked descriptor never outlives its fd.
  curl_easy_setopt(easy, CURLOPT_CLOSESOCKETFUNCTION, &curl_multi::on_close_socket);
  curl_easy_setopt(easy, CURLOPT_CLOSESOCKETDATA, this);
  return easy;
}

void curl_multi::release(CURL* easy) {
  // No curl_easy_reset: every user sets the options it relies on, and the ones set once at
  // creation (above) stay.
  if (pool_.size() < 256) {
    pool_.push_back(easy);
  } else {
    curl_easy_cleanup(easy);
  }
}

void curl_multi::add(CURL* easy, std::function<void(CURLcode)> on_done) {
  done_[easy] = std::move(on_done);
  curl_multi_add_handle(multi_, easy);
}

void curl_multi::remove(CURL* easy) {
  if (done_.erase(easy) > 0) curl_multi_remove_handle(multi_, easy);
}

int curl_multi::on_socket(CURL*, curl_socket_t fd, int what, void* self_ptr, void*) {
  auto* self = static_cast<curl_multi*>(self_ptr);
  auto it = self->sockets_.find(fd);
  if (what == CURL_POLL_REMOVE) {
    // The connection went idle into curl's cache: park it. Cancelling the waits stays in process;
    // releasing and re-registering would cost two epoll_ctl calls per request.
    if (it != self->sockets_.end()) {
      it->second->want = 0;
      boost::system::error_code ignored;
      it->second->descriptor.cancel(ignored);
    }
    return 0;
  }
  if (it == self->sockets_.end()) {
    it = self->sockets_.emplace(fd, std::make_shared<socket_state>(self->io_, fd)).first;
  }
  it->second->want = what;
  self->arm(it->second);
  return 0;
}

void curl_multi::arm(const std::shared_ptr<socket_state>& state) {
  if (state->want == 0) return;
  if ((state->want & CURL_POLL_IN) && !state->reading) {
    state->reading = true;
    state->descriptor.async_wait(net::posix::stream_descriptor::wait_read,
                                 [this, state](boost::system::error_code ec) {
                                   state->reading = false;
                                   if (ec || state->removed || !(state->want & CURL_POLL_IN)) return;
                                   action(state->fd, CURL_CSELECT_IN);
                                   if (!state->removed) arm(state);
                                 });
  }
  if ((state->want & CURL_POLL_OUT) && !state->writing) {
    state->writing = true;
    state->descriptor.async_wait(net::posix::stream_descriptor::wait_write,
                                 [this, state](boost::system::error_code ec) {
                                   state->writing = false;
                                   if (ec || state->removed || !(state->want & CURL_POLL_OUT)) return;
                                   action(state->fd, CURL_CSELECT_OUT);
                                   if (!state->removed) arm(state);
                                 });
  }
}

int curl_multi::on_timer(CURLM*, long timeout_ms, void* self_ptr) {
  auto* self = static_cast<curl_multi*>(self_ptr);
  self->timer_.cancel();
  if (timeout_ms < 0) {
    self->deadline_ = std::chrono::steady_clock::time_point::max();
    return 0;
  }
  // Never call into curl from inside its own callback: even "now" is deferred, by a post.
  if (timeout_ms == 0) {
    self->deadline_ = std::chrono::steady_clock::time_point::max();
    if (!self->posted_) {
      self->posted_ = true;
      net::post(self->io_, [self] {
        self->posted_ = false;
        self->action(CURL_SOCKET_TIMEOUT, 0);
      });
    }
    return 0;
  }
  const auto wait = std::chrono::milliseconds(timeout_ms);
  if (wait < precise_below) {
    self->deadline_ = std::chrono::steady_clock::time_point::max();
    self->timer_.expires_after(wait);
    self->timer_.async_wait([self](boost::system::error_code ec) {
      if (!ec) self->action(CURL_SOCKET_TIMEOUT, 0);
    });
    return 0;
  }
  self->deadline_ = std::chrono::steady_clock::now() + wait;
  self->schedule_tick();
  return 0;
}

void curl_multi::schedule_tick() {
  if (tick_armed_) return;
  tick_armed_ = true;
  tick_.expires_after(tick_period);
  tick_.async_wait([this](boost::system::error_code ec) {
    tick_armed_ = false;
    if (ec) return;
    if (std::chrono::steady_clock::now() >= deadline_) {
      deadline_ = std::chrono::steady_clock::time_point::max();
      action(CURL_SOCKET_TIMEOUT, 0);
    }
    if (deadline_ != std::chrono::steady_clock::time_point::max() || !done_.empty()) schedule_tick();
  });
}

void curl_multi::action(curl_socket_t fd, int mask) {
  int running = 0;
  curl_multi_socket_action(multi_, fd, mask, &running);
  drain_messages();
}

void curl_multi::drain_messages() {
  int left = 0;
  while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL* easy = msg->easy_handle;
    const CURLcode result = msg->data.result;
    auto it = done_.find(easy);
    if (it == done_.end()) continue;
    auto on_done = std::move(it->second);
    done_.erase(it);
    curl_multi_remove_handle(multi_, easy);
    on_done(result);
  }
}

}  // namespace tollgate::adapters
