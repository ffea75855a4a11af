#include <catch2/catch.hpp>

#include "gateway/accounting/money.hpp"

using namespace tollgate::gateway;

TEST_CASE("money prints in fixed notation with sensible precision", "[money]") {
  CHECK(format_money(0) == "0.00");
  CHECK(format_money(12.3456) == "12.35");
  CHECK(format_money(1234567.891) == "1234567.89");
  CHECK(format_money(3) == "3.00");
  CHECK(format_money(0.5) == "0.50");
  CHECK(format_money(0.123) == "0.12");
  CHECK(format_money(0.0999) == "0.10");
  CHECK(format_money(0.0123) == "0.012");
  CHECK(format_money(0.00003) == "0.00003");
  CHECK(format_money(3e-05) == "0.00003");
  CHECK(format_money(0.0000346) == "0.000035");
  CHECK(format_money(1e-10) == "0.0000000001");
  CHECK(format_money(1e-12) == "0.00");
  CHECK(format_money(-0.25) == "-0.25");
  CHECK(format_money(-1e-13) == "0.00");
}

TEST_CASE("amounts print as written", "[money]") {
  CHECK(format_amount(50) == "50");
  CHECK(format_amount(2500.5) == "2500.5");
  CHECK(format_amount(0.00005) == "0.00005");
  CHECK(format_amount(0) == "0");
}
