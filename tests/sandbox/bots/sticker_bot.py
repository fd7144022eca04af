"""A discord.py bot that asks for something the sandbox does not serve (sticker packs)."""

import os

import discord

client = discord.Client(intents=discord.Intents.default())


@client.event
async def on_ready() -> None:
    try:
        packs = await client.fetch_premium_sticker_packs()
    except discord.NotFound as error:
        print(f"not found: {error.text}", flush=True)
    else:
        print(f"{len(packs)} sticker packs", flush=True)
    await client.close()


client.run(os.environ["DISCORD_TOKEN"])
