# `cmake --install build --prefix P`: the headers under P/include/pairflash (included as in the
# source tree: "framework/tensor.h", "kernels/cpu/flash_bias.h"), the static libraries under
# P/lib, and the CMake package P/lib/cmake/pairflash, whose targets are pairflash::framework and
# pairflash::kernels (examples/consumer uses both). Install rules cost nothing until asked for.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
set(PF_INSTALL_INCLUDE ${CMAKE_INSTALL_INCLUDEDIR}/pairflash)
set(PF_INSTALL_CMAKE ${CMAKE_INSTALL_LIBDIR}/cmake/pairflash)

set(PF_EXPORTED pf_kernels pairflash)
if(PF_HAVE_CUDA)
  list(APPEND PF_EXPORTED pf_kernels_cuda)
  if(PF_HAVE_SM90A)
    list(APPEND PF_EXPORTED pf_kernels_sm90a)  # the Hopper flash-bias path, linked by pf_kernels_cuda
  endif()
endif()
foreach(t IN LISTS PF_EXPORTED)
  # The source tree's root is the include root in the build, P/include/pairflash once installed.
  get_target_property(dirs ${t} INTERFACE_INCLUDE_DIRECTORIES)
  if(NOT dirs)
    set(dirs "")
  endif()
  list(REMOVE_ITEM dirs ${CMAKE_SOURCE_DIR})
  set_target_properties(${t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES
    "$<BUILD_INTERFACE:${CMAKE_SOURCE_DIR}>;$<INSTALL_INTERFACE:${PF_INSTALL_INCLUDE}>;${dirs}")
endforeach()
set_target_properties(pairflash PROPERTIES EXPORT_NAME framework)
set_target_properties(pf_kernels PROPERTIES EXPORT_NAME kernels)
if(PF_HAVE_CUDA)
  set_target_properties(pf_kernels_cuda PROPERTIES EXPORT_NAME kernels_cuda)
  if(PF_HAVE_SM90A)
    set_target_properties(pf_kernels_sm90a PROPERTIES EXPORT_NAME kernels_sm90a)
  endif()
endif()
# In-tree consumers spell the targets the same way.
add_library(pairflash::framework ALIAS pairflash)
add_library(pairflash::kernels ALIAS pf_kernels)

install(TARGETS ${PF_EXPORTED} EXPORT pairflashTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY kernels framework DESTINATION ${PF_INSTALL_INCLUDE}
        FILES_MATCHING PATTERN "*.h" PATTERN "*.cuh")
install(EXPORT pairflashTargets NAMESPACE pairflash:: DESTINATION ${PF_INSTALL_CMAKE})
configure_package_config_file(cmake/pairflashConfig.cmake.in
  ${CMAKE_BINARY_DIR}/pairflashConfig.cmake INSTALL_DESTINATION ${PF_INSTALL_CMAKE})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/pairflashConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/pairflashConfig.cmake ${CMAKE_BINARY_DIR}/pairflashConfigVersion.cmake
        DESTINATION ${PF_INSTALL_CMAKE})
