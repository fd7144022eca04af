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
    debug: { type: 'boolean', default: false },
  },
});
const command = positionals[0];
if (!['play', 'receive'].includes(command) || !values.join) {
  console.error('usage: client.mjs play|receive --join JOIN.json [--file F] [--out F] [--seconds N]');
  process.exit(2);
}

const emit = (event, fields = {}) =>
  console.log(JSON.stringify({ event, t: performance.now() / 1000, ...fields }));
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
  // Debug output is the only public view of the gateway messages the library receives.
  debug: true,
});
connection.on('stateChange', (from, to) => emit('state', { from: from.status, to: to.status }));
connection.on('error', (error) => emit('error', { error: String(error) }));
connection.on('debug', (message) => {
  if (values.debug) console.error(message);
  const received = /<< (\{.*\})$/.exec(message);
  if (received) {
    const packet = JSON.parse(received[1]);
    emit('ws', { op: packet.op, seq: packet.seq ?? null, d: packet.d });
  }
});

function record(out) {
  const sink = createWriteStream(out);
  const subscribed = new Set();
  let packets = 0;
  connection.receiver.speaking.on('start', (userId) => {
    emit('speaking', { user_id: userId });
    if (subscribed.has(userId)) return;
    subscribed.add(userId);
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
  connection.destroy();
  emit('closed');
  process.exit(0);
} catch (error) {
  emit('error', { error: String(error?.stack ?? error) });
  connection.destroy();
  process.exit(1);
}
