/* The kernel's count of bytes the peer acknowledged, for keepalive.
 *
 * Its own file because <linux/tcp.h>, which declares tcpi_bytes_acked,
 * cannot share a translation unit with <netinet/tcp.h> (which uv.h
 * includes). */
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

int uvmqtt__tcp_bytes_acked(int fd, uint64_t *acked);

int uvmqtt__tcp_bytes_acked(int fd, uint64_t *acked) {
  struct tcp_info info;
  socklen_t len = sizeof info;
  memset(&info, 0, sizeof info);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return -1;
  /* Older kernels fill less of the struct: no count, no answer. */
  if (len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof info.tcpi_bytes_acked) return -1;
  *acked = info.tcpi_bytes_acked;
  return 0;
}
