/*
 * sevtrack sysgenid: the counter file and the socket protocol, for C clients.
 * docs/sysgenid.md describes both with byte tables; this header is the same
 * contract in C.
 *
 * The counter file is one 4096-byte page. Its first 4 bytes hold the
 * generation, a little-endian u32 that only grows. The service updates it in
 * place with one atomic 4-byte store through a shared mapping and then
 * touches the file's mtime; it never renames a new file over it and never
 * truncates it, so a mapping taken once stays valid and current for the life
 * of the service. Bytes 8..13 carry a magic and a version so a reader can
 * tell a sevtrack counter file from another file; offset 0 stays the counter
 * because other readers (AWS-LC's snapsafe check) load exactly 4 bytes there.
 *
 * Ordering rule (docs/sysgenid.md, "Check, work, re-check"): the value can
 * change right after it is loaded. A client that must not reuse state across
 * generations loads the generation, does its work, and loads it again; if it
 * changed, it discards the work and retries.
 */
#ifndef SEVTRACK_SYSGENID_H
#define SEVTRACK_SYSGENID_H

#include <stdint.h>

#define SYSGENID_FILE_BYTES 4096u
#define SYSGENID_FILE_COUNTER_OFFSET 0u
#define SYSGENID_FILE_MAGIC_OFFSET 8u
#define SYSGENID_FILE_VERSION_OFFSET 12u
/* "SGIC" little-endian: SysGenId Counter file. */
#define SYSGENID_FILE_MAGIC 0x43494753u
#define SYSGENID_FILE_VERSION 1u

/* Socket protocol: sevtrack's 20-byte frame header (docs/sysgenid.md). */
#define SYSGENID_FRAME_MAGIC 0x44494753u /* "SGID" */
#define SYSGENID_FRAME_VERSION 1u
#define SYSGENID_REPLY_FLAG 0x8000u

enum sysgenid_request {
  SYSGENID_REQ_GET = 1,          /* -> u32 generation (does not acknowledge) */
  SYSGENID_REQ_READ = 2,         /* u8 flags (bit 0: non-blocking) -> u32 generation */
  SYSGENID_REQ_WRITE = 3,        /* raw bytes: exactly the 4-byte current generation */
  SYSGENID_REQ_POLL = 4,         /* -> u32 events (SYSGENID_POLLIN while outdated) */
  SYSGENID_REQ_SET_TRACKING = 5, /* u8 0/1 */
  SYSGENID_REQ_GET_OUTDATED = 6, /* -> u32 outdated tracked watchers */
  SYSGENID_REQ_WAIT_WATCHERS = 7,/* u32 timeout ms (0 = forever) */
  SYSGENID_REQ_BUMP = 8,         /* u32 min -> u32 new generation, u32 watchers made outdated */
  SYSGENID_REQ_SET_NAME = 9,     /* u16 length + UTF-8 label (sevtrack extension) */
  SYSGENID_REQ_LIST_WATCHERS = 10/* -> the watcher table (sevtrack extension) */
};

#define SYSGENID_POLLIN 0x1u

/* Reply status: 0 or a Linux errno value, as the kernel proposal returned it. */
enum sysgenid_status {
  SYSGENID_OK = 0,
  SYSGENID_EINTR = 4,
  SYSGENID_EAGAIN = 11,
  SYSGENID_EACCES = 13,
  SYSGENID_EINVAL = 22,
  SYSGENID_ENOTTY = 25,
  SYSGENID_ETIME = 62,
  SYSGENID_EPROTO = 71,
  SYSGENID_EOVERFLOW = 75,
  SYSGENID_ENOBUFS = 105
};

/* One load of the generation from a read-only mapping of the counter file. */
static inline uint32_t sysgenid_load(const volatile void *page) {
  uint32_t v = __atomic_load_n((const volatile uint32_t *)page, __ATOMIC_ACQUIRE);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap32(v);
#endif
  return v;
}

#endif /* SEVTRACK_SYSGENID_H */
