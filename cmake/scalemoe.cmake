# Helpers shared by every folder's CMakeLists.txt.

# scalemoe_library(NAME SOURCES ... DEPS ...): one static library per folder,
# with our warnings and the repository root on the include path.
function(scalemoe_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${SCALEMOE_WARNINGS}>)
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
endfunction()

# Environment of every test that starts MPI: root may run mpirun, more ranks
# than cores. Under the sanitizers LeakSanitizer stays on for every other
# test, but not here: Open MPI's own start-up allocations (some in plugins it
# unloads at finalize, so unsuppressible by name) are reported as leaks.
set(SCALEMOE_MPI_TEST_ENV
    "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1")
if(SCALEMOE_SANITIZE)
  string(APPEND SCALEMOE_MPI_TEST_ENV ";ASAN_OPTIONS=detect_leaks=0")
endif()

# scalemoe_test(NAME SOURCES ... DEPS ... LABELS ... [MPI_RANKS n]): one
# GoogleTest binary registered with CTest. With MPI_RANKS the test runs under
# mpirun with that many ranks (--oversubscribe: CI has 2 cores).
function(scalemoe_test name)
  cmake_parse_arguments(ARG "" "MPI_RANKS;TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${SCALEMOE_WARNINGS}>)
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock)
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 600)
  endif()
  if(ARG_MPI_RANKS)
    target_link_libraries(${name} PRIVATE GTest::gtest)
    add_test(NAME ${name}
             COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${ARG_MPI_RANKS}
                     --oversubscribe $<TARGET_FILE:${name}>)
    # One mpirun at a time: two launched at the same instant have been seen to
    # fail at start-up (0.04 s, no test output) on the 2-core CI machine.
    set_tests_properties(${name} PROPERTIES ENVIRONMENT "${SCALEMOE_MPI_TEST_ENV}"
                         RESOURCE_LOCK mpirun)
  else()
    target_link_libraries(${name} PRIVATE GTest::gtest_main)
    add_test(NAME ${name} COMMAND ${name})
  endif()
  set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT}
                       WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  if("gpu" IN_LIST ARG_LABELS)
    # Without a GPU the test skips itself: CTest reports it skipped, not passed.
    set_tests_properties(${name} PROPERTIES SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]")
  endif()
endfunction()
