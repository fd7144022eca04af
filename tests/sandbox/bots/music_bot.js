// A discord.js music bot that also records: joins your voice channel, plays files, listens.
//
//   DISCORD_TOKEN=... node music_bot.js
//
// Commands, in any text channel of a guild: `!join` (or `/join`) joins the voice channel you
// are in, `!play <file>` plays an Ogg/Opus file, `!listen` starts recording everyone,
// `!save` writes each speaker's Opus packets to $RECORDINGS/<user id>.hex (one packet per
// line, hex) and says how many, `!leave` leaves. Only discord.js's and @discordjs/voice's
// public API: nothing here knows about voxgate.
const { createReadStream, mkdirSync, writeFileSync } = require('node:fs');
const path = require('node:path');
const { Client, Events, GatewayIntentBits } = require('discord.js');
const {
  AudioPlayerStatus,
  EndBehaviorType,
  StreamType,
  VoiceConnectionStatus,
  createAudioPlayer,
  createAudioResource,
  entersState,
  getVoiceConnection,
  joinVoiceChannel,
} = require('@discordjs/voice');

const client = new Client({
  intents: [
    GatewayIntentBits.Guilds,
    GatewayIntentBits.GuildVoiceStates,
    GatewayIntentBits.GuildMessages,
    GatewayIntentBits.MessageContent,
  ],
});
const recordings = process.env.RECORDINGS ?? 'recordings';
const player = createAudioPlayer();
let heard = new Map();

client.once(Events.ClientReady, async (ready) => {
  for (const guild of ready.guilds.cache.values()) {
    const voice = guild.channels.cache.filter((channel) => channel.isVoiceBased());
    console.log(`ready as ${ready.user.id} in guild ${guild.id} voice channels ${[...voice.keys()].join(' ')}`);
  }
  await ready.application.commands.set([{ name: 'join', description: 'Join the voice channel you are in' }]);
});
client.on(Events.ShardResume, () => console.log('resumed'));

async function join(member) {
  const channel = member.voice.channel;
  if (!channel) return 'join a voice channel first';
  const connection = joinVoiceChannel({
    guildId: channel.guild.id,
    channelId: channel.id,
    adapterCreator: channel.guild.voiceAdapterCreator,
    selfDeaf: false,
  });
  // The reconnect recipe of discord.js's guide: a moved bot or a new voice server signals
  // again by itself; anything else is a real disconnect.
  connection.on(VoiceConnectionStatus.Disconnected, async () => {
    try {
      await Promise.race([
        entersState(connection, VoiceConnectionStatus.Signalling, 5_000),
        entersState(connection, VoiceConnectionStatus.Connecting, 5_000),
      ]);
    } catch {
      connection.destroy();
    }
  });
  await entersState(connection, VoiceConnectionStatus.Ready, 20_000);
  connection.subscribe(player);
  return `joined ${channel.id}`;
}

function listen(connection) {
  heard = new Map();
  connection.receiver.speaking.on('start', (userId) => {
    if (heard.has(userId)) return;
    const packets = [];
    heard.set(userId, packets);
    const stream = connection.receiver.subscribe(userId, { end: { behavior: EndBehaviorType.Manual } });
    stream.on('data', (opus) => packets.push(Buffer.from(opus)));
  });
}

function save() {
  mkdirSync(recordings, { recursive: true });
  const summary = [];
  for (const [userId, packets] of heard) {
    writeFileSync(path.join(recordings, `${userId}.hex`), packets.map((p) => p.toString('hex') + '\n').join(''));
    summary.push(`${packets.length} packets from ${userId}`);
  }
  return `saved ${summary.join(', ') || 'nothing'}`;
}

client.on(Events.MessageCreate, async (message) => {
  if (message.author.bot || !message.guild || !message.content.startsWith('!')) return;
  const [command, ...words] = message.content.slice(1).split(' ');
  const connection = getVoiceConnection(message.guild.id);
  try {
    if (command === 'join') {
      await message.channel.send(await join(message.member));
    } else if (command === 'leave') {
      connection?.destroy();
      await message.channel.send('left');
    } else if (!connection) {
      if (['play', 'listen'].includes(command)) await message.channel.send('not in a voice channel: !join first');
    } else if (command === 'play') {
      const file = words.join(' ');
      player.play(createAudioResource(createReadStream(file), { inputType: StreamType.OggOpus }));
      await entersState(player, AudioPlayerStatus.Playing, 10_000);
      await message.channel.send(`playing ${path.basename(file)}`);
      await entersState(player, AudioPlayerStatus.Idle, 600_000);
      await message.channel.send(`finished ${path.basename(file)}`);
    } else if (command === 'listen') {
      listen(connection);
      await message.channel.send('listening');
    } else if (command === 'save') {
      await message.channel.send(save());
    }
  } catch (error) {
    console.error(error);
    await message.channel.send(`error: ${error.message}`);
  }
});

client.on(Events.InteractionCreate, async (interaction) => {
  if (!interaction.isChatInputCommand() || interaction.commandName !== 'join') return;
  await interaction.deferReply();
  await interaction.editReply(await join(interaction.member));
});

client.login(process.env.DISCORD_TOKEN);
