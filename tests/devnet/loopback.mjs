// loopback.mjs: make every TCP server started in this process bind to loopback.
// @atproto/pds and @did-plc/server call app.listen(port), which binds all interfaces,
// and neither has a bind-host option. Importing this module first pins the host to
// DEVNET_BIND (default 127.0.0.1), so the test network is never reachable from outside.
import net from 'node:net'

export const BIND = process.env.DEVNET_BIND || '127.0.0.1'
if (!/^(127\.\d+\.\d+\.\d+|::1|localhost)$/.test(BIND)) {
  throw new Error(`DEVNET_BIND must be a loopback address, got ${BIND}`)
}

const origListen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  const a0 = args[0]
  if (a0 === undefined || typeof a0 === 'function') {
    args.unshift(0, BIND) // listen() / listen(cb): any port, loopback
  } else if (typeof a0 === 'number' || (typeof a0 === 'string' && /^\d+$/.test(a0))) {
    // listen(port[, host][, backlog][, cb]): force the host
    if (typeof args[1] === 'string') args[1] = BIND
    else args.splice(1, 0, BIND)
  } else if (a0 && typeof a0 === 'object' && !a0.path && !a0._handle && !a0.fd) {
    args[0] = { ...a0, host: BIND }
  }
  return origListen.apply(this, args)
}
