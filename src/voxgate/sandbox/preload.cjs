// Point an unmodified discord.js bot at a voxgate sandbox:
//
//   VOXGATE_SANDBOX=D/sandbox.json NODE_EXTRA_CA_CERTS=D/tls/ca.pem \
//     node -r /path/to/voxgate/sandbox/preload.cjs bot.js
//
// discord.js spreads @discordjs/rest's DefaultRestOptions into every new Client's `rest`
// options (discord.js src/util/Options.js), so setting its `api` before the bot builds its
// Client sends every REST call to the sandbox; the main gateway's URL comes from the
// sandbox's GET /gateway/bot (SANDBOX.md §1). @discordjs/rest is resolved from the bot's
// file, so it is the very copy discord.js loads (one deduplicated @discordjs/rest), for
// CommonJS and ES module bots alike. NODE_EXTRA_CA_CERTS must be set by whoever starts
// Node (Node reads it once, at start), for the voice WebSocket's TLS.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { createRequire } = require('node:module');

const infoPath = process.env.VOXGATE_SANDBOX;
if (!infoPath) {
  console.error('voxgate preload: set VOXGATE_SANDBOX to the sandbox.json of a running sandbox');
  process.exit(2);
}
const info = JSON.parse(fs.readFileSync(infoPath, 'utf8'));
const main = process.argv[1] ? path.resolve(process.argv[1]) : path.join(process.cwd(), 'bot.js');
const botRequire = createRequire(main);
let rest;
try {
  rest = botRequire('@discordjs/rest');
} catch (error) {
  console.error(`voxgate preload: cannot find @discordjs/rest from ${main}: ${error.message}`);
  process.exit(2);
}
rest.DefaultRestOptions.api = info.api;
if (!process.env.DISCORD_TOKEN) {
  const index = Number(process.env.VOXGATE_BOT ?? 0);
  process.env.DISCORD_TOKEN = info.bots[index].token;
}
