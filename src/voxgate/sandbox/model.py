"""The sandbox's one state model: users, bots, guilds, channels, voice states, messages,
application commands and interactions, and the Discord payloads rendered from them.

Moto-style (STYLE.md §7): REST answers and gateway events are both built here from the
same objects, never stored twice. Nothing here does I/O; the REST routes, the gateway and
the control API read and change the model and then tell whoever must hear about it.

Ids are decimal snowflakes. The fixed objects a run starts with (the owner, the bots, the
default guild and its channels) take ids and tokens derived from the data dir's seed, so
``bots`` keeps its order and its tokens from run to run; objects made while running take
time-based snowflakes after them.
"""

from __future__ import annotations

import base64
import datetime
import enum
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: Discord's epoch (2015-01-01), the zero of a snowflake's timestamp.
DISCORD_EPOCH_MS = 1420070400000

#: The default @everyone permissions Discord gives a new guild (SANDBOX.md §3.3): view,
#: connect, speak, use voice activity among them.
EVERYONE_PERMISSIONS = 104324673

Payload = dict[str, Any]


class ChannelType(enum.IntEnum):
    GUILD_TEXT = 0
    GUILD_VOICE = 2


class Intent(enum.IntFlag):
    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_MODERATION = 1 << 2
    GUILD_EXPRESSIONS = 1 << 3
    GUILD_INTEGRATIONS = 1 << 4
    GUILD_WEBHOOKS = 1 << 5
    GUILD_INVITES = 1 << 6
    GUILD_VOICE_STATES = 1 << 7
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_REACTIONS = 1 << 10
    GUILD_MESSAGE_TYPING = 1 << 11
    DIRECT_MESSAGES = 1 << 12
    DIRECT_MESSAGE_REACTIONS = 1 << 13
    DIRECT_MESSAGE_TYPING = 1 << 14
    MESSAGE_CONTENT = 1 << 15
    GUILD_SCHEDULED_EVENTS = 1 << 16
    AUTO_MODERATION_CONFIGURATION = 1 << 20
    AUTO_MODERATION_EXECUTION = 1 << 21
    GUILD_MESSAGE_POLLS = 1 << 24
    DIRECT_MESSAGE_POLLS = 1 << 25


ALL_INTENTS = int(sum(Intent))
PRIVILEGED_INTENTS = int(Intent.GUILD_MEMBERS | Intent.GUILD_PRESENCES | Intent.MESSAGE_CONTENT)
#: The privileged intents by the names a bot's developer portal gives them.
PRIVILEGED_INTENT_NAMES = {
    "members": int(Intent.GUILD_MEMBERS),
    "presences": int(Intent.GUILD_PRESENCES),
    "message_content": int(Intent.MESSAGE_CONTENT),
}


def privileged_mask(allowed: bool | str | Iterable[str]) -> int:
    """The intent bits ``allowed`` approves: True all three, False none, or names from
    :data:`PRIVILEGED_INTENT_NAMES` (a list, or one comma-separated string; ``"all"`` and
    ``"none"`` too). Raises ``ValueError`` for an unknown name."""
    if isinstance(allowed, bool):
        return PRIVILEGED_INTENTS if allowed else 0
    names = allowed.split(",") if isinstance(allowed, str) else list(allowed)
    mask = 0
    for name in (name.strip() for name in names):
        if name in ("", "none"):
            continue
        if name == "all":
            mask |= PRIVILEGED_INTENTS
        elif name in PRIVILEGED_INTENT_NAMES:
            mask |= PRIVILEGED_INTENT_NAMES[name]
        else:
            known = ", ".join(["all", "none", *PRIVILEGED_INTENT_NAMES])
            raise ValueError(f"unknown privileged intent {name!r} (known: {known})")
    return mask


def iso(ts: float) -> str:
    """An ISO 8601 timestamp as Discord writes them."""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat()


def snowflake_time(snowflake: int) -> float:
    return ((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000


class Snowflakes:
    """Makes snowflakes: fixed ones from a base time, running ones from the clock."""

    def __init__(self, base_ms: int) -> None:
        self._base = max(base_ms - DISCORD_EPOCH_MS, 1)
        self._fixed = 0
        self._last = 0

    def fixed(self) -> int:
        """The next id of the run's fixed objects: the same sequence every run."""
        self._fixed += 1
        return (self._base << 22) | self._fixed

    def new(self) -> int:
        """A time-based id, always greater than every id made before it."""
        candidate = ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (1 << 17)
        self._last = max(candidate, self._last + 1, (self._base << 22) + (1 << 17))
        return self._last


@dataclass
class User:
    id: int
    username: str
    bot: bool = False
    global_name: str | None = None


@dataclass
class Bot:
    """A bot account: its user, the token it logs in with and its application."""

    user: User
    token: str
    application_id: int


@dataclass
class Role:
    id: int
    name: str
    permissions: int
    position: int = 0


@dataclass
class Channel:
    id: int
    guild_id: int
    type: ChannelType
    name: str
    position: int = 0
    bitrate: int = 64000
    user_limit: int = 0


@dataclass
class Member:
    user_id: int
    joined_at: str
    roles: list[int] = field(default_factory=list)
    nick: str | None = None


@dataclass
class VoiceState:
    user_id: int
    guild_id: int
    channel_id: int
    session_id: str
    self_mute: bool = False
    self_deaf: bool = False
    mute: bool = False
    deaf: bool = False


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, Role] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)
    voice_states: dict[int, VoiceState] = field(default_factory=dict)


@dataclass
class Message:
    id: int
    channel_id: int
    guild_id: int | None
    author_id: int
    content: str
    timestamp: float
    embeds: list[Payload] = field(default_factory=list)
    components: list[Payload] = field(default_factory=list)
    attachments: list[Payload] = field(default_factory=list)
    flags: int = 0
    tts: bool = False
    nonce: str | int | None = None
    edited_at: float | None = None
    #: Set for messages sent through an interaction's webhook (replies and follow-ups).
    webhook_id: int | None = None
    interaction_id: int | None = None
    type: int = 0


@dataclass
class ApplicationCommand:
    id: int
    application_id: int
    guild_id: int | None
    name: str
    description: str
    type: int = 1
    options: list[Payload] = field(default_factory=list)
    default_member_permissions: str | None = None
    nsfw: bool = False
    version: int = 0
    #: Fields of the registration we do not interpret, echoed back (localizations...).
    extra: Payload = field(default_factory=dict)


class InteractionType(enum.IntEnum):
    PING = 1
    APPLICATION_COMMAND = 2


@dataclass
class Interaction:
    """An application command a user invoked, and everything the bot answered through it."""

    id: int
    application_id: int
    token: str
    guild_id: int
    channel_id: int
    user_id: int
    command: ApplicationCommand
    options: list[Payload]
    created_at: float
    #: The callback bodies the bot posted, in order (``{"type": 4, "data": {...}}``).
    callbacks: list[Payload] = field(default_factory=list)
    #: The message the first reply created (or a deferred reply will fill in).
    original_message_id: int | None = None
    #: Follow-up messages posted through the interaction's webhook.
    followup_message_ids: list[int] = field(default_factory=list)

    @property
    def acknowledged(self) -> bool:
        return bool(self.callbacks)


_MENTION = re.compile(r"<@!?(\d{1,20})>")


def _derive(seed: bytes, label: str, size: int) -> bytes:
    return hmac.new(seed, label.encode(), hashlib.sha256).digest()[:size]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def bot_token(seed: bytes, user_id: int, index: int) -> str:
    """A Discord-shaped bot token (``base64(user id).<6 bytes>.<27 chars>``), the same for
    one data dir's bot ``index`` every run."""
    head = base64.b64encode(str(user_id).encode()).decode().rstrip("=")
    middle = _b64(_derive(seed, f"bot-token-time:{index}", 4))
    tail = _b64(_derive(seed, f"bot-token:{index}", 20))[:27]
    return f"{head}.{middle}.{tail}"


class ModelError(Exception):
    """A request the model refuses; ``status`` and ``code`` as Discord's JSON errors carry."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class SandboxModel:
    """Every object of one sandbox, and the payloads Discord renders from them."""

    def __init__(self, seed: bytes, base_ms: int, bots: int = 2) -> None:
        if not 0 <= bots <= 50:
            raise ValueError("a sandbox has 0 to 50 bots")
        self.ids = Snowflakes(base_ms)
        self.started_at = time.time()
        self.users: dict[int, User] = {}
        self.bots: list[Bot] = []
        self.bots_by_token: dict[str, Bot] = {}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, list[Message]] = {}
        self.commands: dict[int, ApplicationCommand] = {}
        self.interactions: dict[int, Interaction] = {}
        self.interactions_by_token: dict[str, Interaction] = {}

        self.owner = self._add_user(self.ids.fixed(), "owner", bot=False)
        guild_id = self.ids.fixed()
        voice_id, text_id = self.ids.fixed(), self.ids.fixed()
        for index in range(bots):
            user = self._add_user(self.ids.fixed(), f"testbot{index + 1}", bot=True)
            bot = Bot(user, bot_token(seed, user.id, index), application_id=user.id)
            self.bots.append(bot)
            self.bots_by_token[bot.token] = bot
        self.default_guild = self._add_guild(guild_id, "voxgate sandbox")
        self.default_voice_channel = self._add_channel(
            self.default_guild, voice_id, ChannelType.GUILD_VOICE, "General"
        )
        self.default_text_channel = self._add_channel(
            self.default_guild, text_id, ChannelType.GUILD_TEXT, "general"
        )

    # --- building ------------------------------------------------------------------------

    def _add_user(self, user_id: int, username: str, *, bot: bool) -> User:
        user = User(user_id, username, bot=bot)
        self.users[user_id] = user
        return user

    def _add_guild(self, guild_id: int, name: str) -> Guild:
        guild = Guild(guild_id, name, owner_id=self.owner.id)
        # @everyone's id is the guild's (SANDBOX.md §3.3).
        guild.roles[guild_id] = Role(guild_id, "@everyone", EVERYONE_PERMISSIONS)
        self.guilds[guild_id] = guild
        self.add_member(guild, self.owner.id)
        for bot in self.bots:
            self.add_member(guild, bot.user.id)
        return guild

    def _add_channel(self, guild: Guild, channel_id: int, kind: ChannelType, name: str) -> Channel:
        position = sum(1 for channel in guild.channels.values() if channel.type == kind)
        channel = Channel(channel_id, guild.id, kind, name, position=position)
        guild.channels[channel_id] = channel
        self.channels[channel_id] = channel
        self.messages.setdefault(channel_id, [])
        return channel

    def create_user(self, name: str, *, bot: bool = False) -> User:
        """A simulated human user (or another bot-flagged user), a member of every guild."""
        if not isinstance(name, str) or not 1 <= len(name) <= 32:
            raise ModelError(400, 50035, "a user name is 1-32 characters")
        user = self._add_user(self.ids.new(), name, bot=bot)
        for guild in self.guilds.values():
            self.add_member(guild, user.id)
        return user

    def create_guild(self, name: str) -> Guild:
        if not isinstance(name, str) or not 2 <= len(name) <= 100:
            raise ModelError(400, 50035, "a guild name is 2-100 characters")
        guild = self._add_guild(self.ids.new(), name)
        for user in self.users.values():
            if user.id not in guild.members:
                self.add_member(guild, user.id)
        return guild

    def create_channel(self, guild_id: int, name: str, kind: ChannelType) -> Channel:
        guild = self.guild(guild_id)
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise ModelError(400, 50035, "a channel name is 1-100 characters")
        return self._add_channel(guild, self.ids.new(), kind, name)

    def add_member(self, guild: Guild, user_id: int) -> Member:
        member = guild.members.get(user_id)
        if member is None:
            member = guild.members[user_id] = Member(user_id, iso(time.time()))
        return member

    # --- lookups -------------------------------------------------------------------------

    def guild(self, guild_id: int) -> Guild:
        guild = self.guilds.get(guild_id)
        if guild is None:
            raise ModelError(404, 10004, "Unknown Guild")
        return guild

    def channel(self, channel_id: int) -> Channel:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise ModelError(404, 10003, "Unknown Channel")
        return channel

    def user(self, user_id: int) -> User:
        user = self.users.get(user_id)
        if user is None:
            raise ModelError(404, 10013, "Unknown User")
        return user

    def bot_for_token(self, token: str) -> Bot | None:
        return self.bots_by_token.get(token)

    def bot_by_user(self, user_id: int) -> Bot | None:
        return next((bot for bot in self.bots if bot.user.id == user_id), None)

    def guilds_of(self, user_id: int) -> list[Guild]:
        return [guild for guild in self.guilds.values() if user_id in guild.members]

    def voice_state(self, guild_id: int, user_id: int) -> VoiceState | None:
        guild = self.guilds.get(guild_id)
        return None if guild is None else guild.voice_states.get(user_id)

    # --- messages, commands, interactions ------------------------------------------------

    def add_message(self, channel_id: int, author_id: int, content: str, **fields: Any) -> Message:
        channel = self.channel(channel_id)
        if channel.type != ChannelType.GUILD_TEXT and channel.type != ChannelType.GUILD_VOICE:
            raise ModelError(400, 50008, "Cannot send messages in a non-text channel")
        message = Message(
            self.ids.new(), channel_id, channel.guild_id, author_id, content, time.time(), **fields
        )
        self.messages.setdefault(channel_id, []).append(message)
        return message

    def message(self, channel_id: int, message_id: int) -> Message:
        for message in self.messages.get(channel_id, []):
            if message.id == message_id:
                return message
        raise ModelError(404, 10008, "Unknown Message")

    def find_message(self, message_id: int) -> Message | None:
        for messages in self.messages.values():
            for message in messages:
                if message.id == message_id:
                    return message
        return None

    def delete_message(self, message: Message) -> None:
        messages = self.messages.get(message.channel_id, [])
        if message in messages:
            messages.remove(message)

    def commands_of(self, application_id: int, guild_id: int | None) -> list[ApplicationCommand]:
        return [
            command
            for command in self.commands.values()
            if command.application_id == application_id and command.guild_id == guild_id
        ]

    def find_command(
        self, guild_id: int, name: str, application_id: int | None = None
    ) -> ApplicationCommand:
        """The command ``name`` a user in ``guild_id`` would see: a guild command first."""
        candidates = [
            command
            for command in self.commands.values()
            if command.name == name
            and command.guild_id in (guild_id, None)
            and (application_id is None or command.application_id == application_id)
        ]
        if not candidates:
            raise ModelError(404, 10063, f"Unknown application command {name[:32]!r}")
        candidates.sort(key=lambda command: command.guild_id is None)
        return candidates[0]

    def add_interaction(
        self, user_id: int, channel_id: int, command: ApplicationCommand, options: list[Payload]
    ) -> Interaction:
        channel = self.channel(channel_id)
        self.user(user_id)
        interaction = Interaction(
            self.ids.new(),
            command.application_id,
            "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48),
            channel.guild_id,
            channel_id,
            user_id,
            command,
            options,
            time.time(),
        )
        self.interactions[interaction.id] = interaction
        self.interactions_by_token[interaction.token] = interaction
        return interaction

    # --- rendering -----------------------------------------------------------------------

    def user_payload(self, user_id: int) -> Payload:
        user = self.user(user_id)
        return {
            "id": str(user.id),
            "username": user.username,
            "discriminator": "0",
            "global_name": user.global_name,
            "avatar": None,
            "bot": user.bot,
            "system": False,
            "flags": 0,
            "public_flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }

    def me_payload(self, bot: Bot) -> Payload:
        """``/users/@me`` and READY's ``user``."""
        return {
            **self.user_payload(bot.user.id),
            "verified": True,
            "mfa_enabled": False,
            "locale": "en-US",
            "email": None,
        }

    def application_payload(self, bot: Bot) -> Payload:
        """``/oauth2/applications/@me``: every field discord.py reads (SANDBOX.md §2)."""
        return {
            "id": str(bot.application_id),
            "name": bot.user.username,
            "description": "",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": _derive(bot.token.encode(), "verify-key", 32).hex(),
            "owner": self.user_payload(self.owner.id),
            "team": None,
            "flags": 0,
            "summary": "",
            "bot": self.user_payload(bot.user.id),
            "interactions_endpoint_url": None,
            "approximate_guild_count": len(self.guilds_of(bot.user.id)),
            "tags": [],
            "redirect_uris": [],
            "rpc_origins": [],
        }

    def role_payload(self, role: Role) -> Payload:
        return {
            "id": str(role.id),
            "name": role.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": role.position,
            "permissions": str(role.permissions),
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }

    def channel_payload(self, channel: Channel, *, with_guild_id: bool = True) -> Payload:
        payload: Payload = {
            "id": str(channel.id),
            "type": int(channel.type),
            "name": channel.name,
            "position": channel.position,
            "permission_overwrites": [],
            "parent_id": None,
            "nsfw": False,
            "flags": 0,
            "last_message_id": None,
            "rate_limit_per_user": 0,
        }
        if channel.type == ChannelType.GUILD_VOICE:
            payload.update(
                bitrate=channel.bitrate,
                user_limit=channel.user_limit,
                rtc_region=None,
                video_quality_mode=1,
            )
        else:
            payload["topic"] = None
        messages = self.messages.get(channel.id)
        if messages:
            payload["last_message_id"] = str(messages[-1].id)
        if with_guild_id:
            payload["guild_id"] = str(channel.guild_id)
        return payload

    def member_payload(self, guild_id: int, user_id: int, *, with_user: bool = True) -> Payload:
        guild = self.guild(guild_id)
        member = guild.members.get(user_id)
        if member is None:
            raise ModelError(404, 10007, "Unknown Member")
        state = guild.voice_states.get(user_id)
        payload: Payload = {
            "roles": [str(role) for role in member.roles],
            "nick": member.nick,
            "avatar": None,
            "banner": None,
            "joined_at": member.joined_at,
            "premium_since": None,
            "deaf": bool(state and state.deaf),
            "mute": bool(state and state.mute),
            # discord.py's Member reads ``flags`` unconditionally (SANDBOX.md §3.3).
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            payload["user"] = self.user_payload(user_id)
        return payload

    def member_permissions(self, guild_id: int, user_id: int) -> int:
        guild = self.guild(guild_id)
        if user_id == guild.owner_id:
            return ALL_PERMISSIONS
        member = guild.members.get(user_id)
        permissions = guild.roles[guild_id].permissions
        for role_id in member.roles if member else []:
            role = guild.roles.get(role_id)
            if role is not None:
                permissions |= role.permissions
        return permissions

    def voice_state_payload(self, state: VoiceState, *, in_guild_create: bool = False) -> Payload:
        """A voice state object with every field (SANDBOX.md §3.5); in GUILD_CREATE without
        ``guild_id`` or ``member`` (discord.py reads them there before ``members``)."""
        payload: Payload = {
            "channel_id": str(state.channel_id),
            "user_id": str(state.user_id),
            "session_id": state.session_id,
            "deaf": state.deaf,
            "mute": state.mute,
            "self_deaf": state.self_deaf,
            "self_mute": state.self_mute,
            "self_video": False,
            "self_stream": False,
            "suppress": False,
            "request_to_speak_timestamp": None,
        }
        if not in_guild_create:
            payload["guild_id"] = str(state.guild_id)
            payload["member"] = self.member_payload(state.guild_id, state.user_id)
        return payload

    def voice_left_payload(self, guild_id: int, user_id: int, session_id: str) -> Payload:
        """The VOICE_STATE_UPDATE of someone leaving: no channel, still with ``member``."""
        state = VoiceState(user_id, guild_id, 0, session_id)
        payload = self.voice_state_payload(state)
        payload["channel_id"] = None
        return payload

    def guild_payload(self, guild: Guild) -> Payload:
        """The guild object of REST ``GET /guilds/{id}``."""
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "icon_hash": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "region": "local",
            "afk_channel_id": None,
            "afk_timeout": 300,
            "widget_enabled": False,
            "widget_channel_id": None,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [self.role_payload(role) for role in guild.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "max_presences": None,
            "max_members": 500000,
            "vanity_url_code": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "approximate_member_count": len(guild.members),
            "approximate_presence_count": 0,
        }

    def guild_create_payload(self, guild: Guild, *, voice_states: bool) -> Payload:
        """GUILD_CREATE: the guild with its channels, members and (with the voice-states
        intent) voice states, all from this model."""
        in_voice = list(guild.voice_states) if voice_states else []
        return {
            **self.guild_payload(guild),
            "joined_at": iso(self.started_at),
            "large": False,
            "unavailable": False,
            "lazy": True,
            "member_count": len(guild.members),
            # Members before voice states in the object; discord.py reads voice states
            # first and wants their channels known, which ``channels`` gives it.
            "channels": [
                self.channel_payload(channel, with_guild_id=False)
                for channel in guild.channels.values()
            ],
            "threads": [],
            "members": [self.member_payload(guild.id, user_id) for user_id in guild.members],
            "voice_states": [
                self.voice_state_payload(guild.voice_states[user_id], in_guild_create=True)
                for user_id in in_voice
            ],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "embedded_activities": [],
            "application_command_counts": {},
        }

    def partial_guild_payload(self, guild: Guild) -> Payload:
        """An entry of ``GET /users/@me/guilds``."""
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "banner": None,
            "owner": False,
            "permissions": str(EVERYONE_PERMISSIONS),
            "features": [],
        }

    def message_payload(self, message: Message) -> Payload:
        mentioned = dict.fromkeys(
            int(found) for found in _MENTION.findall(message.content) if int(found) in self.users
        )
        payload: Payload = {
            "id": str(message.id),
            "channel_id": str(message.channel_id),
            "type": message.type,
            "author": self.user_payload(message.author_id),
            "content": message.content,
            "timestamp": iso(message.timestamp),
            "edited_timestamp": None if message.edited_at is None else iso(message.edited_at),
            "tts": message.tts,
            "mention_everyone": "@everyone" in message.content,
            "mentions": [self.user_payload(user_id) for user_id in mentioned],
            "mention_roles": [],
            "mention_channels": [],
            "attachments": message.attachments,
            "embeds": message.embeds,
            "reactions": [],
            "pinned": False,
            "flags": message.flags,
            "components": message.components,
            "sticker_items": [],
        }
        if message.nonce is not None:
            payload["nonce"] = message.nonce
        if message.webhook_id is not None:
            payload["webhook_id"] = str(message.webhook_id)
            payload["application_id"] = str(message.webhook_id)
        if message.interaction_id is not None:
            interaction = self.interactions.get(message.interaction_id)
            if interaction is not None:
                payload["interaction_metadata"] = {
                    "id": str(interaction.id),
                    "type": int(InteractionType.APPLICATION_COMMAND),
                    "user": self.user_payload(interaction.user_id),
                    "authorizing_integration_owners": {"0": str(interaction.guild_id)},
                    "name": interaction.command.name,
                    "command_type": interaction.command.type,
                }
        if message.guild_id is not None:
            payload["guild_id"] = str(message.guild_id)
            guild = self.guilds.get(message.guild_id)
            if guild is not None and message.author_id in guild.members:
                payload["member"] = self.member_payload(
                    message.guild_id, message.author_id, with_user=False
                )
        return payload

    def command_payload(self, command: ApplicationCommand) -> Payload:
        payload: Payload = {
            **command.extra,
            "id": str(command.id),
            "application_id": str(command.application_id),
            "version": str(command.version),
            "type": command.type,
            "name": command.name,
            "description": command.description,
            "options": command.options,
            "default_member_permissions": command.default_member_permissions,
            "dm_permission": True,
            "nsfw": command.nsfw,
            "integration_types": [0],
            "contexts": None,
        }
        if command.guild_id is not None:
            payload["guild_id"] = str(command.guild_id)
        return payload

    def interaction_payload(self, interaction: Interaction) -> Payload:
        """INTERACTION_CREATE's ``d``: everything discord.py and discord.js read."""
        channel = self.channel(interaction.channel_id)
        member = self.member_payload(interaction.guild_id, interaction.user_id)
        member["permissions"] = str(
            self.member_permissions(interaction.guild_id, interaction.user_id)
        )
        data: Payload = {
            "id": str(interaction.command.id),
            "name": interaction.command.name,
            "type": interaction.command.type,
            "guild_id": str(interaction.guild_id),
        }
        if interaction.options:
            data["options"] = interaction.options
        return {
            "id": str(interaction.id),
            "application_id": str(interaction.application_id),
            "type": int(InteractionType.APPLICATION_COMMAND),
            "data": data,
            "guild_id": str(interaction.guild_id),
            "guild": {"id": str(interaction.guild_id), "locale": "en-US", "features": []},
            "channel_id": str(interaction.channel_id),
            "channel": self.channel_payload(channel),
            "member": member,
            "token": interaction.token,
            "version": 1,
            "app_permissions": str(ALL_PERMISSIONS),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(interaction.guild_id)},
            "context": 0,
            "attachment_size_limit": 10 * 1024 * 1024,
        }


#: Every permission bit Discord defines today (up to 1 << 50).
ALL_PERMISSIONS = (1 << 51) - 1
