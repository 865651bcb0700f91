// Peer: @atproto/sync's Firehose as it ships (commit signature + MST proof verification via
// verifyProofs, DID keys through @atproto/identity's IdResolver pointed at the loopback PLC),
// filtered to the collections atmx indexes, so both do the same job.
//   node benchmarks/node/consumer.mjs ws://127.0.0.1:PORT http://127.0.0.1:PLC LAST_SEQ [all]
// Prints {"end": <wall time s>, "events": n, "verified": v, "errors": e} once LAST_SEQ is handled,
// then waits to be stopped.
// With "all" as 4th argument, every collection is verified (no filter).
import { Firehose } from '@atproto/sync'
import { IdResolver, MemoryCache } from '@atproto/identity'

const [service, plcUrl, lastArg, mode] = process.argv.slice(2)
const lastSeq = Number(lastArg)
const idResolver = new IdResolver({ plcUrl, didCache: new MemoryCache() })
let events = 0
let verified = 0
let errors = 0
let done = false
// The Firehose hands us parsed writes only; the seq of every frame is seen via a getCursor-free
// wrapper: count in handleEvent, and detect the end from the raw seq in the event.
const firehose = new Firehose({
  service,
  idResolver,
  // handles in the corpus are not in DNS; atmx uses a trusted resolver for them instead
  unauthenticatedHandles: true,
  filterCollections: mode === 'all' ? undefined : ['org.xmtp.inbox', 'at.didcomm.keyPackage'],
  handleEvent: async (evt) => {
    events += 1
    if (evt.event === 'create' || evt.event === 'update' || evt.event === 'delete') verified += 1
  },
  onError: (err) => {
    errors += 1
    if (errors <= 3) console.error(String(err), err.cause ? String(err.cause) : '')
  },
})
// Firehose does not expose the seq of filtered-out events; watch the subscription's raw stream.
const origParse = firehose.parseEvt.bind(firehose)
firehose.parseEvt = async (evt) => {
  const out = await origParse(evt)
  if (evt.seq === lastSeq && !done) {
    done = true
    console.log(JSON.stringify({ end: Date.now() / 1000, events, verified, errors }))
    // stay alive until the harness stops us, so that it can read our CPU time
    firehose.destroy().catch(() => {})
    setInterval(() => {}, 1 << 30)
  }
  return out
}
firehose.start()
