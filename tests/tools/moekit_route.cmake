# Tests of tools/moekit-route (included from tools/moekit-route/CMakeLists.txt, so that they exist
# exactly when the tool does):
#   tools_moekit_route_test         Catch2: runs the tool end to end on files it writes and checks
#                                   ids/weights against ALGORITHMS.md §1.11 (and the library's own
#                                   CPU path for computed logits); --device emulate gives the same bits
#   tools_moekit_route_fixture      writes the inputs of the failure tests (a ctest fixture)
#   tools_moekit_route_fail_<case>  each error: exit status and one-line message through
#                                   cmake/ExpectFailure.cmake, and the output folder left untouched
set(moekit_route_dir ${CMAKE_CURRENT_LIST_DIR})
set(moekit_route_work ${CMAKE_CURRENT_BINARY_DIR}/moekit_route_test_work)

moekit_add_test(tools_moekit_route_test SOURCES ${moekit_route_dir}/moekit_route_test.cpp LABELS tools io)
target_compile_definitions(tools_moekit_route_test PRIVATE "MOEKIT_ROUTE_EXE=\"$<TARGET_FILE:moekit-route>\""
                                                           "MOEKIT_ROUTE_WORK_DIR=\"${moekit_route_work}\"")
add_dependencies(tools_moekit_route_test moekit-route)
if(TARGET moekit::emu)
  target_compile_definitions(tools_moekit_route_test PRIVATE MOEKIT_ROUTE_HAVE_EMU=1)
endif()

add_executable(moekit_route_fixture ${moekit_route_dir}/moekit_route_fixture.cpp)
target_link_libraries(moekit_route_fixture PRIVATE moekit::moekit moekit_dev_flags)
set(in ${CMAKE_CURRENT_BINARY_DIR}/moekit_route_inputs)
add_test(NAME tools_moekit_route_fixture COMMAND moekit_route_fixture ${in})
set_tests_properties(tools_moekit_route_fixture PROPERTIES FIXTURES_SETUP moekit_route_inputs LABELS "tools;io")

# moekit_route_failure(<name> <exit status> <mode existing|fresh> <regex> <tool args>...)
function(moekit_route_failure name status mode regex)
  set(out ${CMAKE_CURRENT_BINARY_DIR}/moekit_route_fail/${name})
  add_test(NAME tools_moekit_route_fail_${name}
           COMMAND ${CMAKE_COMMAND} -DOUT_DIR=${out} -DMODE=${mode} "-DEXPECT=${regex}" -DEXPECT_STATUS=${status}
                   -P ${moekit_route_dir}/expect_untouched.cmake -- $<TARGET_FILE:moekit-route> ${ARGN} --out ${out})
  set_tests_properties(tools_moekit_route_fail_${name} PROPERTIES FIXTURES_REQUIRED moekit_route_inputs
                       LABELS "tools;io" TIMEOUT 60)
endfunction()

set(mixtral --model-type mixtral --num_experts_per_tok 2)
# Command line (exit status 2).
moekit_route_failure(unknown_flag 2 existing "moekit-route: error: unknown option '--bogus'"
                     --logits ${in}/logits.npy ${mixtral} --bogus 1)
moekit_route_failure(flag_twice 2 existing "--num_experts_per_tok given twice"
                     --logits ${in}/logits.npy ${mixtral} --num-experts-per-tok 3)
moekit_route_failure(bad_integer 2 fresh "--num_experts_per_tok: 'two' is not an integer"
                     --logits ${in}/logits.npy --model-type mixtral --num_experts_per_tok two)
moekit_route_failure(bad_boolean 2 existing "--norm_topk_prob: 'yes' must be true or false"
                     --logits ${in}/logits.npy ${mixtral} --norm_topk_prob yes)
moekit_route_failure(bad_number 2 existing "--routed_scaling_factor: 'inf' is not a finite number"
                     --logits ${in}/logits.npy ${mixtral} --routed_scaling_factor inf)
moekit_route_failure(bad_device 2 existing "--device: 'gpu' must be cpu or emulate"
                     --logits ${in}/logits.npy ${mixtral} --device gpu)
moekit_route_failure(no_input 2 existing "give either --logits, or --hidden with --gate-weight" ${mixtral})
moekit_route_failure(both_inputs 2 existing "give either --logits, or --hidden with --gate-weight"
                     --logits ${in}/logits.npy --hidden ${in}/hidden.npy --gate-weight ${in}/gate_weight.npy ${mixtral})
moekit_route_failure(hidden_without_weight 2 existing "--hidden needs --gate-weight"
                     --hidden ${in}/hidden.npy ${mixtral})
moekit_route_failure(gate_bias_with_logits 2 existing "--gate-bias applies to --hidden/--gate-weight"
                     --logits ${in}/logits.npy --gate-bias ${in}/bias_v3.npy ${mixtral})
add_test(NAME tools_moekit_route_fail_missing_out
         COMMAND ${CMAKE_COMMAND} "-DEXPECT=--out DIR is required" -DEXPECT_STATUS=2
                 -P ${PROJECT_SOURCE_DIR}/cmake/ExpectFailure.cmake -- $<TARGET_FILE:moekit-route>
                 --logits ${in}/logits.npy ${mixtral})
set_tests_properties(tools_moekit_route_fail_missing_out PROPERTIES FIXTURES_REQUIRED moekit_route_inputs
                     LABELS "tools;io" TIMEOUT 60)

# Input files (exit status 1).
moekit_route_failure(missing_file 1 fresh "npy file '[^']*missing.npy': cannot open: no such file"
                     --logits ${in}/missing.npy ${mixtral})
moekit_route_failure(bad_magic 1 existing "bad_magic.npy': not a .npy file" --logits ${in}/bad_magic.npy ${mixtral})
moekit_route_failure(truncated 1 existing "truncated.npy': truncated data: shape .2, 8. of float32 needs 64 bytes"
                     --logits ${in}/truncated.npy ${mixtral})
moekit_route_failure(fortran_order 1 existing "fortran_order is True: only C-order arrays are supported"
                     --logits ${in}/fortran.npy ${mixtral})
moekit_route_failure(float64_logits 1 existing "dtype float64 .'<f8'. cannot be read as float32"
                     --logits ${in}/logits_f64.npy ${mixtral})
moekit_route_failure(rank1_logits 1 existing "logits '[^']*logits_1d.npy' must have at least 2 dimensions"
                     --logits ${in}/logits_1d.npy ${mixtral})
moekit_route_failure(nan_logits 1 fresh "router logits: non-finite value nan at token 1, expert 3"
                     --logits ${in}/logits_nan.npy ${mixtral})
moekit_route_failure(inf_logits 1 existing "router logits: non-finite value inf at token 0, expert 5"
                     --logits ${in}/logits_inf.npy --model-type deepseek_v3 --num_experts_per_tok 2)
moekit_route_failure(nan_hidden 1 existing "hidden states: non-finite value nan at token 0, h 2"
                     --hidden ${in}/hidden_nan.npy --gate-weight ${in}/gate_weight.npy ${mixtral})
moekit_route_failure(gate_weight_shape 1 existing
                     "gate weight '[^']*gate_weight_h5.npy' must have shape .E, H. with H = 8"
                     --hidden ${in}/hidden.npy --gate-weight ${in}/gate_weight_h5.npy ${mixtral})
moekit_route_failure(experts_mismatch 1 existing "logits '[^']*logits_e6.npy' has 6 experts but the router has num_experts=8"
                     --logits ${in}/logits_e6.npy ${mixtral} --num_experts 8)
moekit_route_failure(correction_bias_length 1 existing "correction bias '[^']*bias_7.npy' must have shape .8."
                     --logits ${in}/logits.npy --config ${in}/deepseek_v3.json --correction-bias ${in}/bias_7.npy)
moekit_route_failure(correction_bias_wrong_router 1 existing
                     "--correction-bias is only used by topk_method noaux_tc .DeepSeek-V3.; model_type 'mixtral'"
                     --logits ${in}/logits.npy ${mixtral} --correction-bias ${in}/bias_v3.npy)
add_test(NAME tools_moekit_route_fail_out_is_a_file
         COMMAND ${CMAKE_COMMAND} "-DEXPECT=--out '[^']*not_a_folder' exists and is not a directory"
                 -P ${PROJECT_SOURCE_DIR}/cmake/ExpectFailure.cmake -- $<TARGET_FILE:moekit-route>
                 --logits ${in}/logits.npy ${mixtral} --out ${in}/not_a_folder)
set_tests_properties(tools_moekit_route_fail_out_is_a_file PROPERTIES FIXTURES_REQUIRED moekit_route_inputs
                     LABELS "tools;io" TIMEOUT 60)

# Router parameters and configs (exit status 1).
moekit_route_failure(k_greater_than_e 1 existing "num_experts_per_tok must be in .1, E. .got k=9, E=8."
                     --logits ${in}/logits.npy --model-type mixtral --num_experts_per_tok 9)
moekit_route_failure(n_group_not_dividing 1 fresh "n_group=3 does not divide E=8"
                     --logits ${in}/logits.npy --config ${in}/deepseek_v3.json --n_group 3 --topk_group 1)
moekit_route_failure(topk_group_above_n_group 1 existing "topk_group must be in .1, n_group=4. .got 5."
                     --logits ${in}/logits.npy --config ${in}/deepseek_v3.json --topk_group 5)
moekit_route_failure(k_above_max_k 1 existing "k=33 exceeds this instantiation's MaxK=32"
                     --logits ${in}/logits_e64.npy --model-type qwen3_moe --num_experts_per_tok 33)
moekit_route_failure(unknown_family 1 existing "missing key 'scoring_func' .softmax or sigmoid.: model_type 'grok'"
                     --logits ${in}/logits.npy --model-type grok --num_experts_per_tok 2)
moekit_route_failure(contradicting_flag 1 existing
                     "key 'norm_topk_prob' = false contradicts model_type 'mixtral', which always renormalises"
                     --logits ${in}/logits.npy --config ${in}/mixtral.json --norm_topk_prob false)
moekit_route_failure(bad_topk_method 1 existing "key 'topk_method' must be .greedy., .group_limited_greedy. or .noaux_tc."
                     --logits ${in}/logits.npy --config ${in}/deepseek_v3.json --topk_method best)
moekit_route_failure(malformed_config 1 existing "config '[^']*malformed.json': malformed JSON"
                     --logits ${in}/logits.npy --config ${in}/malformed.json)
moekit_route_failure(config_not_object 1 existing "config '[^']*array.json': a config must be a JSON object"
                     --logits ${in}/logits.npy --config ${in}/array.json)
moekit_route_failure(missing_config 1 existing "config '[^']*nowhere.json': cannot open: no such file"
                     --logits ${in}/logits.npy --config ${in}/nowhere.json)
if(TARGET moekit::emu)
  moekit_route_failure(emulate_nan_logits 1 fresh "router logits: non-finite value nan at token 1, expert 3"
                       --logits ${in}/logits_nan.npy ${mixtral} --device emulate)
  moekit_route_failure(emulate_nan_hidden 1 existing "hidden states: non-finite value nan at token 0, h 2"
                       --hidden ${in}/hidden_nan.npy --gate-weight ${in}/gate_weight.npy ${mixtral} --device emulate)
endif()
