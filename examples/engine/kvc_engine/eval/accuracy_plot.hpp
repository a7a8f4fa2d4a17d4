#pragma once
/// \file
/// \brief The accuracy-against-ratio plot of `kvcompress-eval`: a gnuplot data file and script written next
/// to the results (so the plot can be restyled and redrawn by hand), then drawn to PNG by gnuplot if it is
/// installed.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kvcompress/core/error.hpp"

namespace kvc_engine {

struct PlotSeries {
  std::string name;        // one word: it is the data file's column header
  std::vector<double> y;   // [ratios]
};

namespace detail {

/// The text as one single-quoted shell word.
inline std::string shell_quote(std::string const& s) {
  std::string out = "'";
  for (char const ch : s) out += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return out + "'";
}

}  // namespace detail

/// \brief Writes `<dir>/accuracy.dat` (a column of ratios in increasing order, one column per series) and `<dir>/accuracy.gp`
/// (one line per series, `reference` as a horizontal line), then runs gnuplot there to draw
/// `<dir>/accuracy.png`. Returns false, and says why on stderr, when gnuplot is absent or fails.
inline bool write_accuracy_plot(std::string const& dir, std::vector<double> const& ratios,
                                std::vector<PlotSeries> const& series, double reference, std::string const& title) {
  namespace fs = std::filesystem;
  KVC_CHECK(!ratios.empty() && !series.empty(), "the plot needs at least one ratio and one series");
  KVC_CHECK(std::is_sorted(ratios.begin(), ratios.end()), "the plot's ratios must be in increasing order");
  {
    std::ofstream dat(fs::path(dir) / "accuracy.dat");
    KVC_CHECK(dat.good(), "cannot write " << (fs::path(dir) / "accuracy.dat").string());
    dat << "ratio";
    for (auto const& s : series) {
      KVC_CHECK(s.y.size() == ratios.size(), "plot series " << s.name << " has " << s.y.size() << " points for "
                                                            << ratios.size() << " ratios");
      KVC_CHECK(!s.name.empty() && s.name.find_first_of(" \t\"") == std::string::npos,
                "plot series name '" << s.name << "' must be one word");
      dat << ' ' << s.name;
    }
    dat << '\n';
    for (std::size_t i = 0; i < ratios.size(); ++i) {
      dat << ratios[i];
      for (auto const& s : series) dat << ' ' << s.y[i];
      dat << '\n';
    }
  }
  {
    std::ofstream gp(fs::path(dir) / "accuracy.gp");
    KVC_CHECK(gp.good(), "cannot write " << (fs::path(dir) / "accuracy.gp").string());
    std::string quoted_title;
    for (char const ch : title) quoted_title += ch == '"' ? std::string("\\\"") : std::string(1, ch);
    // noenhanced: press names hold underscores, which enhanced text would turn into subscripts.
    gp << "set terminal png noenhanced size 960,640\n"
       << "set output 'accuracy.png'\n"
       << "set title \"" << quoted_title << "\"\n"
       << "set xlabel 'compression ratio (fraction of the KV cache removed)'\n"
       << "set ylabel 'accuracy (mean over tasks)'\n"
       << "set yrange [0:1.05]\n"
       << "set xrange [" << ratios.front() - 0.03 << ":" << ratios.back() + 0.03 << "]\n"
       << "set grid\n"
       << "set key bottom left opaque box\n"
       << "set key autotitle columnheader\n"
       << "full = " << reference << "\n"
       << "plot for [i=2:" << series.size() + 1 << "] 'accuracy.dat' using 1:i with linespoints lw 2 pt i, \\\n"
       << "     full with lines lc rgb 'gray30' lw 1 title 'full cache'\n";
  }
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    std::fprintf(stderr, "gnuplot is not installed: wrote %s/accuracy.gp and accuracy.dat but no accuracy.png "
                         "(tools/install-deps.sh installs gnuplot-nox)\n", dir.c_str());
    return false;
  }
  std::string const command = "cd " + detail::shell_quote(dir) + " && gnuplot accuracy.gp";
  if (std::system(command.c_str()) != 0) {
    std::fprintf(stderr, "gnuplot failed on %s/accuracy.gp: no accuracy.png\n", dir.c_str());
    return false;
  }
  return true;
}

}  // namespace kvc_engine
