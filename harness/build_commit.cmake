# Writes OUT, the source of flashlab::harness::build_commit(): the commit of the checkout at SRC that this build
# compiles, "+dirty" when tracked files differ from it, "unknown" without git. Run at every build (the
# flashlab_build_commit target); OUT is rewritten only when its text changes, so a build on the same commit
# compiles nothing.
execute_process(COMMAND git -C "${SRC}" rev-parse --verify --quiet HEAD
                OUTPUT_VARIABLE commit OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE status)
if(NOT status EQUAL 0 OR commit STREQUAL "")
  set(commit "unknown")
else()
  execute_process(COMMAND git -C "${SRC}" status --porcelain --untracked-files=no
                  OUTPUT_VARIABLE changes ERROR_QUIET RESULT_VARIABLE status)
  if(NOT status EQUAL 0 OR NOT changes STREQUAL "")
    string(APPEND commit "+dirty")
  endif()
endif()
set(text "// Generated at build time by harness/build_commit.cmake.\n#include \"flashlab/harness/run_info.hpp\"\n\nnamespace flashlab::harness {\nconst char* build_commit() { return \"${commit}\"; }\n}  // namespace flashlab::harness\n")
set(old "")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUT}" "${text}")
endif()
