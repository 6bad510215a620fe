/* The poller (see poller.h): one epoll set per loop, watched by one
 * uv_poll_t, and a list of transports whose callbacks must come from the
 * loop, worked through by one uv_idle_t. */
#include "transport/poller.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "base/alloc.h"
#include "transport/transport.h"

/* Events taken per epoll_wait, and waits per turn of the loop: a full set
 * of ready sockets is served in bounded steps, so the loop's other handles
 * get their turn (libuv's own epoll wait is bounded the same way). */
#define EVENTS_PER_WAIT 256
#define WAITS_PER_TURN  4

/* Sockets per loop that get a uv_poll_t of their own. Through the shared
 * set, a wake-up for one socket costs a second epoll_wait: measurable for
 * a program of a few busy connections (a subscriber fed one small packet
 * per wake-up spends a quarter more CPU), nothing next to what the set
 * saves a gateway of thousands, whose first few connections are then
 * direct. UVMQTT_DIRECT_POLL_MAX overrides it (0: every socket in the set,
 * as the sanitizer stage of the tests runs). */
#define DIRECT_MAX_DEFAULT 16u

/* A socket's own poll handle; freed in its close callback. */
typedef struct uvmqtt__poller_direct_s {
  uv_poll_t h; /* h.data: the transport */
} direct_t;

struct uvmqtt__poller_s {
  uv_loop_t *loop;
  uvmqtt__transport_t *defer_head, *defer_tail;
  uv_poll_t poll;              /* watches epfd, from the first socket on */
  uv_idle_t idle;              /* runs while transports are deferred */
  int epfd;                    /* -1 until the first socket */
  uint32_t watched;            /* sockets in the set; the poll handle is active while > 0 */
  uint32_t direct, direct_max; /* sockets with a poll handle of their own, and the bound */
  uint8_t poll_open, idle_open, closing, open_handles;
};

uvmqtt__poller_t *uvmqtt__poller_new(uv_loop_t *loop) {
  uvmqtt__poller_t *p = uvmqtt__calloc(1, sizeof *p);
  if (p == NULL) return NULL;
  p->loop = loop;
  p->epfd = -1;
  p->direct_max = DIRECT_MAX_DEFAULT;
  const char *env = getenv("UVMQTT_DIRECT_POLL_MAX");
  if (env != NULL && env[0] >= '0' && env[0] <= '9')
    p->direct_max = (uint32_t)strtoul(env, NULL, 10);
  return p;
}

void uvmqtt__poller_set_direct_max(uvmqtt__poller_t *p, uint32_t n) {
  p->direct_max = n;
}

uv_loop_t *uvmqtt__poller_loop(const uvmqtt__poller_t *p) {
  return p->loop;
}

static void finish_free(uvmqtt__poller_t *p) {
  if (p->epfd >= 0) close(p->epfd);
  uvmqtt__free(p);
}

static void on_handle_closed(uv_handle_t *h) {
  uvmqtt__poller_t *p = h->data;
  if (--p->open_handles == 0) finish_free(p);
}

void uvmqtt__poller_free(uvmqtt__poller_t *p) {
  if (p == NULL || p->closing) return;
  p->closing = 1;
  if (p->poll_open) {
    p->open_handles++;
    uv_close((uv_handle_t *)&p->poll, on_handle_closed);
  }
  if (p->idle_open) {
    p->open_handles++;
    uv_close((uv_handle_t *)&p->idle, on_handle_closed);
  }
  if (p->open_handles == 0) finish_free(p);
}

/* libuv's uv_poll_t maps events the same way: an error is reported as
 * UV_EBADF (the socket's SO_ERROR says which), a hang-up wakes both
 * directions so the reader sees EOF. */
static void dispatch(const struct epoll_event *ev) {
  uvmqtt__transport_t *t = ev->data.ptr;
  int ready = 0;
  if (ev->events & (EPOLLIN | EPOLLHUP)) ready |= UV_READABLE;
  if (ev->events & (EPOLLOUT | EPOLLHUP)) ready |= UV_WRITABLE;
  uvmqtt__transport_tcp_ready(t, (ev->events & EPOLLERR) ? UV_EBADF : 0, ready);
}

static void on_set_ready(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  uvmqtt__poller_t *p = h->data;
  struct epoll_event ev[EVENTS_PER_WAIT];
  for (int w = 0; w < WAITS_PER_TURN && !p->closing; w++) {
    int n;
    do
      n = epoll_wait(p->epfd, ev, EVENTS_PER_WAIT, 0);
    while (n < 0 && errno == EINTR);
    /* A transport a callback closed stays allocated until its deferred
     * close runs from the idle handle, after this batch: its stale event
     * finds it unregistered and is dropped there. */
    for (int i = 0; i < n; i++)
      dispatch(&ev[i]);
    if (n < EVENTS_PER_WAIT) return;
  }
}

static void on_direct_ready(uv_poll_t *h, int status, int events) {
  uvmqtt__transport_tcp_ready(h->data, status, events);
}

static void on_direct_closed(uv_handle_t *h) {
  uvmqtt__free(h);
}

/* Gives `t`'s socket a poll handle of its own while there is room; it goes
 * to the set otherwise. */
static void try_direct(uvmqtt__poller_t *p, uvmqtt__transport_t *t, int fd) {
  if (p->direct >= p->direct_max || p->closing) return;
  direct_t *d = uvmqtt__malloc(sizeof *d);
  if (d == NULL) return;
  if (uv_poll_init_socket(p->loop, &d->h, fd) != 0) {
    uvmqtt__free(d);
    return;
  }
  d->h.data = t;
  t->direct = d;
  p->direct++;
}

void uvmqtt__poller_forget(uvmqtt__poller_t *p, uvmqtt__transport_t *t) {
  if (t->direct == NULL) return;
  /* libuv drops the handle's pending events at once; the socket may close
   * before the memory goes. */
  uv_close((uv_handle_t *)&t->direct->h, on_direct_closed);
  t->direct = NULL;
  p->direct--;
}

static int epoll_mask(int events) {
  return ((events & UV_READABLE) ? EPOLLIN : 0) | ((events & UV_WRITABLE) ? EPOLLOUT : 0);
}

static int open_set(uvmqtt__poller_t *p) {
  p->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (p->epfd < 0) return errno ? -errno : UV_EIO;
  int r = uv_poll_init(p->loop, &p->poll, p->epfd);
  if (r < 0) {
    close(p->epfd);
    p->epfd = -1;
    return r;
  }
  p->poll.data = p;
  p->poll_open = 1;
  return 0;
}

int uvmqtt__poller_watch(uvmqtt__poller_t *p, uvmqtt__transport_t *t, int fd, int was, int events) {
  if (events == was) return 0;
  if (t->direct == NULL && was == 0 && events != 0) try_direct(p, t, fd);
  if (t->direct != NULL)
    return events ? uv_poll_start(&t->direct->h, events, on_direct_ready)
                  : uv_poll_stop(&t->direct->h);
  if (events == 0) {
    /* Removed rather than left with an empty mask: epoll reports errors
     * and hang-ups regardless of the mask, level-triggered, so a socket
     * nobody reads would wake the loop without end. */
    (void)epoll_ctl(p->epfd, EPOLL_CTL_DEL, fd, NULL);
    if (--p->watched == 0) (void)uv_poll_stop(&p->poll);
    return 0;
  }
  if (p->epfd < 0) {
    int r = open_set(p);
    if (r < 0) return r;
  }
  struct epoll_event ev;
  ev.events = (uint32_t)epoll_mask(events);
  ev.data.ptr = t;
  if (epoll_ctl(p->epfd, was ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) != 0)
    return errno ? -errno : UV_EIO;
  if (was) return 0;
  if (p->watched++ == 0) {
    int r = uv_poll_start(&p->poll, UV_READABLE, on_set_ready);
    if (r < 0) {
      (void)epoll_ctl(p->epfd, EPOLL_CTL_DEL, fd, NULL);
      p->watched--;
      return r;
    }
  }
  return 0;
}

static void on_idle(uv_idle_t *h) {
  uvmqtt__poller_t *p = h->data;
  /* The list as it stands: transports deferred by these callbacks wait
   * for the next turn, which the restarted handle brings. */
  uvmqtt__transport_t *t = p->defer_head;
  p->defer_head = p->defer_tail = NULL;
  uv_idle_stop(&p->idle);
  while (t != NULL) {
    uvmqtt__transport_t *next = t->defer_next;
    t->defer_next = NULL;
    uvmqtt__transport_tcp_deferred(t);
    t = next;
  }
}

void uvmqtt__poller_defer(uvmqtt__poller_t *p, uvmqtt__transport_t *t) {
  t->defer_next = NULL;
  if (p->defer_tail != NULL)
    p->defer_tail->defer_next = t;
  else
    p->defer_head = t;
  p->defer_tail = t;
  if (!p->idle_open) {
    uv_idle_init(p->loop, &p->idle);
    p->idle.data = p;
    p->idle_open = 1;
  }
  uv_idle_start(&p->idle, on_idle);
}
