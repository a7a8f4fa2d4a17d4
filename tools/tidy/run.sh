#!/usr/bin/env bash
# clang-tidy (configuration: .clang-tidy) on the library headers, through a translation unit that
# instantiates every entry point. Any finding fails the script.
set -euo pipefail
cd "$(dirname "$0")/../.."
eigen=$(pkg-config --cflags-only-I eigen3 2>/dev/null || echo -I/usr/include/eigen3)
clang-tidy --quiet tools/tidy/instantiate.cpp -- -std=c++17 -Iinclude $eigen -pthread
echo "clang-tidy: no findings"
