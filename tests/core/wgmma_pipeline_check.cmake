# Compiles the grouped GEMM's wgmma kernels (core/cuda/grouped_gemm_wgmma.cu
# and the warp-specialized grouped_gemm_wgmma_ws.cu) for sm_90a with
# ptxas' report on, and fails when ptxas says it serialized wgmma instructions
# (C7515: "wgmma.mma_async instructions are serialized ..."), which silently
# costs the grouped GEMMs their pipelining, or when a kernel spills (the
# warp-specialized loaders run on 48 registers). No GPU needed: the
# compiler decides.
# cmake -DNVCC=... -DSOURCE_DIR=... -DINCLUDES="a|b" -DOUT=... -P this
string(REPLACE "|" ";" includes "${INCLUDES}")
set(include_flags)
foreach(dir IN LISTS includes)
  if(dir)
    list(APPEND include_flags "-I${dir}")
  endif()
endforeach()
set(total 0)
foreach(file grouped_gemm_wgmma.cu grouped_gemm_wgmma_ws.cu)
  execute_process(
    COMMAND "${NVCC}" -std=c++17 -O3 -DNDEBUG -DSCALEMOE_CUDA=1 -DSCALEMOE_HAVE_SM90A=1
            "--generate-code=arch=compute_90a,code=[sm_90a]" -Xptxas -v "-I${SOURCE_DIR}"
            ${include_flags} -x cu -c "${SOURCE_DIR}/core/cuda/${file}" -o "${OUT}"
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "nvcc failed on ${file} (${rc}):\n${out}\n${err}")
  endif()
  string(REGEX MATCHALL "C7515[^\n]*" serialized "${out}\n${err}")
  list(LENGTH serialized count)
  if(count GREATER 0)
    list(GET serialized 0 first)
    message(FATAL_ERROR "${file}: ptxas serialized the wgmma instructions of ${count} kernel(s) "
                        "(accumulator registers defined by other instructions while MMAs are "
                        "in flight), e.g.:\n${first}")
  endif()
  string(REGEX MATCHALL "[1-9][0-9]* bytes spill stores" spills "${out}\n${err}")
  list(LENGTH spills spilled)
  if(spilled GREATER 0)
    list(GET spills 0 first)
    message(FATAL_ERROR "${file}: ${spilled} kernel(s) spill registers, e.g. ${first}")
  endif()
  string(REGEX MATCHALL "Compiling entry function" kernels "${err}\n${out}")
  list(LENGTH kernels compiled)
  if(compiled EQUAL 0)
    message(FATAL_ERROR "${file}: no kernel compiled: ptxas' report is missing\n${err}")
  endif()
  math(EXPR total "${total} + ${compiled}")
endforeach()
message(STATUS "wgmma pipelines: ${total} kernels, none serialized, none spilling")
