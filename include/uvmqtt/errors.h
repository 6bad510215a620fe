/** \file
 * uvmqtt error codes.
 *
 * Every call that can fail returns a negative int: either one of the codes
 * below or a libuv UV_E* code passed through unchanged. Our codes live at
 * -30000 and below so they never collide with libuv's (-4095..-1).
 * MQTT reason codes sent by a broker are data, never errors: they reach the
 * application as a uint8_t beside the status.
 */
#ifndef UVMQTT_ERRORS_H
#define UVMQTT_ERRORS_H

#ifdef __cplusplus
extern "C" {
#endif

/** XX(name, value, v5 reason code a client sends in DISCONNECT for it, message).
 * The reason column is 0 for errors that are not the peer's fault. */
#define UVMQTT_ERRNO_MAP(XX)                                                                       \
  XX(EMALFORMED, -30001, 0x81, "malformed packet")                                                 \
  XX(EBADTYPE, -30002, 0x81, "reserved or unknown packet type")                                    \
  XX(EBADFLAGS, -30003, 0x81, "reserved fixed-header flag bits set")                               \
  XX(EREMLEN, -30004, 0x81, "remaining length encoded in more than 4 bytes")                       \
  XX(ETOOLARGE, -30005, 0x95, "packet exceeds the maximum packet size")                            \
  XX(EBADQOS, -30006, 0x81, "invalid QoS")                                                         \
  XX(EPACKETID, -30007, 0x82, "packet identifier 0 where one is required")                         \
  XX(EBADUTF8, -30008, 0x81, "malformed or forbidden UTF-8 string")                                \
  XX(ETOPICWILD, -30009, 0x82, "wildcard in a topic name")                                         \
  XX(EBADTOPIC, -30010, 0x82, "invalid topic name or filter")                                      \
  XX(EPROPLEN, -30011, 0x81, "property length overruns the packet")                                \
  XX(EBADPROP, -30012, 0x81, "property not allowed in this packet")                                \
  XX(EDUPPROP, -30013, 0x82, "property appears more than once")                                    \
  XX(EPROPVALUE, -30014, 0x82, "invalid property value")                                           \
  XX(ENOFILTERS, -30015, 0x82, "SUBSCRIBE or UNSUBSCRIBE without topic filters")                   \
  XX(EBADPROTO, -30016, 0x84, "unsupported protocol name or level")                                \
  XX(EBADREASON, -30017, 0x81, "invalid reason code for this packet")                              \
  XX(ETRAILING, -30018, 0x81, "bytes beyond the packet's declared content")                        \
  XX(ESHORT, -30019, 0x81, "packet ends before its declared content")                              \
  XX(EBADCONNECT, -30020, 0x81, "invalid CONNECT flags")                                           \
  XX(EBADSUBOPT, -30021, 0x81, "invalid subscription options")                                     \
  XX(ECLIENTID, -30022, 0x82, "client id not allowed: MQTT 3.1 needs 1 to 23 bytes")               \
  XX(ENOBUFS, -30030, 0, "output buffer too small")                                                \
  XX(EINVAL, -30031, 0, "invalid argument")                                                        \
  XX(ENOMEM, -30032, 0, "out of memory")                                                           \
  XX(EPROTOCOL, -30040, 0x82, "protocol error by the peer")                                        \
  XX(EUNEXPECTED, -30041, 0x82, "packet not allowed in this direction or state")                   \
  XX(EKEEPALIVE, -30042, 0, "keepalive timeout: the peer went silent")                             \
  XX(ENOTCONN, -30043, 0, "not connected")                                                         \
  XX(EREFUSED, -30044, 0, "connection refused by the broker (see reason code)")                    \
  XX(EDISCONNECTED, -30045, 0, "the broker closed the session (see reason code)")                  \
  XX(EQUEUEFULL, -30046, 0, "outgoing queue full")                                                 \
  XX(EEXPIRED, -30047, 0, "message expired before it was sent")                                    \
  XX(EDROPPED, -30048, 0, "message dropped by the overflow rule")                                  \
  XX(ECLOSED, -30049, 0, "client closed")                                                          \
  XX(EQOSNOTSUP, -30050, 0, "QoS above the broker's Maximum QoS")                                  \
  XX(ERETAINNOTSUP, -30051, 0, "retain not available on this broker")                              \
  XX(EPKTTOOBIG, -30052, 0, "packet exceeds the broker's Maximum Packet Size")                     \
  XX(EBADURI, -30053, 0, "invalid or unsupported server URI")                                      \
  XX(EBUSY, -30054, 0, "operation already in progress")                                            \
  XX(EGAVEUP, -30055, 0, "reconnect policy gave up")                                               \
  XX(ETOPICALIAS, -30056, 0x94, "invalid topic alias")                                             \
  XX(ERECVMAX, -30057, 0x93, "peer exceeded our Receive Maximum")                                  \
  XX(ECONNTIMEDOUT, -30058, 0, "connect or CONNACK timed out")                                     \
  XX(ENOSUBS, -30059, 0, "subscription refused by the broker")                                     \
  XX(ETLSHANDSHAKE, -30060, 0,                                                                     \
     "TLS handshake failed: not a TLS peer, or no common version or cipher")                       \
  XX(ETLSUNKNOWNCA, -30061, 0, "TLS: server certificate not issued by a trusted CA")               \
  XX(ETLSHOSTNAME, -30062, 0, "TLS: server certificate does not match the host name")              \
  XX(ETLSEXPIRED, -30063, 0, "TLS: server certificate expired or not yet valid")                   \
  XX(ETLSCERT, -30064, 0, "TLS: server certificate rejected")                                      \
  XX(ETLSCLOSED, -30065, 0, "TLS: connection closed during the handshake")                         \
  XX(ETLSPEERCERT, -30066, 0, "TLS: the broker rejected the client certificate or wants one")      \
  XX(ETLSCONFIG, -30067, 0, "TLS: cannot load the CA, certificate or key, or bad TLS option")      \
  XX(ETLSPROTO, -30068, 0, "TLS: protocol error or fatal alert from the peer")                     \
  XX(ESESSIONLOST, -30069, 0,                                                                      \
     "the broker lost the session before the QoS 2 exchange ended: delivery unknown")              \
  XX(ESTORELOCKED, -30080, 0, "message store in use by another process or store")                  \
  XX(ESTORECORRUPT, -30081, 0, "message store file is corrupt (damaged record or bad header)")     \
  XX(EWSHANDSHAKE, -30090, 0, "WebSocket upgrade refused (status not 101)")                        \
  XX(EWSACCEPT, -30091, 0, "WebSocket: bad or missing Sec-WebSocket-Accept")                       \
  XX(EWSPROTOCOL, -30092, 0, "WebSocket: the server did not select the mqtt subprotocol")          \
  XX(EWSHEADER, -30093, 0, "WebSocket response header too large or malformed")                     \
  XX(EWSUPGRADE, -30094, 0, "WebSocket response lacks Upgrade: websocket or Connection: Upgrade")  \
  XX(EWSFRAME, -30095, 0, "WebSocket: bad frame, or a text frame, from the server")                \
  XX(EWSCLOSED, -30096, 0, "WebSocket: connection closed during the upgrade")                      \
  XX(EPROXY, -30100, 0, "HTTP proxy refused the CONNECT (status not 200)")                         \
  XX(EPROXYAUTH, -30101, 0, "HTTP proxy wants (other) credentials (status 407 or 401)")            \
  XX(EPROXYHEADER, -30102, 0, "HTTP proxy response too large or malformed")                        \
  XX(EPROXYCLOSED, -30103, 0, "HTTP proxy closed the connection before answering")                 \
  XX(EAUTH, -30111, 0x87,                                                                          \
     "enhanced authentication failed: refused by the broker or by the mechanism")                  \
  XX(EAUTHMETHOD, -30112, 0x82, "the broker answered with another authentication method")          \
  XX(ETIMEDOUT, -30113, 0, "no response before the timeout")                                       \
  XX(EV5UNSUPPORTED, -30120, 0, "the broker does not support MQTT 5")

/** The library's error codes: UVMQTT_ followed by each name of UVMQTT_ERRNO_MAP, with its value
 * there. */
typedef enum {
#define UVMQTT_ERR_ENUM(name, val, reason, msg) UVMQTT_##name = (val),
  UVMQTT_ERRNO_MAP(UVMQTT_ERR_ENUM)
#undef UVMQTT_ERR_ENUM
} uvmqtt_errno_t;

/** A message for any error: ours, libuv's, or "unknown error". Never NULL. */
const char *uvmqtt_strerror(int err);

/** The symbolic name ("UVMQTT_EMALFORMED", "ECONNREFUSED"...). Never NULL. */
const char *uvmqtt_err_name(int err);

/** The MQTT 5 DISCONNECT reason code a client sends when it hits this error
 * in data from the peer (0x81 malformed, 0x82 protocol error, 0x95 packet too
 * large...), or 0x80 (unspecified) for errors that are not the peer's. */
int uvmqtt_err_reason(int err);

#ifdef __cplusplus
}
#endif
#endif
