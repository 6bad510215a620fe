/* What the clients of one libuv loop share: one timer for all their
 * deadlines, one poller for all their sockets (transport/poller.h), and the
 * pacing of connection attempts.
 *
 * A gateway holds thousands of clients in one loop. A uv_timer_t each costs
 * 152 bytes per client and a libuv timer-heap entry per deadline change;
 * instead every client sits in one min-heap ordered by its next deadline,
 * and one uv_timer_t fires for the earliest. And thousands of clients
 * started at once (or reconnecting after a broker restart) would all start
 * their connect timeouts together while the kernel works through the
 * connect() calls one by one: attempts beyond a per-loop limit wait their
 * turn instead, and their timeout starts when they really start.
 *
 * The first client on a loop creates its context; the last one to close
 * closes its timer, and the context is freed in that close callback. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "client/client_impl.h"

#define DEFAULT_MAX_CONNECTING 128u
#define NOT_IN_HEAP            UINT32_MAX

static uv_once_t registry_once = UV_ONCE_INIT;
static uv_mutex_t registry_lock;
static uvmqtt__loop_t *registry;

static void registry_init(void) {
  if (uv_mutex_init(&registry_lock) != 0) abort();
}

/* ---- The heap ------------------------------------------------------------- */

/* Entries carry their deadline, so sifting compares within the array and
 * touches a client's struct only to record where it moved: with thousands
 * of clients, each struct read is a likely cache miss. */
static void heap_place(uvmqtt__loop_t *lp, uint32_t i, uvmqtt__heap_entry_t e) {
  lp->heap[i] = e;
  e.c->heap_idx = i;
}

static void heap_up(uvmqtt__loop_t *lp, uint32_t i) {
  uvmqtt__heap_entry_t e = lp->heap[i];
  while (i > 0) {
    uint32_t parent = (i - 1) / 2;
    if (lp->heap[parent].due <= e.due) break;
    heap_place(lp, i, lp->heap[parent]);
    i = parent;
  }
  heap_place(lp, i, e);
}

static void heap_down(uvmqtt__loop_t *lp, uint32_t i) {
  uvmqtt__heap_entry_t e = lp->heap[i];
  for (;;) {
    uint32_t l = 2 * i + 1, r = l + 1, m = i;
    uint64_t due = e.due;
    if (l < lp->heap_len && lp->heap[l].due < due) {
      m = l;
      due = lp->heap[l].due;
    }
    if (r < lp->heap_len && lp->heap[r].due < due) m = r;
    if (m == i) break;
    heap_place(lp, i, lp->heap[m]);
    i = m;
  }
  heap_place(lp, i, e);
}

static void heap_remove(uvmqtt__loop_t *lp, uvmqtt__client_t *c) {
  uint32_t i = c->heap_idx;
  if (i == NOT_IN_HEAP) return;
  c->heap_idx = NOT_IN_HEAP;
  uvmqtt__heap_entry_t last = lp->heap[--lp->heap_len];
  if (last.c == c) return;
  heap_place(lp, i, last);
  heap_down(lp, i);
  heap_up(lp, last.c->heap_idx);
}

/* ---- The timer -------------------------------------------------------------- */

static void on_loop_timer(uv_timer_t *timer);

static void rearm(uvmqtt__loop_t *lp) {
  if (lp->closing) return;
  /* The timer exists from the first deadline on, so a client that is made
   * and dropped without ever connecting leaves nothing in the loop. */
  if (!lp->timer_open) {
    if (lp->heap_len == 0) return;
    uv_timer_init(lp->loop, &lp->timer);
    lp->timer.data = lp;
    lp->timer_open = 1;
  }
  if (lp->heap_len == 0) {
    if (lp->timer_due) uv_timer_stop(&lp->timer);
    lp->timer_due = 0;
    return;
  }
  uint64_t next = lp->heap[0].due;
  /* A timer that fires early only re-arms itself, so it is moved only
   * earlier: keepalive deadlines move on every packet. */
  if (lp->timer_due && lp->timer_due <= next) return;
  uint64_t now = uv_now(lp->loop);
  lp->timer_due = next;
  uv_timer_start(&lp->timer, on_loop_timer, next > now ? next - now : 0, 0);
}

uint64_t uvmqtt__loop_due(const uvmqtt__loop_t *lp, const uvmqtt__client_t *c) {
  return c->heap_idx == NOT_IN_HEAP ? 0 : lp->heap[c->heap_idx].due;
}

void uvmqtt__loop_schedule(uvmqtt__loop_t *lp, uvmqtt__client_t *c, uint64_t due) {
  if (due == 0) {
    heap_remove(lp, c);
    return;
  }
  if (c->heap_idx != NOT_IN_HEAP) {
    uint64_t old = lp->heap[c->heap_idx].due;
    lp->heap[c->heap_idx].due = due;
    if (due < old)
      heap_up(lp, c->heap_idx);
    else
      heap_down(lp, c->heap_idx);
  } else {
    if (lp->heap_len == lp->heap_cap) {
      uint32_t cap = lp->heap_cap ? lp->heap_cap * 2 : 64;
      uvmqtt__heap_entry_t *h = uvmqtt__realloc(lp->heap, cap * sizeof *h);
      /* Without room the client is served by the next sweep: every client
       * is also re-armed after each of its events. */
      if (h == NULL) return;
      lp->heap = h;
      lp->heap_cap = cap;
    }
    lp->heap[lp->heap_len].due = due;
    lp->heap[lp->heap_len].c = c;
    c->heap_idx = lp->heap_len++;
    heap_up(lp, c->heap_idx);
  }
  rearm(lp);
}

static void on_loop_timer(uv_timer_t *timer) {
  uvmqtt__loop_t *lp = timer->data;
  lp->timer_due = 0;
  uint64_t now = uv_now(lp->loop);
  /* A bounded sweep: a client re-armed for `now` during the sweep waits for
   * the next turn of the loop instead of spinning here. */
  uint32_t budget = lp->heap_len;
  while (budget-- > 0 && lp->heap_len > 0 && lp->heap[0].due <= now) {
    uvmqtt__client_t *c = lp->heap[0].c;
    heap_remove(lp, c);
    uvmqtt__client_on_timer(c, now);
    if (lp->closing) return; /* the last client closed */
  }
  rearm(lp);
}

/* ---- Lifetime ------------------------------------------------------------------ */

uvmqtt__loop_t *uvmqtt__loop_ref(uv_loop_t *loop, uint32_t max_connecting) {
  uv_once(&registry_once, registry_init);
  uv_mutex_lock(&registry_lock);
  uvmqtt__loop_t *lp = registry;
  while (lp && lp->loop != loop)
    lp = lp->next;
  if (lp == NULL) {
    lp = uvmqtt__calloc(1, sizeof *lp);
    if (lp != NULL && (lp->poller = uvmqtt__poller_new(loop)) == NULL) {
      uvmqtt__free(lp);
      lp = NULL;
    }
    if (lp != NULL) {
      lp->loop = loop;
      lp->max_connecting = DEFAULT_MAX_CONNECTING;
      lp->next = registry;
      registry = lp;
    }
  }
  if (lp != NULL) {
    lp->refs++;
    if (max_connecting) lp->max_connecting = max_connecting;
  }
  uv_mutex_unlock(&registry_lock);
  return lp;
}

static void on_loop_timer_closed(uv_handle_t *h) {
  uvmqtt__loop_t *lp = (uvmqtt__loop_t *)((char *)h - offsetof(uvmqtt__loop_t, timer));
  uvmqtt__free(lp->heap);
  uvmqtt__free(lp);
}

void uvmqtt__loop_unref(uvmqtt__loop_t *lp) {
  uv_mutex_lock(&registry_lock);
  int last = --lp->refs == 0;
  if (last) {
    /* Out of the registry first: a client made from the close callback
     * that follows gets a context of its own. */
    uvmqtt__loop_t **pp = &registry;
    while (*pp != lp)
      pp = &(*pp)->next;
    *pp = lp->next;
  }
  uv_mutex_unlock(&registry_lock);
  if (!last) return;
  lp->closing = 1;
  /* Every client's transport has closed: nothing is in the poller. */
  uvmqtt__poller_free(lp->poller);
  if (lp->timer_open)
    uv_close((uv_handle_t *)&lp->timer, on_loop_timer_closed);
  else
    on_loop_timer_closed((uv_handle_t *)&lp->timer);
}

/* ---- Pacing ----------------------------------------------------------------------- */

static void grant_waiters(uvmqtt__loop_t *lp) {
  while (lp->wait_head && lp->connecting < lp->max_connecting) {
    uvmqtt__client_t *c = lp->wait_head;
    lp->wait_head = c->pace_next;
    if (lp->wait_head == NULL) lp->wait_tail = NULL;
    c->pace_next = NULL;
    /* The slot is reserved now; the attempt starts from the timer, never
     * inside the call that freed the slot. */
    c->pace = UVMQTT__PACE_GRANTED;
    lp->connecting++;
    uvmqtt__loop_schedule(lp, c, uv_now(lp->loop));
  }
}

int uvmqtt__loop_try_start(uvmqtt__loop_t *lp, uvmqtt__client_t *c) {
  if (c->pace == UVMQTT__PACE_GRANTED) {
    c->pace = UVMQTT__PACE_RUNNING;
    return 1;
  }
  if (lp->connecting < lp->max_connecting && lp->wait_head == NULL) {
    lp->connecting++;
    c->pace = UVMQTT__PACE_RUNNING;
    return 1;
  }
  c->pace = UVMQTT__PACE_WAITING;
  c->pace_next = NULL;
  if (lp->wait_tail)
    lp->wait_tail->pace_next = c;
  else
    lp->wait_head = c;
  lp->wait_tail = c;
  return 0;
}

void uvmqtt__loop_release(uvmqtt__loop_t *lp, uvmqtt__client_t *c) {
  switch (c->pace) {
  case UVMQTT__PACE_WAITING: {
    uvmqtt__client_t *prev = NULL, *at = lp->wait_head;
    while (at && at != c) {
      prev = at;
      at = at->pace_next;
    }
    if (at) {
      if (prev)
        prev->pace_next = c->pace_next;
      else
        lp->wait_head = c->pace_next;
      if (lp->wait_tail == c) lp->wait_tail = prev;
    }
    c->pace_next = NULL;
    break;
  }
  case UVMQTT__PACE_GRANTED:
  case UVMQTT__PACE_RUNNING:
    lp->connecting--;
    grant_waiters(lp);
    break;
  default: break;
  }
  c->pace = UVMQTT__PACE_NONE;
}
