"""A discord.py bot without the voice-states intent: its ``connect()`` must time out.

discord.py documents that joining voice requires ``Intents.voice_states``: without it
Discord never sends the bot its own VOICE_STATE_UPDATE, and ``connect()`` waits for it
until the timeout. The bot says which happened.
"""

import os

import discord

intents = discord.Intents.default()
intents.voice_states = False
client = discord.Client(intents=intents)


@client.event
async def on_ready() -> None:
    channel = client.guilds[0].voice_channels[0]
    try:
        await channel.connect(timeout=5)
    except TimeoutError:
        print("connect timed out", flush=True)
    else:
        print("connected", flush=True)
    await client.close()


client.run(os.environ["DISCORD_TOKEN"])
