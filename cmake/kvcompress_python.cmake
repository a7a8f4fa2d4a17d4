# The Python package (python/) in the repository's build: built when a Python interpreter with
# nanobind is found (KVC_BUILD_PYTHON=AUTO) or required (ON). The interpreter is KVC_PYTHON, by
# default the environment tools/python/setup_env.sh creates (the first command runs it).
set(KVC_BUILD_PYTHON "AUTO" CACHE STRING "Build the Python package and its tests: ON, OFF, or AUTO (when KVC_PYTHON has nanobind)")
set_property(CACHE KVC_BUILD_PYTHON PROPERTY STRINGS ON OFF AUTO)
if(DEFINED ENV{KVC_PYTHON_VENV} AND NOT "$ENV{KVC_PYTHON_VENV}" STREQUAL "")
  set(kvc_python_default "$ENV{KVC_PYTHON_VENV}/bin/python")
else()
  set(kvc_python_default "$ENV{HOME}/.cache/kvcompress-golden-venv/bin/python")
endif()
set(KVC_PYTHON "${kvc_python_default}" CACHE FILEPATH "Python interpreter for the Python package and its tests")

# AUTO builds it with the tests only: the package is for its tests here (pip builds it for users). The
# sanitizer presets turn it off: an instrumented module cannot load into an uninstrumented Python.
set(KVC_PYTHON_ENABLED OFF)
if(KVC_BUILD_PYTHON STREQUAL "ON" OR (KVC_BUILD_PYTHON STREQUAL "AUTO" AND KVC_BUILD_TESTS))
  set(kvc_python_ok OFF)
  if(EXISTS "${KVC_PYTHON}")
    execute_process(COMMAND "${KVC_PYTHON}" -c "import nanobind, numpy, pytest"
                    RESULT_VARIABLE kvc_python_rc OUTPUT_QUIET ERROR_QUIET)
    if(kvc_python_rc EQUAL 0)
      set(kvc_python_ok ON)
    endif()
  endif()
  if(kvc_python_ok)
    set(Python_EXECUTABLE "${KVC_PYTHON}")
    set(KVC_PYTHON_ENABLED ON)
  elseif(KVC_BUILD_PYTHON STREQUAL "ON")
    message(FATAL_ERROR "KVC_BUILD_PYTHON=ON but ${KVC_PYTHON} cannot import nanobind, numpy and pytest "
                        "(run tools/python/setup_env.sh, or set KVC_PYTHON)")
  else()
    message(STATUS "kvcompress: no Python with nanobind, numpy and pytest at ${KVC_PYTHON}; the Python package and "
                   "its tests are not built (tools/python/setup_env.sh makes one)")
  endif()
endif()
