// The AVX2 + FMA copy of the attention kernels (cc/fwa_kernel_body.h), picked at run time by
// FwaForward / FwaBackward where the CPU has both (fwa_kernel.h). Only the functions defined
// after the target pragma are AVX2 code; the standard headers are included before it, so their
// inline functions and templates, which the linker may merge with the baseline copy's, stay
// baseline code and this library still runs on a CPU without AVX2.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <immintrin.h>

#include "fwa_kernel.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define FWA_ISA_NAMESPACE isa_avx2
#include "fwa_kernel_body.h"
#undef FWA_ISA_NAMESPACE
#pragma GCC pop_options
