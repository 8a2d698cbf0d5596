// Finding a Python with numpy for the tests that check our files with an
// independent reader (tests only). Debian's /usr/bin/python3 has it once
// scripts/setup.sh ran (python3-numpy); elsewhere the python3 on PATH may.
#pragma once

#include <cstdlib>
#include <string>

namespace scalemoe::testing {

// "/usr/bin/python3" or "python3", whichever imports numpy first; "" if none.
inline std::string PythonWithNumpy() {
  for (const char* python : {"/usr/bin/python3", "python3"}) {
    const std::string probe = std::string(python) + " -c 'import numpy' 2>/dev/null";
    if (std::system(probe.c_str()) == 0) return python;
  }
  return "";
}

}  // namespace scalemoe::testing
