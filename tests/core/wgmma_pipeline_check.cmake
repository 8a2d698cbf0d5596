# Compiles core/cuda/grouped_gemm_wgmma.cu for sm_90a with ptxas' report on
# and fails when ptxas says it serialized wgmma instructions (C7515: "wgmma
# .mma_async instructions are serialized ..."), which silently costs the
# grouped GEMMs their pipelining (no GPU needed: the compiler decides).
# cmake -DNVCC=... -DSOURCE_DIR=... -DINCLUDES="a|b" -DOUT=... -P this
string(REPLACE "|" ";" includes "${INCLUDES}")
set(include_flags)
foreach(dir IN LISTS includes)
  if(dir)
    list(APPEND include_flags "-I${dir}")
  endif()
endforeach()
execute_process(
  COMMAND "${NVCC}" -std=c++17 -O3 -DNDEBUG -DSCALEMOE_CUDA=1 -DSCALEMOE_HAVE_SM90A=1
          "--generate-code=arch=compute_90a,code=[sm_90a]" -Xptxas -v "-I${SOURCE_DIR}"
          ${include_flags} -x cu -c "${SOURCE_DIR}/core/cuda/grouped_gemm_wgmma.cu" -o "${OUT}"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "nvcc failed (${rc}):\n${out}\n${err}")
endif()
string(REGEX MATCHALL "C7515[^\n]*" serialized "${out}\n${err}")
list(LENGTH serialized count)
if(count GREATER 0)
  list(GET serialized 0 first)
  message(FATAL_ERROR "ptxas serialized the wgmma instructions of ${count} kernel(s) "
                      "(accumulator registers defined by other instructions while MMAs are "
                      "in flight), e.g.:\n${first}")
endif()
string(REGEX MATCHALL "Compiling entry function" kernels "${err}\n${out}")
list(LENGTH kernels compiled)
if(compiled EQUAL 0)
  message(FATAL_ERROR "no kernel compiled: ptxas' report is missing\n${err}")
endif()
message(STATUS "wgmma pipelines: ${compiled} kernels, none serialized")
