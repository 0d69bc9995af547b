# pqpool as its users get it, one step per CTest test (tests/CMakeLists.txt):
#   STEP=install        install BINARY_DIR into PREFIX (the fixture the others share), check the
#                       license is there, and pack a release-style archive of what a user's
#                       FetchContent downloads (CMakeLists.txt, cmake/, include/, LICENSE);
#   STEP=package, subdirectory, fetchcontent
#                       configure, build and run tests/install/consumer that way;
#   STEP=pkg-config     compile tests/install/consumer/main.cpp with the compiler alone and
#                       `pkg-config --cflags --libs pqpool` from PREFIX, and run it;
#   STEP=conan          build and run packaging/conan/test_package against PREFIX (Conan's
#                       CMakeDeps would give it the same pqpool::pqpool target).
# Each builds in WORK/<step>. Every failure is fatal.
cmake_minimum_required(VERSION 3.21)
set(archive ${WORK}/pqpool-archive.tar.gz)
set(consumer ${SOURCE_DIR}/tests/install/consumer)
set(build ${WORK}/${STEP})

function(run)
  execute_process(COMMAND ${ARGN} COMMAND_ERROR_IS_FATAL ANY)
endfunction()

function(cmake_project source) # then extra configure arguments; builds and runs its program
  file(REMOVE_RECURSE ${build})
  run(${CMAKE_COMMAND} -S ${source} -B ${build} -G ${GENERATOR} -DCMAKE_CXX_COMPILER=${CXX}
      -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON ${ARGN})
  run(${CMAKE_COMMAND} --build ${build})
endfunction()

if(STEP STREQUAL "install")
  file(REMOVE_RECURSE ${PREFIX} ${WORK})
  run(${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${PREFIX})
  file(SHA256 ${SOURCE_DIR}/LICENSE want)
  file(GLOB licenses ${PREFIX}/share/doc/pqpool/LICENSE)
  if(NOT licenses)
    message(FATAL_ERROR "the license is not installed (expected ${PREFIX}/share/doc/pqpool/LICENSE)")
  endif()
  file(SHA256 ${licenses} have)
  if(NOT have STREQUAL want)
    message(FATAL_ERROR "the installed license differs from ${SOURCE_DIR}/LICENSE")
  endif()
  # As a release archive has it: one top folder, named for the version.
  set(stage ${WORK}/stage/pqpool-${VERSION})
  file(MAKE_DIRECTORY ${stage})
  file(COPY ${SOURCE_DIR}/CMakeLists.txt ${SOURCE_DIR}/LICENSE ${SOURCE_DIR}/cmake ${SOURCE_DIR}/include
       DESTINATION ${stage})
  run(${CMAKE_COMMAND} -E chdir ${WORK}/stage ${CMAKE_COMMAND} -E tar czf ${archive} pqpool-${VERSION})
  message(STATUS "installed into ${PREFIX}; archive ${archive}")
elseif(STEP STREQUAL "package")
  cmake_project(${consumer} -DPQPOOL_CONSUME=package -DCMAKE_PREFIX_PATH=${PREFIX})
  run(${build}/consumer)
elseif(STEP STREQUAL "subdirectory")
  cmake_project(${consumer} -DPQPOOL_CONSUME=subdirectory -DPQPOOL_SOURCE_DIR=${SOURCE_DIR})
  run(${build}/consumer)
elseif(STEP STREQUAL "fetchcontent")
  cmake_project(${consumer} -DPQPOOL_CONSUME=fetchcontent -DPQPOOL_ARCHIVE=${archive})
  run(${build}/consumer)
elseif(STEP STREQUAL "pkg-config")
  file(REMOVE_RECURSE ${build})
  file(MAKE_DIRECTORY ${build})
  set(ENV{PKG_CONFIG_PATH} ${PREFIX}/share/pkgconfig)
  execute_process(COMMAND pkg-config --modversion pqpool OUTPUT_VARIABLE pc_version
                  OUTPUT_STRIP_TRAILING_WHITESPACE COMMAND_ERROR_IS_FATAL ANY)
  if(NOT pc_version STREQUAL VERSION)
    message(FATAL_ERROR "pqpool.pc says version '${pc_version}'; version.hpp says '${VERSION}'")
  endif()
  execute_process(COMMAND pkg-config --cflags --libs pqpool OUTPUT_VARIABLE flags OUTPUT_STRIP_TRAILING_WHITESPACE
                  COMMAND_ERROR_IS_FATAL ANY)
  foreach(needed "-I${PREFIX}/share/pkgconfig/../../include" "-pthread" "-lpq" "-lcrypto")
    string(FIND " ${flags} " " ${needed} " at)
    if(at EQUAL -1)
      message(FATAL_ERROR "pkg-config --cflags --libs pqpool gives '${flags}': no ${needed}")
    endif()
  endforeach()
  separate_arguments(flags UNIX_COMMAND "${flags}")
  run(${CXX} -std=c++20 -Wall -Wextra -Wpedantic -Werror "-DPQPOOL_EXPECT_VERSION=\"${pc_version}\""
      ${consumer}/main.cpp -o ${build}/consumer ${flags})
  run(${build}/consumer)
elseif(STEP STREQUAL "conan")
  cmake_project(${SOURCE_DIR}/packaging/conan/test_package -DCMAKE_PREFIX_PATH=${PREFIX})
  run(${build}/test_package)
else()
  message(FATAL_ERROR "run.cmake: unknown STEP '${STEP}'")
endif()
