// Catch2 v2 (Debian 12's package) and v3 (newer distributions) behind one include.
#pragma once

#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
using Catch::Approx;  // v2 declares Approx globally; the tests spell it the same under both
#else
#include <catch2/catch.hpp>
#endif
