/* Reading an input (stdin or a file) on the loop without blocking it: a
 * pipe, socket or terminal is read as a libuv stream, a regular file (or
 * anything else uv_guess_handle() calls a file) with uv_fs_read. The bytes
 * gather in one buffer the caller takes lines or the whole from; reading
 * pauses and resumes on request, which is how uvmqtt-pub applies
 * backpressure. */
#ifndef UVMQTT_CLI_INPUT_H
#define UVMQTT_CLI_INPUT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct cli_input_s cli_input_t;

/* New bytes arrived, the input ended (eof) or failed (error). */
typedef void (*cli_input_cb)(cli_input_t *in);

/* cli_input_line() results besides negative errors. */
#define CLI_INPUT_MORE 0 /* no complete line yet: resume reading */
#define CLI_INPUT_LINE 1 /* *line, *len hold the next line, without its '\n' */
#define CLI_INPUT_END  2 /* the input ended and every line was taken */

struct cli_input_s {
  void *data; /* the caller's */
  uv_loop_t *loop;
  cli_input_cb on_data;
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_pipe_t pipe;
    uv_tty_t tty;
    uv_tcp_t tcp;
  } h;
  uv_fs_t req;
  uv_file fd;
  size_t max_size; /* the largest line (or whole input) accepted */
  char *buf;
  size_t start;      /* the first byte not yet taken */
  size_t scanned;    /* bytes from start known to hold no '\n' */
  size_t last_taken; /* bytes the last cli_input_line() took, for unread */
  size_t end;
  size_t cap;
  int error; /* a negative libuv error once reading failed */
  uint8_t is_stream;
  uint8_t own_fd;
  uint8_t want;       /* the caller wants bytes */
  uint8_t reading;    /* a stream read is started */
  uint8_t req_active; /* a uv_fs_read is in flight */
  uint8_t eof;
  uint8_t closing;
};

/* Prepares reading `fd`. `own_fd`: close it when the input is closed.
 * Nothing is read before cli_input_resume(). Returns 0 or a libuv error
 * (then the input needs no cli_input_close()). */
int cli_input_open(uv_loop_t *loop, cli_input_t *in, uv_file fd, int own_fd, size_t max_size,
                   cli_input_cb on_data);

/* Starts or continues reading; on_data runs as bytes come. Returns 0 or
 * the libuv error that kept reading from starting (also kept in `error`). */
int cli_input_resume(cli_input_t *in);

/* Stops asking for bytes (a read already in flight still lands). */
void cli_input_pause(cli_input_t *in);

/* Takes the next line. The view stays valid until reading resumes. After
 * the end, a last line without '\n' is returned too. Returns CLI_INPUT_*
 * or UV_E2BIG for a line longer than max_size, or the read error. */
int cli_input_line(cli_input_t *in, const char **line, size_t *len);

/* Gives back the line the last cli_input_line() returned, so the next
 * call returns it again: for a line that cannot be handled yet. Only
 * before reading resumes. */
void cli_input_unread(cli_input_t *in);

/* The bytes not yet taken (the whole input, once eof is set). */
const char *cli_input_bytes(const cli_input_t *in, size_t *len);

/* Closes the handle (or waits for the read in flight) and frees the
 * buffer; the loop finishes it. */
void cli_input_close(cli_input_t *in);

#endif
