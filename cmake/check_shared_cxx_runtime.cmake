# Fails when a built library defines the C++ runtime's locale machinery itself (a static copy of
# libstdc++ inside it). Run as: cmake -DLIB=<file> -DNM=<nm> -P check_shared_cxx_runtime.cmake
#
# A module loaded into a process whose other libraries share libstdc++.so must share it too: a
# second copy keeps its own std::locale::id numbering, so a facet looked up through one copy in a
# locale built by the other is the wrong object, and the first number formatted into a stream
# (an error message with a shape in it) jumps through a wrong virtual slot and crashes.
execute_process(COMMAND ${NM} -D --defined-only ${LIB} OUTPUT_VARIABLE syms RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "check_shared_cxx_runtime: ${NM} -D could not read ${LIB}")
endif()
if(syms MATCHES "_ZNSt6locale7classicEv|_ZNSt6locale2id")
  message(FATAL_ERROR
    "${LIB} holds its own copy of libstdc++ (it defines std::locale), expected it to link the shared "
    "libstdc++.so.6 that PyTorch uses; look for a link line that reaches libstdc++.a (a compiler "
    "that ships only the static library, -static-libstdc++ in the flags)")
endif()
