# kvc_generate --tensor-parallel RANKS under mpiexec against one process: the same generated tokens and
# the same cache size after the prefill press, for the presses that couple kv heads and a per-head one.
# -DGENERATE=<kvc_generate> -DMPIEXEC=<mpiexec> -DMODEL=<checkpoint folder> -DRANKS=<ranks, default 2>
if(NOT DEFINED RANKS)
  set(RANKS 2)
endif()
set(prompt "")
foreach(i RANGE 1 96)
  math(EXPR id "(${i} * 37 + 11) % 250 + 1")
  string(APPEND prompt "${id} ")
endforeach()
foreach(press adakv tova pyramidkv snapkv)
  set(args --model ${MODEL} --prompt "${prompt}" --press ${press} --ratio 0.5 --max-new-tokens 6 --threads 1)
  execute_process(COMMAND ${GENERATE} ${args} RESULT_VARIABLE rc1 OUTPUT_VARIABLE one ERROR_VARIABLE one_err
                  TIMEOUT 60)
  execute_process(COMMAND ${MPIEXEC} -n ${RANKS} ${GENERATE} ${args} --tensor-parallel ${RANKS} RESULT_VARIABLE rc2
                  OUTPUT_VARIABLE two ERROR_VARIABLE two_err TIMEOUT 60)
  if(NOT rc1 EQUAL 0 OR NOT rc2 EQUAL 0)
    message(FATAL_ERROR "${press}: one process exited ${rc1} (${one_err}), ${RANKS} ranks ${rc2} (${two_err})")
  endif()
  string(REGEX MATCH "cache after prefill [0-9]+ bytes" bytes1 "${one_err}")
  string(REGEX MATCH "cache after prefill [0-9]+ bytes" bytes2 "${two_err}")
  if(NOT one STREQUAL two OR NOT bytes1 STREQUAL bytes2 OR bytes1 STREQUAL "")
    message(FATAL_ERROR "${press}: one process gave '${one}' (${bytes1}), ${RANKS} ranks '${two}' (${bytes2})")
  endif()
  string(STRIP "${one}" one)
  message(STATUS "${press}: ${one} (${bytes1}) on 1 and ${RANKS} ranks")
endforeach()
