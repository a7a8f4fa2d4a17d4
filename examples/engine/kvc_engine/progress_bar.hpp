#pragma once
/// \file
/// \brief `ProgressBar`: one line on a stream, redrawn in place with `\r`: a bar, the percentage, the time
/// spent, the estimated time left and a short note. Redraws are rate-limited (a log file, unlike a
/// terminal, keeps every one of them).

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

namespace kvc_engine {

class ProgressBar {
 public:
  using clock = std::chrono::steady_clock;

  /// \param min_interval_s shortest time between two redraws
  explicit ProgressBar(std::FILE* out, double min_interval_s = 0.1)
      : out_(out), min_interval_s_(min_interval_s), start_(clock::now()), last_(start_ - std::chrono::hours(1)) {}

  /// \brief Shows `fraction` ∈ [0, 1] done; the estimate assumes the rest goes at the average pace so far.
  void update(double fraction, std::string const& note) {
    auto const now = clock::now();
    if (std::chrono::duration<double>(now - last_).count() < min_interval_s_ && fraction < 1.0) return;
    last_ = now;
    fraction = std::clamp(fraction, 0.0, 1.0);
    double const spent = std::chrono::duration<double>(now - start_).count();
    int const width = 30, filled = static_cast<int>(fraction * width);
    std::string const bar = std::string(static_cast<std::size_t>(filled), '#') +
                            std::string(static_cast<std::size_t>(width - filled), '.');
    std::string const eta = fraction > 0.0 ? clock_time(spent * (1.0 - fraction) / fraction) : "--:--";
    std::fprintf(out_, "\r[%s] %3d%% %s, ETA %s  %-40.40s", bar.c_str(), static_cast<int>(fraction * 100.0),
                 clock_time(spent).c_str(), eta.c_str(), note.c_str());
    std::fflush(out_);
  }

  /// \brief Ends the line, so that later output starts on a fresh one.
  void finish() {
    std::fputc('\n', out_);
    std::fflush(out_);
  }

  /// \brief Seconds as m:ss (h:mm:ss from an hour on).
  static std::string clock_time(double seconds) {
    long const s = static_cast<long>(std::max(0.0, seconds) + 0.5);
    char buf[32];
    if (s >= 3600)
      std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
      std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
    return buf;
  }

 private:
  std::FILE* out_;
  double min_interval_s_;
  clock::time_point start_, last_;
};

}  // namespace kvc_engine
