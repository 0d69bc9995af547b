# pqpool.pc, for builds that use pkg-config: `c++ -std=c++20 app.cpp $(pkg-config --cflags --libs pqpool)`.
# Header-only, so it goes to the architecture-independent share/pkgconfig, and it finds its prefix
# relative to itself (${pcfiledir}), so the installed tree can be moved.
set(pc_dir ${CMAKE_INSTALL_DATADIR}/pkgconfig)
file(RELATIVE_PATH pc_to_prefix /prefix/${pc_dir} /prefix)
set(pc_prefix "\${pcfiledir}/${pc_to_prefix}")
string(REGEX REPLACE "/$" "" pc_prefix "${pc_prefix}")
if(IS_ABSOLUTE ${CMAKE_INSTALL_INCLUDEDIR})
  set(pc_includedir ${CMAKE_INSTALL_INCLUDEDIR})
else()
  set(pc_includedir "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
# Boost has no .pc file: name its include folder when a compiler would not look there anyway.
set(pc_boost_cflags "")
foreach(dir IN LISTS Boost_INCLUDE_DIRS)
  if(NOT dir IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES AND NOT dir STREQUAL CMAKE_INSTALL_FULL_INCLUDEDIR)
    string(APPEND pc_boost_cflags " -I${dir}")
  endif()
endforeach()
configure_file(${CMAKE_CURRENT_LIST_DIR}/pqpool.pc.in ${PROJECT_BINARY_DIR}/pqpool.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/pqpool.pc DESTINATION ${pc_dir})
