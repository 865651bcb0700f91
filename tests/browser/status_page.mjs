// Drives headless Debian chromium through atmx's status page and prints what it saw as JSON.
//
//   node status_page.mjs <base URL> <screenshot path> <lookup>...
//
// Loads `/`, waits for the index status, then types each lookup (handle, DID or inbox ID)
// into the lookup box and records the rendered proof. The screenshot is taken after the
// first lookup; then the page is narrowed to 390 px (a phone), the first lookup shown again, and
// the page measured for anything wider than the viewport, with a second screenshot (`-390.png`). Env CHROMIUM overrides /usr/bin/chromium. Exit code 0 even when the page
// misbehaves: the Python test asserts on the JSON; a non-zero exit means the driver failed.
import { chromium } from 'playwright-core'

const [base, screenshot, ...lookups] = process.argv.slice(2)
if (!base || !screenshot) {
  console.error('usage: node status_page.mjs <base URL> <screenshot path> <lookup>...')
  process.exit(2)
}
const TIMEOUT = 15000

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
})
const out = { errors: [], failed: [], requests: [], lookups: [] }
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } })
  page.setDefaultTimeout(TIMEOUT)
  // Failed HTTP responses are listed apart (with their path), so the console list is real script errors.
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) out.errors.push(`console: ${msg.text()}`)
  })
  page.on('response', (r) => {
    if (r.status() >= 400) out.failed.push([new URL(r.url()).pathname + new URL(r.url()).search, r.status()])
  })
  page.on('pageerror', (err) => out.errors.push(`pageerror: ${err.message}`))
  page.on('request', (req) => out.requests.push(new URL(req.url()).host))

  const resp = await page.goto(base + '/')
  out.contentType = resp.headers()['content-type']
  out.csp = resp.headers()['content-security-policy'] || null
  await page.waitForSelector('body[data-status-loaded="true"]')
  out.title = await page.title()
  out.status = await page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent
    const counts = {}
    for (const cell of document.querySelectorAll('[data-testid^="count-"]')) counts[cell.dataset.testid] = cell.textContent
    return {
      health: text('health'),
      version: text('version'),
      accounts: text('accounts'),
      cursor: text('cursor'),
      lag: text('lag'),
      idle: text('idle'),
      healthClass: document.getElementById('health').className,
      counts,
      backfillShown: !document.getElementById('backfill').hidden,
      backfillText: text('backfill-text'),
      backfillValue: document.getElementById('backfill-bar').value,
      backfillMax: document.getElementById('backfill-bar').max,
    }
  })

  for (const [i, query] of lookups.entries()) {
    await page.fill('[data-testid="lookup-input"]', query)
    await page.evaluate(() => { delete document.body.dataset.lookupDone })
    await page.click('[data-testid="lookup-submit"]')
    await page.waitForSelector('body[data-lookup-done="true"]')
    const seen = await page.evaluate(() => {
      const error = document.getElementById('lookup-error')
      const result = document.getElementById('lookup-result')
      const identities = [...result.querySelectorAll('[data-testid="identity"]')].map((card) => {
        const fields = {}
        for (const node of card.querySelectorAll('[data-testid]')) {
          if (node.dataset.testid.startsWith('binding-')) continue
          fields[node.dataset.testid] = node.textContent
        }
        fields.mediators = [...card.querySelectorAll('[data-testid="didcomm-mediators"] li')].map((li) => li.textContent)
        fields['history-versions'] = card.querySelectorAll('[data-testid="history-version"]').length
        fields.protocols = [...card.querySelectorAll('[data-testid^="binding-"]')].map((b) => b.dataset.testid.slice(8))
        return fields
      })
      // Markup inside data must arrive as text: no element other than ours may appear.
      const foreign = result.querySelectorAll('img, script, iframe, svg, a:not([data-testid$="-download"]), b').length
      return { error: error.hidden ? null : error.textContent, identities, foreignElements: foreign }
    })
    out.lookups.push({ query, ...seen })
    if (i === 0) await page.screenshot({ path: screenshot, fullPage: true })
  }
  if (!lookups.length) await page.screenshot({ path: screenshot, fullPage: true })
  out.xssFired = await page.evaluate(() => window.__xss === true)
  out.links = await page.evaluate(() =>
    Object.fromEntries([...document.querySelectorAll('footer a[data-testid]')].map((a) => [a.dataset.testid, a.getAttribute('href')])))

  // A phone: 390 CSS pixels wide, with the last lookup's proof on screen. Nothing may be wider.
  await page.setViewportSize({ width: 390, height: 844 })
  if (lookups.length) { // the first lookup's proof (long DIDs, URIs, CIDs) on the narrow screen
    await page.fill('[data-testid="lookup-input"]', lookups[0])
    await page.evaluate(() => { delete document.body.dataset.lookupDone })
    await page.click('[data-testid="lookup-submit"]')
    await page.waitForSelector('body[data-lookup-done="true"]')
  }
  await page.waitForTimeout(200)
  out.narrow = await page.evaluate(() => {
    const width = document.documentElement.clientWidth
    const wider = [...document.querySelectorAll('body *')]
      .filter((node) => node.getBoundingClientRect().right > width + 0.5)
      .map((node) => node.tagName.toLowerCase() + (node.id ? '#' + node.id : '') + (node.dataset.testid ? `[${node.dataset.testid}]` : ''))
    return { viewport: width, scrollWidth: document.documentElement.scrollWidth, wider: wider.slice(0, 10) }
  })
  await page.screenshot({ path: screenshot.replace(/\.png$/, '-390.png'), fullPage: true })
} finally {
  await browser.close()
}
out.requests = [...new Set(out.requests)]
console.log(JSON.stringify(out))
