// A hand-written upstream: a loopback listener that answers with whatever bytes a test gives,
// for answers no real server library would send.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace tollgate::test {

/// Reads one request (its head and a Content-Length body) from s, whole.
inline std::string read_request(boost::asio::ip::tcp::socket& s, boost::system::error_code& ec) {
  namespace net = boost::asio;
  std::string in;
  net::read_until(s, net::dynamic_buffer(in), "\r\n\r\n", ec);
  if (ec) return in;
  std::size_t length = 0;
  if (auto at = in.find("Content-Length: "); at != std::string::npos) length = std::stoul(in.substr(at + 16));
  const std::size_t head = in.find("\r\n\r\n") + 4;
  if (in.size() < head + length) net::read(s, net::dynamic_buffer(in), net::transfer_exactly(head + length - in.size()), ec);
  return in;
}

/// A listener on a loopback port that answers each connection with the bytes reply() gives for
/// the request it read (headers and a Content-Length body), then closes it.
class raw_server {
  using tcp = boost::asio::ip::tcp;

 public:
  explicit raw_server(std::function<std::string(const std::string&)> reply)
      : acceptor_(io_, tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0)), reply_(std::move(reply)) {
    thread_ = std::thread([this] {
      for (;;) {
        tcp::socket s(io_);
        boost::system::error_code ec;
        acceptor_.accept(s, ec);
        if (ec || stopping_) return;
        requests_.push_back(read_request(s, ec));
        const std::string& in = requests_.back();
        boost::asio::write(s, boost::asio::buffer(reply_(in)), ec);
        // The request was read whole, so closing now ends the connection cleanly (no reset).
        s.shutdown(tcp::socket::shutdown_send, ec);
        s.close(ec);
      }
    });
  }
  ~raw_server() {
    stopping_ = true;
    boost::system::error_code ec;
    tcp::socket poke(io_);
    poke.connect(acceptor_.local_endpoint(), ec);
    thread_.join();
  }
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port()) + "/v1"; }
  const std::vector<std::string>& requests() const { return requests_; }

 private:
  boost::asio::io_context io_;
  tcp::acceptor acceptor_;
  std::function<std::string(const std::string&)> reply_;
  std::vector<std::string> requests_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace tollgate::test
