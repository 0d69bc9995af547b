// Compile-time probe: default_pool.cpp in separate-compilation mode (pool<>
// is instantiated once, by the translation unit that includes src.hpp).

#define PQPOOL_SEPARATE_COMPILATION 1
#include "default_pool.cpp"
