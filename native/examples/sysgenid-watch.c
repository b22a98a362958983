/*
 * sysgenid-watch: a minimal independent client of the sysgenid counter file.
 *
 *   sysgenid-watch COUNTER_FILE [CHANGES]
 *
 * Maps the counter file read-only (PROT_READ, MAP_SHARED) once and checks the
 * generation with one load per check. Prints "generation N" for the value at
 * start and for every new value it sees, flushing each line; exits after
 * CHANGES new values (default: runs until killed).
 *
 * Between checks it sleeps in poll() on an inotify watch of the file: the
 * service touches the mtime after each store (IN_ATTRIB), so a change wakes it
 * at once; the 200 ms poll timeout is only a fallback for file systems without
 * inotify. The check itself is always the load, never the event: a woken
 * client that sees the same value goes back to sleep. Bumps closer together
 * than one check are seen as their last value (the counter only grows, so
 * "changed" is all a client needs to know).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../include/sysgenid.h"

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: %s COUNTER_FILE [CHANGES]\n", argv[0]);
    return 2;
  }
  long changes = argc == 3 ? strtol(argv[2], NULL, 10) : -1;
  int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "sysgenid-watch: open(%s) failed: %s\n", argv[1], strerror(errno));
    return 1;
  }
  const void *page = mmap(NULL, SYSGENID_FILE_BYTES, PROT_READ, MAP_SHARED, fd, 0);
  if (page == MAP_FAILED) {
    fprintf(stderr, "sysgenid-watch: mmap(%s) failed: %s\n", argv[1], strerror(errno));
    return 1;
  }
  close(fd);
  const unsigned char *bytes = page;
  uint32_t magic = (uint32_t)bytes[8] | (uint32_t)bytes[9] << 8 | (uint32_t)bytes[10] << 16 | (uint32_t)bytes[11] << 24;
  if (magic != SYSGENID_FILE_MAGIC) {
    fprintf(stderr, "sysgenid-watch: %s: expected magic 0x%08x at offset 8, got 0x%08x\n", argv[1],
            SYSGENID_FILE_MAGIC, magic);
    return 1;
  }
  int ino = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (ino >= 0 && inotify_add_watch(ino, argv[1], IN_ATTRIB | IN_MODIFY) < 0) {
    close(ino);
    ino = -1;
  }

  uint32_t seen = sysgenid_load(page);
  printf("generation %u\n", seen);
  fflush(stdout);
  while (changes != 0) {
    uint32_t now = sysgenid_load(page);
    if (now != seen) {
      seen = now;
      printf("generation %u\n", seen);
      fflush(stdout);
      if (changes > 0) changes--;
      continue;
    }
    struct pollfd p = {.fd = ino, .events = POLLIN};
    if (poll(&p, ino >= 0 ? 1 : 0, 200) > 0) {
      char buf[4096];
      while (read(ino, buf, sizeof(buf)) > 0) {
      }
    }
  }
  return 0;
}
