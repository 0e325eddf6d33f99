// Loaded before the SDK (node --require): every connection to anything but this
// machine is refused and reported on stderr as "BLOCKED host:port", so the test
// fails on any attempt (telemetry, update checks) instead of reaching the network.
const net = require("net");

const loopback = (host) =>
  host === undefined || host === null || host === "" ||
  host === "127.0.0.1" || host === "localhost" || host === "::1";

const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
  let options = args[0];
  if (Array.isArray(options)) options = options[0];
  if (options && typeof options === "object") {
    if (options.path) return connect.apply(this, args);
    var host = options.host, port = options.port;
  } else {
    var port = args[0], host = typeof args[1] === "string" ? args[1] : undefined;
  }
  if (!loopback(host)) {
    process.stderr.write(`BLOCKED ${host}:${port}\n`);
    process.nextTick(() => this.destroy(new Error(`the test allows no connection to ${host}`)));
    return this;
  }
  return connect.apply(this, args);
};
