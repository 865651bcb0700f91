// Checks atmx's binding proofs with the reference implementation (@atproto/repo), which shares
// no code with atmx's verifier. One JSON object per input line:
//   {"car": "<base64 CAR>", "did": "...", "collection": "...", "rkey": "...", "cid": "bafy...", "didKey": "did:key:..."}
// and one per output line: {"ok": true} or {"ok": false, "error": "..."}.
import { createInterface } from 'node:readline'
import { verifyProofs } from '@atproto/repo'
import { CID } from 'multiformats/cid'

const lines = createInterface({ input: process.stdin })
for await (const line of lines) {
  if (!line.trim()) continue
  let out
  try {
    const q = JSON.parse(line)
    const claims = [{ collection: q.collection, rkey: q.rkey, cid: q.cid ? CID.parse(q.cid) : null }]
    const { verified, unverified } = await verifyProofs(Buffer.from(q.car, 'base64'), claims, q.did, q.didKey)
    out = { ok: verified.length === 1 && unverified.length === 0 }
  } catch (err) {
    out = { ok: false, error: String(err && err.message ? err.message : err) }
  }
  process.stdout.write(JSON.stringify(out) + '\n')
}
