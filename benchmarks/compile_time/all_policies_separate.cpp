// Compile-time probe: all_policies.cpp in separate-compilation mode (the
// connector's functions and pool<> are compiled once, elsewhere: src.hpp).

#define PQPOOL_SEPARATE_COMPILATION 1
#include "all_policies.cpp"
