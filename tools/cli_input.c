/* Non-blocking input for uvmqtt-pub: streams through uv_read, files through
 * a uv_fs_read loop, both into one growing buffer. */
#include "cli_input.h"

#include <stdlib.h>
#include <string.h>

/* Bytes asked for per read, and the free room kept for it. */
#define CHUNK (64u * 1024u)

/* Makes CHUNK bytes of room after `end`: first by moving the untaken bytes
 * to the front, then by growing. Fails with UV_E2BIG once the untaken bytes
 * (an unfinished line, or the whole input) exceed max_size. */
static int make_room(cli_input_t *in) {
  if (in->cap - in->end >= CHUNK) return 0;
  if (in->start > 0) {
    memmove(in->buf, in->buf + in->start, in->end - in->start);
    in->end -= in->start;
    in->start = 0;
  }
  if (in->cap - in->end >= CHUNK) return 0;
  if (in->end > in->max_size) return UV_E2BIG;
  /* Doubling, but never far past the limit: one chunk beyond it is enough
   * to see that the limit was crossed. */
  size_t limit = in->max_size + CHUNK + 1;
  size_t cap = in->cap ? in->cap * 2 : 2 * CHUNK;
  if (cap > limit) cap = limit;
  if (cap - in->end < CHUNK) cap = in->end + CHUNK;
  char *buf = realloc(in->buf, cap);
  if (buf == NULL) return UV_ENOMEM;
  in->buf = buf;
  in->cap = cap;
  return 0;
}

static void release(cli_input_t *in) {
  free(in->buf);
  in->buf = NULL;
  in->start = in->end = in->cap = in->scanned = 0;
  if (in->own_fd && !in->is_stream) {
    uv_fs_t req;
    uv_fs_close(in->loop, &req, in->fd, NULL);
    uv_fs_req_cleanup(&req);
  }
}

/* ---- Streams ------------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  cli_input_t *in = h->data;
  (void)suggested;
  int err = make_room(in);
  if (err) {
    /* libuv then reports UV_ENOBUFS; keep the real cause. */
    in->error = err;
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  *buf = uv_buf_init(in->buf + in->end, (unsigned)(in->cap - in->end));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  cli_input_t *in = s->data;
  (void)buf;
  if (nread == 0) return; /* nothing this time (EAGAIN) */
  if (nread > 0) {
    in->end += (size_t)nread;
  } else {
    if (nread == UV_EOF)
      in->eof = 1;
    else if (in->error == 0)
      in->error = (int)nread;
    uv_read_stop(s);
    in->reading = 0;
  }
  in->on_data(in);
}

static void on_stream_closed(uv_handle_t *h) {
  release(h->data);
}

/* ---- Files --------------------------------------------------------------------- */

static void on_fs_read(uv_fs_t *req);

static int issue_read(cli_input_t *in) {
  if (in->req_active || in->eof || in->error || !in->want || in->closing) return 0;
  int err = make_room(in);
  if (err == 0) {
    uv_buf_t b = uv_buf_init(in->buf + in->end, CHUNK);
    in->req.data = in;
    /* Offset -1: the file's own position, so stdin redirected from a file
     * is read from wherever the shell left it. */
    err = uv_fs_read(in->loop, &in->req, in->fd, &b, 1, -1, on_fs_read);
  }
  if (err) {
    in->error = err;
    return err;
  }
  in->req_active = 1;
  return 0;
}

static void on_fs_read(uv_fs_t *req) {
  cli_input_t *in = req->data;
  ssize_t r = req->result;
  uv_fs_req_cleanup(req);
  in->req_active = 0;
  if (in->closing) {
    release(in);
    return;
  }
  if (r > 0)
    in->end += (size_t)r;
  else if (r == 0)
    in->eof = 1;
  else
    in->error = (int)r;
  in->on_data(in);
  if (in->closing || in->error) return;
  if (issue_read(in) != 0) in->on_data(in);
}

/* ---- API ------------------------------------------------------------------------- */

int cli_input_open(uv_loop_t *loop, cli_input_t *in, uv_file fd, int own_fd, size_t max_size,
                   cli_input_cb on_data) {
  void *data = in->data;
  memset(in, 0, sizeof *in);
  in->data = data;
  in->loop = loop;
  in->fd = fd;
  in->own_fd = own_fd != 0;
  in->max_size = max_size;
  in->on_data = on_data;
  int err = 0;
  switch (uv_guess_handle(fd)) {
  case UV_FILE: return 0;
  case UV_TTY: err = uv_tty_init(loop, &in->h.tty, fd, 1); break;
  case UV_NAMED_PIPE:
    err = uv_pipe_init(loop, &in->h.pipe, 0);
    if (err == 0) {
      err = uv_pipe_open(&in->h.pipe, fd);
      if (err) uv_close(&in->h.handle, NULL);
    }
    break;
  case UV_TCP:
    err = uv_tcp_init(loop, &in->h.tcp);
    if (err == 0) {
      err = uv_tcp_open(&in->h.tcp, fd);
      if (err) uv_close(&in->h.handle, NULL);
    }
    break;
  default: return UV_EINVAL;
  }
  if (err) return err;
  in->is_stream = 1;
  in->h.handle.data = in;
  return 0;
}

int cli_input_resume(cli_input_t *in) {
  if (in->closing) return 0;
  in->want = 1;
  if (!in->is_stream) return issue_read(in);
  if (in->reading || in->eof || in->error) return 0;
  int err = uv_read_start(&in->h.stream, on_alloc, on_read);
  if (err) {
    in->error = err;
    return err;
  }
  in->reading = 1;
  return 0;
}

void cli_input_pause(cli_input_t *in) {
  in->want = 0;
  if (in->is_stream && in->reading) {
    uv_read_stop(&in->h.stream);
    in->reading = 0;
  }
}

int cli_input_line(cli_input_t *in, const char **line, size_t *len) {
  size_t avail = in->end - in->start;
  if (avail > in->scanned) {
    const char *from = in->buf + in->start;
    const char *nl = memchr(from + in->scanned, '\n', avail - in->scanned);
    if (nl != NULL) {
      *line = from;
      *len = (size_t)(nl - from);
      in->last_taken = *len + 1;
      in->start += in->last_taken;
      in->scanned = 0;
      return CLI_INPUT_LINE;
    }
    in->scanned = avail;
  }
  if (avail > in->max_size) return UV_E2BIG;
  if (in->error) return in->error;
  if (!in->eof) return CLI_INPUT_MORE;
  if (avail == 0) return CLI_INPUT_END;
  *line = in->buf + in->start;
  *len = avail;
  in->last_taken = avail;
  in->start = in->end;
  in->scanned = 0;
  return CLI_INPUT_LINE;
}

void cli_input_unread(cli_input_t *in) {
  in->start -= in->last_taken;
  in->last_taken = 0;
  in->scanned = 0;
}

const char *cli_input_bytes(const cli_input_t *in, size_t *len) {
  *len = in->end - in->start;
  return in->buf != NULL ? in->buf + in->start : "";
}

void cli_input_close(cli_input_t *in) {
  if (in->closing) return;
  in->closing = 1;
  in->want = 0;
  if (in->is_stream) {
    if (in->reading) uv_read_stop(&in->h.stream);
    in->reading = 0;
    uv_close(&in->h.handle, on_stream_closed);
  } else if (in->req_active) {
    /* The read finishes (or is cancelled) and on_fs_read releases. */
    uv_cancel((uv_req_t *)&in->req);
  } else {
    release(in);
  }
}
