#include "local_engine/scheduler.hpp"

#include <algorithm>
#include <exception>
#include <optional>
#include <stdexcept>

namespace tollgate::engine {

namespace {
/// A priority's slot in the statistics: 0 to 9.
std::size_t priority_slot(int priority) { return static_cast<std::size_t>(std::clamp(priority, 0, 9)); }
using clock_type = std::chrono::steady_clock;
constexpr auto rate_window = std::chrono::seconds(5);
constexpr const char* displaced_message = "displaced from the engine's full queue by a request of higher priority";
}  // namespace

scheduler::scheduler(forward_backend& backend, const model_config& config, const scheduler_options& options)
    : backend_(backend), config_(config), opts_(options), blocks_(backend.kv_pool().blocks, backend.kv_pool().block_size, options.prefix_caching) {
  if (opts_.max_batch < 1) throw std::invalid_argument("max_batch must be >= 1");
  if (opts_.max_batch_tokens < 1) throw std::invalid_argument("max_batch_tokens must be >= 1");
  stats_.kv_blocks_total = blocks_.total();
  stats_.kv_blocks_free = blocks_.total();
  stats_.kv_block_size = blocks_.block_size();
  thread_ = std::thread([this] { run(); });
}

scheduler::~scheduler() {
  {
    std::lock_guard lock(m_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::shared_ptr<sched_sequence> scheduler::submit(sched_request r) {
  auto s = std::make_shared<sched_sequence>();
  s->submitted = clock_type::now();
  s->tokens = r.prompt;
  s->req = std::move(r);
  bool refused = false;  // the queue is full and nothing below s can make room
  std::size_t waiting_beyond = 0;
  {
    std::lock_guard lock(m_);
    if (stop_) throw std::runtime_error("the engine is stopping");
    if (in_flight_ >= opts_.max_batch && in_flight_ - opts_.max_batch >= s->req.max_queue) {
      // Full: shed from the bottom, the oldest waiter of the lowest priority below the newcomer's.
      auto victim = unadmitted_.end();
      for (auto it = unadmitted_.begin(); it != unadmitted_.end(); ++it) {
        if ((*it)->req.priority < s->req.priority &&
            (victim == unadmitted_.end() || (*it)->req.priority < (*victim)->req.priority))
          victim = it;
      }
      if (victim != unadmitted_.end()) {
        (*victim)->shed = true;
        unadmitted_.erase(victim);
        --in_flight_;
        ++signals_;
      } else {
        refused = true;
        waiting_beyond = in_flight_ - opts_.max_batch;
      }
    }
    if (!refused) {
      s->id = next_id_++;
      ++in_flight_;
      unadmitted_.push_back(s);
      incoming_.push_back(s);
      ++signals_;
    }
  }
  if (refused) {
    {
      std::lock_guard lock(stats_m_);
      ++stats_.refused;
      ++stats_.shed_by_priority[priority_slot(s->req.priority)][0];
    }
    throw queue_full("the engine's queue is full: " + std::to_string(waiting_beyond) +
                     " sequences wait beyond its batch of " + std::to_string(opts_.max_batch) +
                     ", none of lower priority than " + std::to_string(s->req.priority));
  }
  {
    std::lock_guard lock(stats_m_);
    ++stats_.waiting;
  }
  cv_.notify_all();
  return s;
}

void scheduler::signal() {
  {
    std::lock_guard lock(m_);
    ++signals_;
  }
  cv_.notify_all();
}

void scheduler::cancel(sched_sequence& s) {
  s.cancel_requested.store(true);
  signal();
}

void scheduler::grant(sched_sequence& s, std::size_t n) {
  s.credit.fetch_add(n);
  signal();
}

engine_stats scheduler::stats() const {
  std::lock_guard lock(stats_m_);
  engine_stats st = stats_;
  st.kv_blocks_free = blocks_.free();
  st.kv_blocks_used = blocks_.total() - st.kv_blocks_free;
  st.kv_blocks_cached = blocks_.cached();
  // Tokens forwarded by the steps that started within the window, over the time since the first of them.
  const auto now = clock_type::now();
  std::size_t tokens = 0;
  std::optional<clock_type::time_point> first;
  for (const auto& [t, n] : recent_) {
    if (now - t > rate_window) continue;
    if (!first) first = t;
    tokens += n;
  }
  if (first) st.tokens_per_s = static_cast<double>(tokens) / std::max(std::chrono::duration<double>(now - *first).count(), 1e-3);
  return st;
}

void scheduler::run() {
  std::uint64_t seen = 0;
  bool progressed = false;
  for (;;) {
    {
      std::unique_lock lock(m_);
      const auto ready = [&] { return stop_ || signals_ != seen || progressed; };
      // A sequence's queue_timeout passes even when nothing else happens.
      if (queue_deadline_) cv_.wait_until(lock, *queue_deadline_, ready);
      else cv_.wait(lock, ready);
      if (stop_) break;
      seen = signals_;
      for (auto& s : incoming_) enqueue(std::move(s), false);
      incoming_.clear();
    }
    progressed = step();
  }
  {
    std::lock_guard lock(m_);
    for (auto& s : incoming_) waiting_.push_back(std::move(s));
    incoming_.clear();
  }
  for (auto& s : running_) end(*s, stream_end::failed, "the engine stopped");
  for (auto& s : waiting_) end(*s, stream_end::failed, "the engine stopped");
  sweep();
  flush_ends();
}

bool scheduler::eligible(const sched_sequence& s) const { return !s.req.paced || s.credit.load() > 0; }

void scheduler::end(sched_sequence& s, stream_end reason, const std::string& message) {
  if (s.ended) return;
  s.ended = true;
  blocks_.release(s.id);
  {
    std::lock_guard lock(m_);
    if (!s.shed) --in_flight_;  // a displaced one left the count when it was displaced
    if (s.admitted_at == 0) std::erase_if(unadmitted_, [&](const auto& u) { return u.get() == &s; });
  }
  {
    std::lock_guard lock(stats_m_);
    if (reason == stream_end::cancelled) ++stats_.cancelled;
    else if (reason == stream_end::failed) ++stats_.failed;
    else if (reason == stream_end::overloaded) {
      ++stats_.overloaded;
      ++stats_.shed_by_priority[priority_slot(s.req.priority)][s.shed ? 1 : 2];
    } else {
      ++stats_.finished;
    }
  }
  // Called once the step's bookkeeping is done, so that what on_end's caller then reads (stats,
  // free blocks) already counts this end.
  if (s.req.callbacks.on_end) ends_.push_back([cb = std::move(s.req.callbacks.on_end), reason, message] { cb(reason, message); });
}

void scheduler::flush_ends() {
  auto ends = std::move(ends_);
  ends_.clear();
  for (auto& f : ends) {
    try {
      f();
    } catch (...) {
      // A consumer's failure must not stop the engine; the sequence is over either way.
    }
  }
}

bool scheduler::step() {
  const bool progressed = step_once();
  flush_ends();
  return progressed;
}

std::int64_t scheduler::rank(const sched_sequence& s) const {
  std::int64_t r = s.req.priority;
  if (opts_.priority_aging.count() > 0 && step_now_ > s.submitted) r += (step_now_ - s.submitted) / opts_.priority_aging;
  return r;
}

std::shared_ptr<sched_sequence> scheduler::lowest_running() const {
  std::shared_ptr<sched_sequence> victim;
  std::int64_t lowest = 0;
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    if ((*it)->ended) continue;
    if (const std::int64_t r = rank(**it); !victim || r < lowest) {
      victim = *it;
      lowest = r;
    }
  }
  return victim;
}

void scheduler::preempt(const std::shared_ptr<sched_sequence>& victim) {
  std::erase(running_, victim);
  blocks_.release(victim->id);
  victim->computed = 0;
  enqueue(victim, true);
  std::lock_guard lock(stats_m_);
  ++stats_.preemptions;
}

void scheduler::enqueue(std::shared_ptr<sched_sequence> s, bool first_of_priority) {
  const int p = s->req.priority;
  auto at = std::find_if(waiting_.begin(), waiting_.end(), [&](const auto& w) {
    return first_of_priority ? w->req.priority <= p : w->req.priority < p;
  });
  waiting_.insert(at, std::move(s));
}

bool scheduler::expire_waiting() {
  bool expired = false;
  queue_deadline_.reset();
  for (auto& s : waiting_) {
    if (s->ended || s->admitted_at != 0 || s->req.queue_timeout.count() <= 0) continue;
    const auto deadline = s->submitted + s->req.queue_timeout;
    if (deadline <= step_now_) {
      end(*s, stream_end::overloaded,
          "the request waited its queue_timeout (" + std::to_string(s->req.queue_timeout.count()) +
              " ms) for a place in the engine's batch");
      expired = true;
    } else if (!queue_deadline_ || deadline < *queue_deadline_) {
      queue_deadline_ = deadline;
    }
  }
  return expired;
}

void scheduler::sweep() {
  std::erase_if(running_, [](const auto& s) { return s->ended; });
  std::erase_if(waiting_, [](const auto& s) { return s->ended; });
  std::lock_guard lock(stats_m_);
  stats_.running = running_.size();
  std::size_t incoming = 0;
  stats_.waiting_by_priority.fill(0);
  for (const auto& s : waiting_) ++stats_.waiting_by_priority[priority_slot(s->req.priority)];
  {
    std::lock_guard l2(m_);
    incoming = incoming_.size();
    for (const auto& s : incoming_) ++stats_.waiting_by_priority[priority_slot(s->req.priority)];
  }
  stats_.waiting = waiting_.size() + incoming;
}

bool scheduler::step_once() {
  bool progressed = false;
  step_now_ = clock_type::now();
  // (1) Cancellations, and sequences that want nothing.
  for (auto& s : running_)
    if (s->cancel_requested.load()) {
      end(*s, stream_end::cancelled);
      progressed = true;
    }
  for (auto& s : waiting_) {
    if (s->cancel_requested.load()) {
      end(*s, stream_end::cancelled);
      progressed = true;
    } else if (s->shed.load()) {
      end(*s, stream_end::overloaded, displaced_message);
      progressed = true;
    } else if (s->req.max_tokens == 0 && !s->req.all_logits) {
      end(*s, stream_end::length);
      progressed = true;
    }
  }
  sweep();

  // (2) Running sequences, oldest first: decode tokens, then the next chunks of prompts being
  // prefilled, so that a long prompt never holds up the decoding ones.
  std::vector<planned> plan;
  std::size_t budget = opts_.max_batch_tokens;
  // A preempted sequence leaves this step's plan, and its tokens go back to the budget.
  auto unplan = [&](const std::shared_ptr<sched_sequence>& victim) {
    std::erase_if(plan, [&](const planned& p) {
      if (p.seq != victim) return false;
      budget += p.n;
      return true;
    });
  };
  // Plans s; false when s yielded its place (the rest of this pass is gone too).
  auto plan_running = [&](const std::shared_ptr<sched_sequence>& s) {
    const std::size_t k = std::min(s->tokens.size() - s->computed, budget);
    if (k == 0) return true;
    // Short of blocks: the running sequence of the lowest priority (the most recently admitted
    // among equals) yields, which may be s itself.
    while (blocks_.missing(s->id, s->computed + k) > blocks_.free()) {
      auto victim = lowest_running();
      if (victim == s) {
        if (running_.size() > 1) {
          preempt(s);
          return false;
        }
        break;
      }
      unplan(victim);
      preempt(victim);
    }
    if (!blocks_.reserve(s->id, s->computed + k)) {
      // Alone and still short: the pool cannot hold this sequence.
      end(*s, stream_end::failed,
          "the sequence needs " + std::to_string(blocks_.blocks_for(s->computed + k)) + " KV blocks; the pool holds " +
              std::to_string(blocks_.total()) + " (raise kv_cache_memory)");
      progressed = true;
      return true;
    }
    plan.push_back({s, k});
    budget -= k;
    return true;
  };
  for (const bool decode : {true, false}) {
    for (std::size_t i = 0; i < running_.size() && budget > 0; ++i) {
      auto s = running_[i];
      if (s->ended || !eligible(*s) || (s->tokens.size() - s->computed == 1) != decode) continue;
      if (!plan_running(s)) break;
    }
  }
  sweep();

  // (3) Admission, in order. A paced sequence waiting for its first step() does not hold others up.
  if (opts_.priority_aging.count() > 0 && waiting_.size() > 1) {
    // Aged ranks: the queue is in priority order, first come first within one; a long waiter
    // moves up past later sequences of higher priority.
    std::stable_sort(waiting_.begin(), waiting_.end(), [&](const auto& a, const auto& b) { return rank(*a) > rank(*b); });
  }
  for (std::size_t i = 0; i < waiting_.size() && budget > 0 && running_.size() < opts_.max_batch;) {
    auto s = waiting_[i];
    if (!eligible(*s)) {
      ++i;
      continue;
    }
    const std::size_t prompt_blocks = blocks_.blocks_for(s->tokens.size());
    if (prompt_blocks > blocks_.total()) {
      end(*s, stream_end::failed,
          "the prompt of " + std::to_string(s->tokens.size()) + " tokens needs " + std::to_string(prompt_blocks) +
              " KV blocks; the pool holds " + std::to_string(blocks_.total()) + " (raise kv_cache_memory)");
      waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
      progressed = true;
      continue;
    }
    // The cached full blocks the prompt starts with; the block of its last position is always
    // computed (it gives the logits to sample from, and a shared block is never written).
    // forward_logits() wants every position's logits, so it computes everything.
    kv_block_allocator::prefix_match hit;
    if (blocks_.prefix_caching() && !s->req.all_logits)
      hit = blocks_.find_prefix(s->tokens, (s->tokens.size() - 1) / static_cast<std::size_t>(blocks_.block_size()));
    // Room for the whole prompt and the position of its first generated token, so that a sequence
    // is not preempted by its own first decode step. Cached blocks that no sequence holds leave
    // the free count when they are attached.
    const std::size_t need = std::min(blocks_.blocks_for(s->tokens.size() + 1), blocks_.total()) - hit.blocks.size() + hit.unreferenced;
    // Short of blocks: running sequences of lower priority yield (lowest first, newest first);
    // otherwise it waits, and so does everything after it.
    while (need > blocks_.free()) {
      auto victim = lowest_running();
      if (!victim || rank(*victim) >= rank(*s)) break;
      unplan(victim);
      preempt(victim);
    }
    if (need > blocks_.free()) break;
    {
      // Taken out of the displaceable ones, unless submit() displaced it a moment ago.
      std::unique_lock lock(m_);
      if (s->shed.load()) {
        lock.unlock();
        end(*s, stream_end::overloaded, displaced_message);
        waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
        progressed = true;
        continue;
      }
      std::erase(unadmitted_, s);
    }
    s->computed = blocks_.attach_prefix(s->id, hit);
    blocks_.reserve(s->id, s->tokens.size());
    if (blocks_.prefix_caching() && !s->req.all_logits) {
      std::lock_guard lock(stats_m_);
      stats_.prefix_cache_lookup_tokens += s->tokens.size();
      stats_.prefix_cache_hit_tokens += s->computed;
    }
    s->admitted_at = ++admissions_;
    running_.push_back(s);
    waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
    const std::size_t k = std::min(s->tokens.size() - s->computed, budget);
    plan.push_back({s, k});
    budget -= k;
  }
  // After the admissions, so that a waiter at its deadline that found room (aging helps) runs.
  if (expire_waiting()) progressed = true;
  sweep();
  if (plan.empty()) return progressed;

  // (4) One forward.
  std::vector<batch_item> items(plan.size());
  std::size_t batch_tokens = 0, prompt_tokens = 0;
  for (std::size_t i = 0; i < plan.size(); ++i) {
    auto& s = *plan[i].seq;
    batch_item& it = items[i];
    it.tokens = std::span<const int32_t>(s.tokens.data() + s.computed, plan[i].n);
    it.start = s.computed;
    it.blocks = blocks_.table(s.id);
    const bool last = s.computed + plan[i].n == s.tokens.size();
    if (last && s.generated < s.req.max_tokens) {
      it.sample = &s.req.sample;
      it.draw = s.generated;
      it.logits = static_cast<bool>(s.req.callbacks.on_logits);
    }
    if (s.req.all_logits) {
      it.logits = true;
      it.all_positions = true;
    }
    batch_tokens += plan[i].n;
    // Positions before the newest generated token are prompt (or its recomputation).
    const std::size_t fed_prompt = s.tokens.size() - s.generated;
    if (s.computed < fed_prompt) prompt_tokens += std::min(plan[i].n, fed_prompt - s.computed);
  }
  const auto started = clock_type::now();
  try {
    backend_.forward(items, result_);
  } catch (const std::exception& e) {
    for (auto& p : plan) end(*p.seq, stream_end::failed, std::string("the forward failed: ") + e.what());
    sweep();
    return true;
  }
  std::size_t generated = 0;
  const std::size_t V = static_cast<std::size_t>(config_.vocab_size);
  std::size_t logit_at = 0;
  for (std::size_t i = 0; i < plan.size(); ++i) {
    auto& s = *plan[i].seq;
    const batch_item& it = items[i];
    s.computed += plan[i].n;
    if (!s.ended) blocks_.commit(s.id, s.tokens, s.computed);
    const std::size_t nl = it.logits ? (it.all_positions ? plan[i].n : 1) : 0;
    const std::span<const float> logits(result_.logits.data() + logit_at * V, nl * V);
    logit_at += nl;
    if (s.ended) continue;
    try {
      if (s.req.all_logits && s.req.callbacks.on_logits && s.computed > s.logits_sent) {
        // After a preemption the recomputed positions were sent already: only the new ones go.
        const std::size_t from = std::max(s.logits_sent, it.start);
        s.req.callbacks.on_logits(logits.subspan((from - it.start) * V));
        s.logits_sent = s.computed;
      }
      if (it.sample) {
        const int32_t token = result_.tokens[i];
        if (s.req.callbacks.on_logits && !s.req.all_logits) s.req.callbacks.on_logits(logits);
        s.tokens.push_back(token);
        ++s.generated;
        ++generated;
        if (s.req.paced) s.credit.fetch_sub(1);
        const bool more = !s.req.callbacks.on_token || s.req.callbacks.on_token(token);
        if (!more) end(s, stream_end::stopped);
        else if (s.generated >= s.req.max_tokens) end(s, stream_end::length);
        else if (s.tokens.size() > static_cast<std::size_t>(config_.max_position_embeddings)) end(s, stream_end::context_full);
      } else if (s.computed == s.tokens.size() && s.generated >= s.req.max_tokens) {
        end(s, stream_end::length);
      }
    } catch (const std::exception& e) {
      end(s, stream_end::failed, std::string("a callback failed: ") + e.what());
    }
  }
  sweep();
  {
    std::lock_guard lock(stats_m_);
    ++stats_.steps;
    stats_.last_batch_sequences = plan.size();
    stats_.last_batch_tokens = batch_tokens;
    stats_.prompt_tokens += prompt_tokens;
    stats_.generated_tokens += generated;
    const auto now = clock_type::now();
    recent_.emplace_back(started, batch_tokens);
    while (!recent_.empty() && now - recent_.front().first > rate_window) recent_.pop_front();
  }
  return true;
}

}  // namespace tollgate::engine
