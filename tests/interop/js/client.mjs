// Drive the real @discordjs/voice 0.19 client against a voice server.
//
//   NODE_EXTRA_CA_CERTS=ca.pem node client.mjs play    --join JOIN.json --file tone.ogg [--out packets.jsonl]
//   NODE_EXTRA_CA_CERTS=ca.pem node client.mjs receive --join JOIN.json --seconds 3 --out packets.jsonl
//
// JOIN.json holds the two events a bot gets from Discord's gateway (what `voxgate token`
// prints). The client is driven only through its extension point: joinVoiceChannel with
// our own adapterCreator, fed VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE when the library
// asks to join, as Discord's gateway would. Events are printed as JSON lines on stdout;
// received Opus packets are written one JSON line each: {"user_id", "opus"}.
//
// DAVE: the library's own (daveEncryption, on by default in 0.19; --no-dave turns it off).
// The driver prints the call's privacy code each time it changes ("privacy_code") and, at
// the end, davey's own decryption counters per sender ("dave").
import {
  AudioPlayerStatus,
  EndBehaviorType,
  StreamType,
  VoiceConnectionStatus,
  createAudioPlayer,
  createAudioResource,
  entersState,
  joinVoiceChannel,
} from '@discordjs/voice';
import { createReadStream, createWriteStream, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    join: { type: 'string' },
    file: { type: 'string' },
    out: { type: 'string' },
    seconds: { type: 'string', default: '3' },
    linger: { type: 'string', default: '0.5' },
    'no-dave': { type: 'boolean', default: false },
    e2ee: { type: 'boolean', default: false },
    debug: { type: 'boolean', default: false },
  },
});
const command = positionals[0];
if (!['play', 'receive'].includes(command) || !values.join) {
  console.error('usage: client.mjs play|receive --join JOIN.json [--file F] [--out F] [--seconds N]');
  process.exit(2);
}

// davey gives epochs and counters as BigInts, which JSON cannot hold.
const plain = (key, value) => (typeof value === 'bigint' ? Number(value) : value);
const emit = (event, fields = {}) =>
  console.log(JSON.stringify({ event, t: performance.now() / 1000, ...fields }, plain));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const events = JSON.parse(readFileSync(values.join, 'utf8'));
const state = events.voice_state;

function adapterCreator(methods) {
  return {
    sendPayload() {
      // The library asked the main gateway to join; answer with the two events, later,
      // as the network would.
      setTimeout(() => {
        methods.onVoiceStateUpdate({ ...state, self_deaf: false, self_mute: false });
        methods.onVoiceServerUpdate(events.voice_server);
      }, 20);
      return true;
    },
    destroy() {},
  };
}

const connection = joinVoiceChannel({
  guildId: state.guild_id,
  channelId: state.channel_id,
  adapterCreator,
  selfDeaf: false,
  selfMute: false,
  daveEncryption: !values['no-dave'],
  // Debug output is the only public view of the gateway messages the library receives.
  debug: true,
});
connection.on('stateChange', (from, to) =>
  emit('state', { from: from.status, to: to.status, close_code: to.closeCode ?? null }));
connection.on('error', (error) => emit('error', { error: String(error) }));
connection.on('debug', (message) => {
  if (values.debug) console.error(message);
  const received = /<< (\{.*\})$/.exec(message);
  if (received) {
    const packet = JSON.parse(received[1]);
    emit('ws', { op: packet.op, seq: packet.seq ?? null, d: packet.d });
  }
});

// The library's DAVE session wrapper, while the networking state has one.
const daveSession = () => connection.state.networking?.state?.dave;

const heardFrom = new Set();
// davey forgets a sender's counters when it leaves the group: keep the last ones seen.
const lastStats = {};

function refreshStats() {
  const session = daveSession()?.session;
  for (const userId of heardFrom) {
    try {
      const counts = session?.getDecryptionStats(userId);
      if (counts) {
        lastStats[userId] = {
          successes: counts.successes,
          failures: counts.failures,
          passthroughs: counts.passthroughs,
          attempts: counts.attempts,
        };
      }
    } catch {
      // no decryptor for that user (not, or no longer, in our group)
    }
  }
}

let privacyCode = null;
const privacyWatch = setInterval(() => {
  const code = connection.voicePrivacyCode ?? null;
  if (code !== privacyCode) {
    privacyCode = code;
    emit('privacy_code', { code, epoch: daveSession()?.session?.epoch ?? null });
  }
  refreshStats();
}, 20);

function daveReport() {
  refreshStats();
  const dave = daveSession();
  let encrypted = null;
  try {
    const counts = dave?.session?.getEncryptionStats();
    encrypted = counts ? { successes: counts.successes, failures: counts.failures } : null;
  } catch {
    encrypted = null;
  }
  emit('dave', {
    protocol_version: dave?.protocolVersion ?? 0,
    privacy_code: connection.voicePrivacyCode ?? null,
    decryption: lastStats,
    encryption: encrypted,
  });
}

// --e2ee: start playing only once the call is end-to-end encrypted for us, so that no
// frame goes out in the clear before the group has us (what a careful bot would do).
async function untilEncrypted() {
  while (!daveSession()?.session?.ready) await sleep(10);
  emit('e2ee', { privacy_code: connection.voicePrivacyCode ?? null });
}

function record(out) {
  const sink = createWriteStream(out);
  const subscribed = new Set();
  let packets = 0;
  connection.receiver.speaking.on('start', (userId) => {
    emit('speaking', { user_id: userId });
    if (subscribed.has(userId)) return;
    subscribed.add(userId);
    heardFrom.add(userId);
    const stream = connection.receiver.subscribe(userId, { end: { behavior: EndBehaviorType.Manual } });
    stream.on('data', (opus) => {
      packets += 1;
      sink.write(JSON.stringify({ user_id: userId, opus: Buffer.from(opus).toString('hex') }) + '\n');
    });
  });
  return async () => {
    emit('received', { packets });
    await new Promise((resolve) => sink.end(resolve));
  };
}

try {
  await entersState(connection, VoiceConnectionStatus.Ready, 20_000);
  emit('ready', { mode: connection.state.networking?.state?.connectionData?.encryptionMode });
  const finishRecording = values.out ? record(values.out) : null;
  if (command === 'play') {
    if (values.e2ee) await untilEncrypted();
    const player = createAudioPlayer();
    connection.subscribe(player);
    player.play(createAudioResource(createReadStream(values.file), { inputType: StreamType.OggOpus }));
    await entersState(player, AudioPlayerStatus.Playing, 10_000);
    emit('playing');
    await entersState(player, AudioPlayerStatus.Idle, 120_000);
    emit('played');
    await sleep(Number(values.linger) * 1000);
  } else {
    emit('listening');
    await sleep(Number(values.seconds) * 1000);
  }
  if (finishRecording) await finishRecording();
  daveReport();
  clearInterval(privacyWatch);
  connection.destroy();
  emit('closed');
  process.exit(0);
} catch (error) {
  emit('error', { error: String(error?.stack ?? error) });
  clearInterval(privacyWatch);
  connection.destroy();
  process.exit(1);
}
