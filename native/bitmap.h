// Page bitmap kernels: bit i of the bitmap is guest frame i. The bitmap is an
// array of little-endian 64-bit words; JavaScript views the same memory as a
// Uint32Array, which on a little-endian host is the identical bit layout.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace sevtrack {

void BitmapSetRange(uint64_t* words, uint64_t gfn, uint64_t npages);
void BitmapClearRange(uint64_t* words, uint64_t gfn, uint64_t npages);
// Atomic variants (lock or / lock and per word), for bitmaps other threads
// update concurrently.
void BitmapSetRangeAtomic(uint64_t* words, uint64_t gfn, uint64_t npages);
void BitmapClearRangeAtomic(uint64_t* words, uint64_t gfn, uint64_t npages);
uint64_t BitmapCountRange(const uint64_t* words, uint64_t gfn, uint64_t npages);

// Appends the maximal runs of set bits among the first nbits bits as
// (gfn, npages) pairs, in ascending gfn order.
void BitmapToRuns(const uint64_t* words, uint64_t nbits, std::vector<uint64_t>* runs);

enum class BitmapOp { kOr, kAndNot, kXor };
// dst[i] = a[i] op b[i] for nwords words; dst may alias a or b.
void BitmapCombine(uint64_t* dst, const uint64_t* a, const uint64_t* b, size_t nwords, BitmapOp op);

// Atomically takes every set bit out of `shared` (exchanging each non-zero
// word with zero) and ORs it into `out`. A bit set concurrently by another
// thread lands either in this harvest or stays in `shared` for the next one:
// never both, never neither. Returns the number of bits harvested.
uint64_t BitmapHarvest(uint64_t* shared, uint64_t* out, size_t nwords);

}  // namespace sevtrack
