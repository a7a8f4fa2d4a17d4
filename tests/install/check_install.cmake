# Installs the configured build tree into a fresh prefix, then configures, builds and runs the consumer
# project of tests/install/consumer (its main.cpp: examples/quickstart.cpp) as an outside project that only
# does find_package(kvcompress). The README shows that CMakeLists.txt: it must be the same text, so that the
# README cannot drift from what is tested.
file(REMOVE_RECURSE ${WORK_DIR})
set(consumer ${SOURCE_DIR}/tests/install/consumer/CMakeLists.txt)

file(READ ${SOURCE_DIR}/README.md readme)
file(READ ${consumer} listing)
string(FIND "${readme}" "```cmake\n${listing}```" at)
if(at EQUAL -1)
  message(FATAL_ERROR "README.md does not show tests/install/consumer/CMakeLists.txt verbatim in a ```cmake block; "
                      "update the README's \"Install\" section to the file's text:\n${listing}")
endif()

set(prefix ${WORK_DIR}/prefix)
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${prefix}
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed: ${rc}")
endif()
file(COPY ${consumer} DESTINATION ${WORK_DIR}/my_engine)
configure_file(${SOURCE_DIR}/examples/quickstart.cpp ${WORK_DIR}/my_engine/main.cpp COPYONLY)
execute_process(COMMAND ${CMAKE_COMMAND} -S ${WORK_DIR}/my_engine -B ${WORK_DIR}/build
                        -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "configuring the consumer against the installed package failed: ${rc}")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "building the consumer against the installed package failed: ${rc}")
endif()
execute_process(COMMAND ${WORK_DIR}/build/my_engine RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the consumer built against the installed package failed: ${rc}")
endif()
