// The one translation unit of a separately compiled program that holds the
// libpq connector's functions and pool<>.
#include <pqpool/src.hpp>
