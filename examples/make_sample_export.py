"""Write `examples/sample_export/result.json`: a synthetic Telegram Desktop full-account export.

Every person in it is invented. "Me" is Sasha Novak, who writes in one consistent voice (all lowercase,
no full stops, short bursts of messages, the 🙃 emoji, "ok ok" and the catchphrase "love that for us";
in Russian: lowercase with "))" smiles) so a twin has something to learn. Partners each have their own
style. Conversations come from a small template grammar — `[a|b]` picks an alternative, `{rule}` expands
a named rule, ` // ` splits a turn into consecutive messages — driven by a seeded RNG, so the output is
varied but byte-for-byte reproducible:

    python examples/make_sample_export.py                 # rewrite the committed file
    python examples/make_sample_export.py --check         # exit 1 if the committed file is stale

Besides one-to-one chats the export holds what `collect` must drop (a group, a bot chat, Saved Messages,
a channel, service entries, stickers, voice messages, a forwarded message) and a few planted fake
secrets (an email, a phone number, a Luhn-valid test card, an API key, a password) for `prepare` to scrub.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

SEED = 20240301
TZ = ZoneInfo("Europe/Berlin")  # Desktop writes `date` in the exporting machine's local time
FIRST_DAY = date(2024, 3, 4)
DAYS = 84
FIRST_MESSAGE_ID = 48210
DEFAULT_OUT = Path(__file__).resolve().parent / "sample_export" / "result.json"

ME_ID = 6071234501
ME_NAME = "Sasha Novak"

# Planted secrets — all fake: a documentation-only domain, the UK regulator's drama number range, Stripe's
# public test card, a random key with OpenAI's prefix, and an invented password.
FAKE_EMAIL = "sasha.novak.demo@example.com"
FAKE_PHONE = "+44 7700 900123"
FAKE_CARD = "4242 4242 4242 4242"
FAKE_PASSWORD = "mintcondition77"


def fake_api_key(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits
    return "sk-proj-" + "".join(rng.choice(alphabet) for _ in range(40))


# ----------------------------------------------------------------------------------------------------------
# The grammar
# ----------------------------------------------------------------------------------------------------------

# fmt: off
RULES: dict[str, list[str]] = {
    # shared slots; `{=name}` keeps its first pick for the rest of a conversation
    "day": ["saturday", "sunday", "friday", "thursday", "tomorrow", "monday", "wednesday"],
    "den": ["субботу", "воскресенье", "пятницу", "четверг", "среду"],
    "time": ["7", "7:30", "8", "6:45", "8:15", "6", "half 8", "9", "7ish"],
    "lunch": ["12", "12:30", "1", "1:15"],
    "cafe": ["café luna", "the corner bakery", "kaffee kranich", "that ramen place on oranienstraße",
             "the little greek place", "bäckerei sonne", "the place with the blue door"],
    "film": ["The Quiet Orbit", "Salt & Static", "Nine Lanterns", "Paper Harbour", "The Long Weekend Club",
             "Lowtide"],
    "book": ["The Lighthouse Ledger", "A Small Year in Lisbon", "Orchards of Glass",
             "The Cartographer's Dog", "Winter at the Salt Works"],
    "dish": ["shakshuka", "dumplings", "pad thai", "lentil soup", "pierogi", "banana bread", "risotto",
             "borscht", "a huge salad"],
    "feature": ["billing export", "search filters", "login rate limit", "CSV import", "dark mode toggle",
                "notification settings"],
    "city": ["Lisbon", "Tbilisi", "Porto", "Kraków", "Vienna", "Copenhagen"],
    "gorod": ["Тбилиси", "Стамбул", "Казань", "Калининград", "Ереван"],
    "game": ["доту", "кс", "шахматы онлайн", "мафию", "настолки"],
    "show": ["The Bakers of Brindle Lane", "Northern Line", "Ghost Kitchen", "Fjord Patrol"],
    "bad_day": ["My manager moved the deadline again", "The printer ate my presentation",
                "Three meetings that could've been emails", "The client changed everything. Again",
                "I spilled coffee on my laptop"],
    "podcast": ["Small Hours", "The Slow Kitchen", "Map Nerds", "Tiny Histories"],
    # me (English): lowercase, no full stops, bursts
    "me_hi": ["heyy", "hiii", "hey hey", "hey", "yo", "morning", "heyyy"],
    "me_ok": ["ok ok", "sounds good", "deal", "yes pls", "perfect", "love that for us", "ok ok ok", "sure",
              "yesss"],
    "me_lol": ["haha", "ahaha", "hahaha", "lmao", "ha"],
    "me_wow": ["wow", "omg", "no way", "wait what", "stoppp", "ok wow"],
    "me_how": ["good good // tired but good", "honestly pretty good", "ok ok // busy week",
               "alive haha // work is a lot rn", "not bad // slept 5 hours tho", "good! // finally some sun"],
    "me_bye": ["night!", "see you", "ttyl", "bye bye", "ok see you then", "talk soon", "night night"],
    "me_thx": ["thank youuu", "thank you!!", "thanks!!", "ty ty", "you're the best"],
    # me (Russian): lowercase, "))"
    "me_ru_hi": ["приве", "привет", "хей", "приветик"],
    "me_ru_ok": ["давай", "ок", "ну давай", "договорились", "го", "норм", "ок ок"],
    "me_ru_lol": ["ахах", "ахаха", "хаха", "ору"],
    "me_ru_how": ["норм // работы много", "да вроде хорошо // устала немного", "ну такое // но живу",
                  "отлично // весна же", "хорошо // только спать хочу"],
    "me_ru_thx": ["спасибо", "спасибки", "спасибо большое", "ты лучший"],
    # partners' small talk
    "p_how": ["How are you?", "How's your week going?", "How are things?", "How was your weekend?"],
    "p_ru_how": ["Как дела?", "Как ты?", "Как неделя?", "Что нового?"],
}

# A conversation: lines "P: ..." (partner) or "M: ..." (me); "P?:"/"M?:" lines appear half the time.
# Special line bodies: "<photo> caption", "<photo>", "<sticker E>", "<voice>".
Script = list[str]

MAYA: list[Script] = [
    ["P: [Climbing|Bouldering] on {=day}?", "M: [yes!!|obviously|yess] // what time",
     "P: {=time}? I'll book the [big wall|cave|new blue circuit]", "M: {me_ok}",
     "M?: [i'll bring the chalk|i'll bring my new shoes|my fingers are still sore from last time]",
     "P?: Bring snacks too, I'm always starving after", "M?: [obviously|always] // {me_lol}"],
    ["P: Brunch at {=cafe} on {day}?", "M: {me_ok} // what time",
     "P: {=time}? They stop doing pancakes at 12", "M: ok {=time} it is",
     "P?: I'm inviting Lina too if that's ok", "M?: ofc the more the merrier"],
    ["M: {me_hi} // did you watch {=film} yet", "P: No! Is it good?",
     "M: [honestly|ngl] the best thing i've seen this year // the ending [destroyed me|broke me|was so good]",
     "P: Okay that's it, I'm watching it tonight", "M: text me when you're done", "P?: Deal!!"],
    ["P: Ugh, today was so long.", "M: [noo|oh no] what happened", "P: {bad_day}",
     "M: [that's so annoying|ugh i'm sorry|the audacity] // want to get food later?",
     "P: Yes please. {=dish}?", "M: {me_ok}", "M?: [i'll come to yours|meet at 8?]"],
    ["P: <photo> Look at this [sunset from the bridge|view from the office|rainbow over the canal]!",
     "M: {me_wow} // [ok that's unreal|the colours]", "P: I almost missed my [train|tram] taking it",
     "M: [worth it tbh|worth it|iconic]"],
    ["M: any podcast recs? // i need something for the [train|gym|walks]",
     "P: Have you tried {=podcast}? It's [so calming|weirdly addictive|perfect for commutes]",
     "M: no!! adding it", "P?: Start with the first episode", "M?: {me_ok}"],
    ["P: It's Lina's birthday on {day}, we should do something", "M: yes!! // [picnic?|dinner?|karaoke?]",
     "P: [Picnic|Dinner|Karaoke] sounds perfect. I'll make a cake", "M: i'll bring drinks // and the speaker",
     "P?: You're the best", "M?: i know {me_lol}"],
    ["P: {p_how}", "M: {me_how} // you?", "P: Same honestly. Need a holiday", "M: we need a weekend away",
     "P: {city}??", "M: don't tempt me // i'm literally checking flights now"],
    ["P: Are you coming tonight?", "M: omw // [10|5|15] min", "M?: sorry the tram was late", "P: No rush!",
     "M?: {me_bye}"],
    ["M: <sticker 🙃>", "M: guess who [got the flat|finally finished the project|booked the trip]",
     "P: NO WAY. Congrats!!", "M: {me_lol} // thank youuu // drinks on me this week"],
    ["P: Can I borrow your [tent|big pot|drill] this weekend?", "M: [ofc|sure|yes] // pick it up whenever",
     "P: Thank you!! I'll bring it back on {day}", "M?: no rush"],
]

MUM: list[Script] = [
    ["P: Hello darling, how was your week?", "M: hi mum // {me_how}", "P: Are you eating properly?",
     "M: yes {me_lol} // made {=dish} yesterday", "P: Good. Send me a photo next time.", "M?: ok ok"],
    ["P: Are you free for a call on Sunday?", "M: yes! after [5|6|4] works",
     "P: Lovely, I'll ring you [at 6|after dinner|around 7].", "M: {me_ok}"],
    ["P: Did you try the {=dish} recipe I sent you?", "M: not yet // this weekend i promise",
     "P: Don't add too much salt, it's already in the stock.", "M: noted", "P?: Love, Mum"],
    ["P: When are you coming home next? Your dad keeps asking.",
     "M: maybe in [may|june]? // i'll check flights", "P: Let us know early so we can pick you up.",
     "M: will do", "M?: tell dad hi"],
    ["P: Don't forget your dentist appointment on {day}.", "M: i won't", "M?: ok i might have",
     "P?: I knew it. It's at 10."],
    ["M: <photo> look what i made", "P: That looks delicious! Is that the {=dish}?",
     "M: yes!! // your recipe", "P: I'm so proud of you.", "M?: love that for us"],
    ["P: Your aunt asked what you want for your birthday.", "M: nothing really // maybe a plant",
     "P: A plant it is.", "M: a small one pls // my windowsill is full"],
    ["P: It's raining here all week. Is it cold in Berlin?", "M: [freezing|so grey|actually sunny today]",
     "M?: i miss the sea", "P: Wear your scarf.", "M: [yes mum|i am wearing it] {me_lol}"],
    ["P: Your dad fixed the garden shed finally!", "M: {me_wow} // after [3|5] years",
     "P: Don't tell him I told you.", "M: {me_lol} // my lips are sealed"],
]

TOMAS: list[Script] = [
    ["P: Morning! Are you joining standup at 10?", "M: yep omw // [2|5] min",
     "P?: No rush, we're still waiting for Ana"],
    ["P: Could you take a look at my PR when you have a minute? It's the {feature} one.", "M: [on it|sure]",
     "M: left a couple comments // [mostly nits|one real question about the tests]",
     "P: Thanks! Fixing them now.", "M?: {me_ok}"],
    ["P: Deploy to staging is failing again 😕", "M: ugh // is it the [migrations|docker cache] again?",
     "P: Looks like it. Same error as last week.", "M: try rerunning with the cache cleared // worked for me",
     "P: That did it, thanks!", "M: love that for us"],
    ["P: Lunch at {=lunch}?", "M: [{=lunch} works|can we do a bit later? i have a call]",
     "P: Works. [Thai place|Falafel|Canteen]?", "M: {me_ok}"],
    ["P: Have a good weekend!", "M: you too!!", "M?: don't check slack {me_lol}"],
    ["M: did you see the new design mocks", "P: Yes, the onboarding flow looks much cleaner.",
     "M: right?? // the old one had like 7 steps", "P?: I'll estimate the work tomorrow"],
    ["P: Can you cover for me in the planning meeting? I'm at the doctor's.", "M: sure // feel better",
     "P: Thank you! Notes are in the doc.", "M: {me_ok}"],
    ["P: Is the {feature} ticket still blocked?", "M: yeah waiting on design // should be unblocked {day}",
     "P: Ok, I'll move it to next sprint.", "M?: sounds good"],
    ["M: is the office wifi down for you too", "P: Yes, IT is on it.",
     "M: [working from the café then|great // perfect day for it] {me_lol}"],
    ["P: The demo went really well, the client loved the {feature}!", "M: {me_wow} // love that for us",
     "P: Drinks on Friday to celebrate?", "M: [obviously|yes!!|count me in]"],
]

PRIYA: list[Script] = [
    ["P: Run tomorrow morning? 🏃‍♀️", "M: yes // {time} at the park?", "P: Perfect!! 5k or 10k?",
     "M: 5k {me_lol} // my legs are still dead from [tuesday|climbing]", "P?: Fair!!"],
    ["P: Did you finish {=book}??", "M: not yet ngl // [70|40|100] pages left",
     "P: NO SPOILERS then but the ending!!!", "M: stoppp // now i have to finish it tonight"],
    ["P: Book club at mine on {day}! I'm making {dish}", "M: {me_ok} // i'll bring wine",
     "P: Yay!! 🎉", "M?: what's the next book"],
    ["P: I signed us up for the river run 🎉", "M: wait what // how far", "P: Only 10k!! You'll be fine",
     "M: ok ok // love that for us i guess", "P?: That's the spirit!!"],
    ["M: <photo> new running shoes", "P: Ooh nice!! Are they comfy?", "M: like walking on clouds",
     "P: I need those"],
    ["P: {p_how}", "M: {me_how} // you?", "P: Good!! Finally slept 8 hours", "M: [iconic|proud of you]"],
    ["P: Any book recs for my holiday?", "M: {book} // it's short and so good", "P: Ordered it!!",
     "M?: tell me what you think"],
    ["P: I beat my 5k time!!! 24:50", "M: {me_wow} // that's so fast", "M?: teach me your ways",
     "P: Intervals!! Come on Thursday", "M: {me_ok}"],
]

JONAS: list[Script] = [
    ["P: Hello Sasha, a parcel for you was delivered to my flat. You can pick it up this evening.",
     "M: oh {me_thx} // i'll come by around {time}", "P: No problem, I'm home all evening."],
    ["P: Hello, the plumber will come on {day} between 9 and 12. Will you be at home?",
     "M: [yes i'll be home|i'll be working from home so yes] // thanks for sorting it",
     "P: Good. Please leave the bathroom accessible."],
    ["M: hi jonas // the [heating in the bedroom|kitchen tap|doorbell] is [making a weird noise|acting up]"
     " again",
     "P: Thank you for letting me know. I will call the technician tomorrow.", "M: {me_thx}"],
    ["P: Reminder: the stairwell will be painted on {day}. Please do not leave shoes outside.",
     "M: {me_ok} // thanks for the heads up"],
    ["P: Hello, do you still have the spare key for the cellar?", "M: yes! // want me to drop it off?",
     "P: If possible, thank you.", "M: ok after work"],
    ["P: Good evening. The recycling bins will be collected on Wednesday this week, not Tuesday.",
     "M: noted // thank you"],
]

DIMA: list[Script] = [
    ["P: Смотришь сегодня матч?", "M: конечно // в 9?", "P: Да. Приходи к нам, будет пицца",
     "M: {me_ru_ok} // возьму [чипсы|пиво|что-нибудь]", "P?: Отлично)"],
    ["P: Го вечером в {game}?", "M: [сегодня не могу|не сегодня] // завтра?", "P: Ок, завтра в 8",
     "M: {me_ru_ok}"],
    ["P: {p_ru_how}", "M: {me_ru_how} // а ты как", "P: Тоже норм. Работа, дом, работа",
     "M: {me_ru_lol} // знакомо"],
    ["P: Поможешь в {=den} с переездом?", "M: {me_ru_ok} // во сколько", "P: В 10, если не сложно",
     "M: не сложно // только кофе с тебя", "P: Договорились)"],
    ["M: {me_ru_hi} // ты видел новый трейлер", "P: Нет, какой?", "M: <sticker 🙃>",
     "M: {film} // выходит в [июне|июле]", "P: Надо будет сходить"],
    ["P: У Лёши день рождения в {den}, скидываемся на подарок?", "M: да конечно // сколько",
     "P: По 20 евро", "M: ок // кину вечером"],
    ["P: Ты где пропала?", "M: [работа съела|болела немного|в отпуске была] // но я жива",
     "P: Давай на выходных увидимся", "M: {me_ru_ok}"],
]

OLYA: list[Script] = [
    ["P: <photo> Смотри, кто спит на моей клавиатуре 😊", "M: {me_ru_lol} // какой милый",
     "M?: работать сегодня не получится", "P: Вообще никак"],
    ["P: Я купила билеты в {gorod}!", "M: ааа круто // когда летишь", "P: В конце мая, на неделю",
     "M: привези мне магнитик", "P?: Обязательно 😊"],
    ["P: Кофе в {den}?", "M: {me_ru_ok} // в {cafe}?", "P: Давай! В 11?", "M: ок"],
    ["P: Ты смотришь {show}?", "M: да!! // только [вторую|третью] серию", "P: Дальше будет лучше, обещаю",
     "M: ну посмотрим"],
    ["M: {me_ru_hi} // скинь рецепт того пирога плиз", "P: Сейчас найду!",
     "P: Мука, яйца, яблоки и много корицы. Подробно вечером пришлю", "M: {me_ru_thx}"],
    ["P: {p_ru_how}", "M: {me_ru_how} // ты как", "P: Хорошо! Весна наконец", "M: да // наконец-то"],
    ["P: Пойдёшь со мной на выставку в {den}?", "M: а какая", "P: Фотографии, про море",
     "M: {me_ru_ok} // люблю море"],
]
# fmt: on


@dataclass
class Partner:
    """A chat partner: their id, name, style, and the topics they talk about."""

    user_id: int
    name: str
    scripts: list[Script]
    lang: str
    emoji: Sequence[str]
    emoji_rate: float
    conversations: int
    hours: tuple[int, int]
    weekdays_only: bool = False
    punctuate: bool = False
    greeting: str = ""
    chat_id: int = field(init=False)

    def __post_init__(self) -> None:
        self.chat_id = self.user_id


# fmt: off
PARTNERS = [
    Partner(6071234511, "Maya Fontaine", MAYA, "en", ("😂", "❤️", "🙌"), 0.25, 32, (17, 22),
            greeting="[Hey|Hi|Hey you|Hellooo]!"),
    Partner(6071234512, "Mum", MUM, "en", ("😊",), 0.15, 22, (18, 21), punctuate=True),
    Partner(6071234513, "Tomás Reyes", TOMAS, "en", ("👍",), 0.15, 30, (9, 17), weekdays_only=True,
            greeting="[Hey|Hi]!"),
    Partner(6071234514, "Priya Raman", PRIYA, "en", ("🎉", "🏃‍♀️", "😍"), 0.2, 26, (7, 21),
            greeting="[Hiii|Hey hey|Morning]!"),
    Partner(6071234515, "Jonas Becker", JONAS, "en", (), 0.0, 10, (10, 19), punctuate=True),
    Partner(6071234516, "Дима Орлов", DIMA, "ru", (")",), 0.2, 26, (18, 23), greeting="[Привет|Здорово]!"),
    Partner(6071234517, "Оля Ковалёва", OLYA, "ru", ("😊", "❤️"), 0.2, 22, (12, 22),
            greeting="[Привет|Приветик]!"),
]
# fmt: on

EMOJI_RE = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")
URL_RE = re.compile(r"https?://\S+")


def expand(
    template: str,
    rng: random.Random,
    bound: dict[str, str] | None = None,
    rules: Mapping[str, Sequence[str]] = RULES,
) -> str:
    """Expand `[a|b]` choices (innermost first) and `{rule}` references until none are left.

    `{=rule}` is picked once per `bound` dict (one conversation) so a time or a dish stays the same.
    """
    bound = {} if bound is None else bound
    inner = re.compile(r"\[([^\[\]]*)\]")
    ref = re.compile(r"\{(=?)(\w+)\}")

    def pick(m: re.Match[str]) -> str:
        keep, name = m.group(1), m.group(2)
        if keep:
            return bound.setdefault(name, rng.choice(rules[name]))
        return rng.choice(rules[name])

    for _ in range(20):
        before = template
        template = inner.sub(lambda m: rng.choice(m.group(1).split("|")), template)
        template = ref.sub(pick, template)
        if template == before:
            return template
    raise ValueError(f"template does not terminate: {template!r}")


def style_me(turn: list[str], lang: str, rng: random.Random) -> list[str]:
    """Sasha's voice: lowercase, no full stops; 🙃 (English) or `))` (Russian) on some turns."""
    out = [m.lower().rstrip(".") for m in turn]
    last = out[-1]
    if not last.startswith("<") and not EMOJI_RE.search(last) and not last.endswith("?"):
        if lang == "en" and rng.random() < 0.22:
            out[-1] = last + " 🙃"
        elif lang == "ru" and rng.random() < 0.35:
            out[-1] = last + "))"
    return out


def style_partner(turn: list[str], partner: Partner, rng: random.Random) -> list[str]:
    out = []
    for m in turn:
        if m and not m.startswith("<"):
            m = m[0].upper() + m[1:]
            if partner.punctuate and m[-1].isalnum():
                m += "."
        out.append(m)
    last = out[-1]
    if partner.emoji and not last.startswith("<") and rng.random() < partner.emoji_rate:
        if not EMOJI_RE.search(last) and not last.endswith(")"):
            out[-1] = last + (" " if partner.emoji[0] != ")" else "") + rng.choice(partner.emoji)
    return out


@dataclass
class Event:
    """One entry of a chat before ids are assigned."""

    chat_id: int
    when: datetime
    sender: str  # "me" or "partner" (or a member name in the group)
    body: str
    extra: dict = field(default_factory=dict)


def expand_script(script: Script, partner: Partner, rng: random.Random) -> list[tuple[str, list[str]]]:
    """(speaker, messages) turns of one conversation, styled."""
    turns: list[tuple[str, list[str]]] = []
    bound: dict[str, str] = {}
    for line in script:
        head, _, body = line.partition(": ")
        if head.endswith("?"):
            if rng.random() < 0.5:
                continue
            head = head[:-1]
        speaker = "me" if head == "M" else "partner"
        messages = [m.strip() for m in expand(body, rng, bound).split("//") if m.strip()]
        if speaker == "me":
            messages = style_me(messages, partner.lang, rng)
        else:
            messages = style_partner(messages, partner, rng)
        turns.append((speaker, messages))
    return turns


def small_talk(partner: Partner, rng: random.Random) -> list[tuple[str, list[str]]]:
    """A greeting exchange before the topic (only with partners who greet that way)."""
    if not partner.greeting:
        return []
    answer = "{me_ru_hi}" if partner.lang == "ru" else "{me_hi}"
    return expand_script([f"P: {partner.greeting}", f"M: {answer}"], partner, rng)


def conversation_days(partner: Partner, rng: random.Random) -> list[date]:
    days = [FIRST_DAY + timedelta(days=i) for i in range(DAYS)]
    if partner.weekdays_only:
        days = [d for d in days if d.weekday() < 5]
    return sorted(rng.sample(days, min(partner.conversations, len(days))))


def schedule(
    turns: list[tuple[str, list[str]]], start: datetime, rng: random.Random
) -> list[tuple[datetime, str, str]]:
    """Timestamps: seconds between messages of a burst, minutes between replies, rarely an hour or two."""
    out: list[tuple[datetime, str, str]] = []
    now = start
    for i, (speaker, messages) in enumerate(turns):
        if i:
            r = rng.random()
            if r < 0.85:
                gap = rng.randint(20, 600)
            elif r < 0.97:
                gap = rng.randint(900, 3600)
            else:
                gap = rng.randint(3600, 9000)
            now += timedelta(seconds=gap)
        for j, message in enumerate(messages):
            if j:
                now += timedelta(seconds=rng.randint(3, 45))
            out.append((now, speaker, message))
    return out


def media_extra(body: str, when: datetime, rng: random.Random) -> tuple[str, dict]:
    """Turn `<photo> caption`, `<sticker E>`, `<voice>` into Desktop's media fields (and the text)."""
    stamp = when.strftime("%d-%m-%Y_%H-%M-%S")
    if body.startswith("<photo>"):
        width, height = rng.choice([(1280, 960), (960, 1280), (1280, 720)])
        return body[len("<photo>") :].strip(), {
            "photo": f"photos/photo_{rng.randint(1, 999)}@{stamp}.jpg",
            "photo_file_size": rng.randint(60_000, 400_000),
            "width": width,
            "height": height,
        }
    if body.startswith("<sticker"):
        emoji = body[len("<sticker") : -1].strip() or "🙂"
        return "", {
            "file": f"stickers/sticker ({rng.randint(1, 99)}).webp",
            "file_name": "sticker.webp",
            "file_size": rng.randint(20_000, 60_000),
            "thumbnail": "stickers/sticker.webp_thumb.jpg",
            "thumbnail_file_size": 6_000,
            "media_type": "sticker",
            "sticker_emoji": emoji,
            "width": 512,
            "height": 512,
        }
    if body.startswith("<voice>"):
        return "", {
            "file": f"voice_messages/audio_{rng.randint(1, 99)}@{stamp}.ogg",
            "file_size": rng.randint(20_000, 200_000),
            "media_type": "voice_message",
            "mime_type": "audio/ogg",
            "duration_seconds": rng.randint(3, 60),
        }
    return body, {}


def partner_events(partner: Partner, rng: random.Random) -> list[Event]:
    events: list[Event] = []
    scripts = list(partner.scripts)
    queue: list[Script] = []
    for day in conversation_days(partner, rng):
        if not queue:  # go through every topic before repeating one, in a fresh order each round
            queue = rng.sample(scripts, len(scripts))
        script = queue.pop()
        turns = expand_script(script, partner, rng)
        if turns[0][0] == "partner" and rng.random() < 0.3:
            turns = small_talk(partner, rng) + turns
        if rng.random() < 0.1:  # a sticker at the end now and then
            turns.append(
                (rng.choice(["me", "partner"]), [f"<sticker {rng.choice(['🙃', '👍', '😂', '❤️'])}>"])
            )
        lo, hi = partner.hours
        start = datetime(
            day.year,
            day.month,
            day.day,
            rng.randint(lo, hi - 1),
            rng.randint(0, 59),
            rng.randint(0, 59),
            tzinfo=TZ,
        )
        for when, speaker, body in schedule(turns, start, rng):
            events.append(Event(partner.chat_id, when, speaker, body))
    return events


def planted_events(rng: random.Random) -> list[Event]:
    """Fixed conversations that carry the fake secrets, links, a forward, an edit and service entries."""
    p = {x.name: x for x in PARTNERS}
    key = fake_api_key(rng)

    def at(day: int, hh: int, mm: int) -> datetime:
        d = FIRST_DAY + timedelta(days=day)
        return datetime(d.year, d.month, d.day, hh, mm, rng.randint(0, 59), tzinfo=TZ)

    maya, jonas, tomas = p["Maya Fontaine"].chat_id, p["Jonas Becker"].chat_id, p["Tomás Reyes"].chat_id
    priya, mum = p["Priya Raman"].chat_id, p["Mum"].chat_id
    t = at(12, 19, 5)
    s = timedelta(seconds=40)
    forward = {
        "forwarded_from": "Frontend Weekly",
        "text": "Ten CSS tricks that will change how you build layouts",
    }
    link = {
        "text": ["look at this ", {"type": "link", "text": "https://example.org/hikes/saxon-switzerland"}]
    }
    bold = {"text": ["YES. I'm in. Let's go on the ", {"type": "bold", "text": "11th"}, "!"]}
    mention = {
        "text": ["how could i forget ", {"type": "mention", "text": "@priya_runs"}, " reminded me 5 times"]
    }
    # fmt: off
    return [
        Event(maya, t, "partner", "I'm at yours in 10, what's the wifi again?"),
        Event(maya, t + 3 * s, "me", f"the wifi password is {FAKE_PASSWORD}"),
        Event(maya, t + 4 * s, "me", "door is open 🙃"),
        Event(maya, t + 9 * s, "partner", "Got it, see you!"),
        Event(jonas, at(20, 11, 2), "partner", "Hello Sasha, where should I send the new lease documents?"),
        Event(jonas, at(20, 11, 9), "me", f"my email is {FAKE_EMAIL} // thank you!!"),
        Event(jonas, at(20, 11, 15), "partner", "Thank you, I will send them today."),
        Event(tomas, at(23, 14, 20), "partner", "Do you have the staging key for the translation API?"),
        Event(tomas, at(23, 14, 22), "me", f"yes // {key} // don't paste it in public {{me_lol}}"),
        Event(tomas, at(23, 14, 25), "partner", "Got it, thanks 👍"),
        Event(tomas, at(30, 10, 40), "me", "", forward),
        Event(tomas, at(30, 10, 41), "me", "this is the thing i was talking about"),
        Event(tomas, at(30, 10, 55), "partner", "Nice, the grid trick is useful."),
        Event(priya, at(33, 20, 10), "partner", "The registration page keeps rejecting my card 😭"),
        Event(priya, at(33, 20, 14), "me", f"use mine // {FAKE_CARD} exp 12/27 // you can pay me back later"),
        Event(priya, at(33, 20, 16), "partner", "You're a lifesaver!! Done 🎉"),
        Event(mum, at(41, 18, 30), "me", f"new number btw // {FAKE_PHONE}"),
        Event(mum, at(41, 18, 47), "partner", "Thank you darling, I've saved it."),
        Event(mum, at(41, 19, 2), "partner", "", {"service": "phone_call", "duration_seconds": 754}),
        Event(maya, at(45, 21, 3), "me", "", link),
        Event(maya, at(45, 21, 4), "me", "we should do this one in may"),
        Event(maya, at(45, 21, 20), "partner", "", bold),
        Event(maya, at(45, 21, 22), "partner", "", {"service": "pin_message"}),
        Event(priya, at(50, 8, 1), "partner", "Race day is Sunday, don't forget!!", {"edited_minutes": 2}),
        Event(priya, at(50, 8, 9), "me", "", mention),
        Event(priya, at(50, 8, 12), "partner", "<voice>"),
        Event(priya, at(50, 8, 15), "me", "<photo>"),
    ]
    # fmt: on


GROUP_ID = 4123456789
GROUP_MEMBERS = [("Maya Fontaine", 6071234511), ("Priya Raman", 6071234514), ("Ben Adler", 6071234519)]
GROUP_LINES = [
    "Ben Adler: Who's in for the Frankenjura trip?",
    "me: meee",
    "Maya Fontaine: Me!! Which weekend?",
    "Ben Adler: Either the 18th or the 25th",
    "Priya Raman: 25th works better for me",
    "me: 25th // love that for us",
    "Ben Adler: I'll book the campsite then",
    "Maya Fontaine: Who's driving?",
    "me: i can drive // if someone brings snacks",
    "Priya Raman: Snacks are my department 🎉",
    "Ben Adler: Ok booked. 45 each",
    "me: sending now",
    "Maya Fontaine: Can't wait!!",
    "Ben Adler: Don't forget the crash pads",
]
BOT_ID = 6071239999
BOT_LINES = [
    "me: /start",
    "bot: Hi! Send me a city name and I'll tell you the weather.",
    "me: berlin",
    "bot: Berlin: 14°C, light rain 🌧",
    "me: lisbon",
    "bot: Lisbon: 22°C, sunny ☀️",
]


def group_events(rng: random.Random) -> list[Event]:
    events = []
    t = datetime(2024, 4, 2, 20, 0, tzinfo=TZ)
    for line in GROUP_LINES:
        who, _, text = line.partition(": ")
        t += timedelta(seconds=rng.randint(20, 400))
        for part in text.split(" // "):
            events.append(Event(GROUP_ID, t, who, part))
            t += timedelta(seconds=rng.randint(3, 20))
    return events


def bot_events(rng: random.Random) -> list[Event]:
    t = datetime(2024, 3, 20, 8, 10, tzinfo=TZ)
    events = []
    for line in BOT_LINES:
        who, _, text = line.partition(": ")
        t += timedelta(seconds=rng.randint(2, 30))
        events.append(Event(BOT_ID, t, who, text))
    return events


# ----------------------------------------------------------------------------------------------------------
# Desktop's JSON shape
# ----------------------------------------------------------------------------------------------------------


def text_entities(text: str | list) -> list[dict]:
    parts = [text] if isinstance(text, str) else text
    out = []
    for part in parts:
        if isinstance(part, str):
            if part:
                out.append({"type": "plain", "text": part})
        else:
            out.append(dict(part))
    return out


def desktop_message(msg_id: int, ev: Event, sender_name: str, sender_id: int, rng: random.Random) -> dict:
    stamp = {"date": ev.when.replace(tzinfo=None).isoformat(), "date_unixtime": str(int(ev.when.timestamp()))}
    if "service" in ev.extra:
        entry: dict = {
            "id": msg_id,
            "type": "service",
            **stamp,
            "actor": sender_name,
            "actor_id": f"user{sender_id}",
            "action": ev.extra["service"],
        }
        if ev.extra["service"] == "phone_call":
            entry.update(duration_seconds=ev.extra["duration_seconds"], discard_reason="hangup")
        else:
            entry["message_id"] = msg_id - 1
        entry.update(text="", text_entities=[])
        return entry
    entry = {"id": msg_id, "type": "message", **stamp, "from": sender_name, "from_id": f"user{sender_id}"}
    if "edited_minutes" in ev.extra:
        edited = ev.when + timedelta(minutes=ev.extra["edited_minutes"])
        entry.update(
            edited=edited.replace(tzinfo=None).isoformat(), edited_unixtime=str(int(edited.timestamp()))
        )
    if "forwarded_from" in ev.extra:
        entry["forwarded_from"] = ev.extra["forwarded_from"]
        entry["forwarded_from_id"] = "channel1987654321"
    text: str | list = ev.extra.get("text", ev.body)
    if isinstance(text, str):
        text, media = media_extra(text, ev.when, rng)
        entry.update(media)
        url = URL_RE.search(text)
        if url:
            parts = [text[: url.start()], {"type": "link", "text": url.group(0)}, text[url.end() :]]
            text = [p for p in parts if p]
    entry["text"] = text
    entry["text_entities"] = text_entities(text)
    return entry


def build_export(seed: int = SEED) -> dict:
    """The whole export as a JSON-ready dict (deterministic for a seed)."""
    rng = random.Random(seed)
    events: list[Event] = []
    for partner in PARTNERS:
        events += partner_events(partner, rng)
    planted = planted_events(rng)
    for ev in planted:  # planted lines may use rules ({me_lol}) and bursts too
        if ev.body and not ev.body.startswith("<"):
            parts = [x.strip() for x in expand(ev.body, rng).split("//") if x.strip()]
            for k, part in enumerate(parts):
                events.append(
                    Event(ev.chat_id, ev.when + timedelta(seconds=8 * k), ev.sender, part, ev.extra)
                )
        else:
            events.append(ev)
    events += group_events(rng) + bot_events(rng)

    # Private chats and basic groups share one message-id sequence in Telegram: number them by time.
    events.sort(key=lambda e: (e.when, e.chat_id))
    by_chat: dict[int, list[dict]] = {}
    names = {p.chat_id: p.name for p in PARTNERS} | {m[1]: m[0] for m in GROUP_MEMBERS}
    name_ids = {m[0]: m[1] for m in GROUP_MEMBERS}
    for msg_id, ev in enumerate(events, start=FIRST_MESSAGE_ID):
        if ev.chat_id == BOT_ID:
            name, uid = ("Weathery Bot", BOT_ID) if ev.sender == "bot" else (ME_NAME, ME_ID)
        elif ev.chat_id == GROUP_ID:
            name, uid = (ME_NAME, ME_ID) if ev.sender == "me" else (ev.sender, name_ids[ev.sender])
        else:
            name, uid = (ME_NAME, ME_ID) if ev.sender == "me" else (names[ev.chat_id], ev.chat_id)
        by_chat.setdefault(ev.chat_id, []).append(desktop_message(msg_id, ev, name, uid, rng))

    chats = [
        {"name": p.name, "type": "personal_chat", "id": p.chat_id, "messages": by_chat[p.chat_id]}
        for p in PARTNERS
    ]
    group_messages = by_chat[GROUP_ID]
    first = group_messages[0]
    created = datetime.fromtimestamp(int(first["date_unixtime"]) - 60, TZ)
    create = {
        "id": first["id"] - 1,
        "type": "service",
        "date": created.replace(tzinfo=None).isoformat(),
        "date_unixtime": str(int(created.timestamp())),
        "actor": "Ben Adler",
        "actor_id": "user6071234519",
        "action": "create_group",
        "title": "Climbing crew 🧗",
        "members": [ME_NAME] + [m[0] for m in GROUP_MEMBERS],
        "text": "",
        "text_entities": [],
    }
    chats.insert(
        2,
        {
            "name": "Climbing crew 🧗",
            "type": "private_group",
            "id": GROUP_ID,
            "messages": [create] + group_messages,
        },
    )
    chats.insert(5, {"name": "Weathery Bot", "type": "bot_chat", "id": BOT_ID, "messages": by_chat[BOT_ID]})
    saved_at = datetime(2024, 4, 10, 23, 11, tzinfo=TZ)
    chats.append(
        {
            "type": "saved_messages",
            "id": ME_ID,
            "messages": [
                {
                    "id": FIRST_MESSAGE_ID + len(events),
                    "type": "message",
                    "date": saved_at.replace(tzinfo=None).isoformat(),
                    "date_unixtime": str(int(saved_at.timestamp())),
                    "from": ME_NAME,
                    "from_id": f"user{ME_ID}",
                    "text": "buy: oat milk, lemons, chalk",
                    "text_entities": [{"type": "plain", "text": "buy: oat milk, lemons, chalk"}],
                }
            ],
        }
    )
    channel_at = datetime(2024, 3, 15, 12, 0, tzinfo=TZ)
    chats.append(
        {
            "name": "Frontend Weekly",
            "type": "public_channel",
            "id": 1987654321,
            "messages": [
                {
                    "id": 512,
                    "type": "message",
                    "date": channel_at.replace(tzinfo=None).isoformat(),
                    "date_unixtime": str(int(channel_at.timestamp())),
                    "from": "Frontend Weekly",
                    "from_id": "channel1987654321",
                    "text": "Ten CSS tricks that will change how you build layouts",
                    "text_entities": [
                        {"type": "plain", "text": "Ten CSS tricks that will change how you build layouts"}
                    ],
                }
            ],
        }
    )

    return {
        "about": "Here is the data you requested. Remember: Telegram is ad free, it doesn't sell your data.",
        "personal_information": {
            "user_id": ME_ID,
            "first_name": "Sasha",
            "last_name": "Novak",
            "phone_number": "+44 7700 900001",
            "username": "@sasha_novak_demo",
            "bio": "plants, climbing, too many tabs",
        },
        "contacts": {
            "about": "This is your contact list.",
            "list": [
                {
                    "user_id": p.user_id,
                    "first_name": p.name,
                    "last_name": "",
                    "phone_number": f"+44 7700 9001{i:02d}",
                    "date": "2023-11-02T10:00:00",
                    "date_unixtime": "1698915600",
                }
                for i, p in enumerate(PARTNERS, start=10)
            ],
        },
        "chats": {"about": "This page lists all chats from this export.", "list": chats},
    }


def render(export: dict) -> str:
    """Desktop's own layout: one-space indent, UTF-8 as is, a trailing newline."""
    return json.dumps(export, ensure_ascii=False, indent=1) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write result.json")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--check", action="store_true", help="exit 1 if --out differs from a fresh build")
    args = parser.parse_args(argv)
    text = render(build_export(args.seed))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is stale: run `python examples/make_sample_export.py`", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    chats = json.loads(text)["chats"]["list"]
    n = sum(len(c["messages"]) for c in chats)
    print(f"wrote {args.out}: {len(chats)} chats, {n} entries")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
