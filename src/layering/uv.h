/* The codec and session layers are sans-I/O: they take bytes and time and
 * give bytes and events. This header stands first on their include path so
 * that including <uv.h> there fails the build instead of quietly coupling
 * the protocol state to libuv or OpenSSL. */
#error "the codec and session layers must not include <uv.h>"
