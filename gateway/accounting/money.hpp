// Amounts of money as people read them: fixed notation, never an exponent.
#pragma once

#include <string>

namespace tollgate::gateway {

/// A spend or a price: two decimals from 1 up ("12.35"); below 1, two significant digits and at
/// least two decimals ("0.50", "0.12", "0.012", "0.00003"), down to 1e-10; "0.00" for nothing.
/// LLM requests cost fractions of a cent, so rounding them to cents would show nothing at all.
std::string format_money(double amount);

/// An amount as the user wrote it in a config or on the command line: no trailing zeros, no
/// exponent ("50", "2500.5", "0.00005").
std::string format_amount(double amount);

}  // namespace tollgate::gateway
