#pragma once
/// \file
/// \brief `ProgressBar`: a bar, the percentage, the time spent, the estimated time left and a short note.
/// On a terminal it is one line redrawn in place with `\r` (rate-limited); elsewhere (a log file, a pipe,
/// CI) a log would keep every `\r` frame glued into one line, so it prints one line per percent instead.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include <unistd.h>

namespace kvc_engine {

class ProgressBar {
 public:
  using clock = std::chrono::steady_clock;

  enum class Style {
    kRedraw,  ///< one line rewritten in place, at most once per `min_interval_s`
    kLines,   ///< a new line each time the whole percentage advances: at most 101 lines, never a `\r`
  };

  /// \brief kRedraw when `out` is a terminal, kLines otherwise.
  [[nodiscard]] static Style style_for(std::FILE* out) { return ::isatty(::fileno(out)) ? Style::kRedraw : Style::kLines; }

  /// \param min_interval_s shortest time between two redraws (kRedraw only)
  ProgressBar(std::FILE* out, Style style, double min_interval_s = 0.1)
      : out_(out), style_(style), min_interval_s_(min_interval_s), start_(clock::now()),
        last_(start_ - std::chrono::hours(1)) {}

  /// \brief Shows `fraction` ∈ [0, 1] done; the estimate assumes the rest goes at the average pace so far.
  void update(double fraction, std::string const& note) {
    auto const now = clock::now();
    fraction = std::clamp(fraction, 0.0, 1.0);
    int const percent = static_cast<int>(fraction * 100.0);
    if (style_ == Style::kLines) {
      if (percent <= last_percent_) return;
    } else if (std::chrono::duration<double>(now - last_).count() < min_interval_s_ && fraction < 1.0) {
      return;
    }
    last_ = now;
    last_percent_ = percent;
    double const spent = std::chrono::duration<double>(now - start_).count();
    int const width = 30, filled = static_cast<int>(fraction * width);
    std::string const bar = std::string(static_cast<std::size_t>(filled), '#') +
                            std::string(static_cast<std::size_t>(width - filled), '.');
    std::string const eta = fraction > 0.0 ? clock_time(spent * (1.0 - fraction) / fraction) : "--:--";
    if (style_ == Style::kLines)
      std::fprintf(out_, "[%s] %3d%% %s, ETA %s  %s\n", bar.c_str(), percent, clock_time(spent).c_str(), eta.c_str(),
                   note.c_str());
    else
      std::fprintf(out_, "\r[%s] %3d%% %s, ETA %s  %-40.40s", bar.c_str(), percent, clock_time(spent).c_str(),
                   eta.c_str(), note.c_str());
    std::fflush(out_);
  }

  /// \brief Ends the redrawn line, so that later output starts on a fresh one (kLines: every line is ended).
  void finish() {
    if (style_ == Style::kLines) return;
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
  Style style_;
  double min_interval_s_;
  clock::time_point start_, last_;
  int last_percent_ = -1;
};

}  // namespace kvc_engine
