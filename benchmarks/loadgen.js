// `forgetless bench overhead`'s load generator for the requests/s test: autocannon (installed in .tools/ by
// `make install`), driven from here so that every request can carry a new prompt of a realistic length.
// autocannon's own `--idReplacement` puts a 22-character random id in each body, which the router's tokenizer
// cuts into some 25 word pieces: every prompt would be mostly noise, and ~25 tokens longer than the user's.
//
// usage: node loadgen.js URL CONNECTIONS SECONDS PROMPTS.json MODE [FIRST]
//   PROMPTS.json: a JSON list of prompt texts; MODE: "new" (request i, counted from FIRST (default 0), sends
//   prompt i mod n followed by " (#i)", so no two requests of a run carry the same text) or "repeat" (every
//   request the first prompt). Consecutive runs against one gateway pass FIRST = the last run's FIRST + `sent`:
//   numbers from 0 again would resend texts still in the router's decision cache.
// Prints autocannon's result as one JSON object (the same fields as `autocannon -j`) with `sent` added: how many
// numbered texts the run used.
'use strict'
const fs = require('fs')
const autocannon = require('autocannon')

const [url, connections, seconds, promptsFile, mode, firstArg = '0'] = process.argv.slice(2)
const prompts = JSON.parse(fs.readFileSync(promptsFile, 'utf8'))
const first = Number(firstArg)
if (!Array.isArray(prompts) || prompts.length === 0 || mode !== 'new' && mode !== 'repeat' ||
    !Number.isSafeInteger(first) || first < 0) {
  console.error('usage: node loadgen.js URL CONNECTIONS SECONDS PROMPTS.json new|repeat [FIRST]')
  process.exit(2)
}
let sent = 0 // module-wide: every connection's requests draw from one counter
function body (text) {
  return JSON.stringify({ model: 'auto', max_tokens: 1, messages: [{ role: 'user', content: text }] })
}
const request = mode === 'new'
  ? { setupRequest: (req) => { const i = first + sent++; return { ...req, body: body(`${prompts[i % prompts.length]} (#${i})`) } } }
  : { body: body(prompts[0]) }
autocannon({
  url,
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  connections: Number(connections),
  duration: Number(seconds),
  requests: [request]
}, (err, result) => {
  if (err) {
    console.error(`autocannon: ${err.message}`)
    process.exit(1)
  }
  process.stdout.write(JSON.stringify({ ...result, sent }) + '\n')
})
