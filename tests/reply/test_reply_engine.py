"""The reply listener against a fake Telegram client (Telethon's names) and a fake twin, in virtual time."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from reply_fake import ANNA, BORIS, ME, FakeEvent, Make, build_world, message, person
from telethon import errors, events, helpers
from telethon.tl import types

from prepare.feedback import draft_stats, read_feedback


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Make:
    monkeypatch.delenv("TWIN_API_URL", raising=False)
    return lambda **kw: build_world(tmp_path, **kw)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def test_a_private_message_makes_a_draft_from_the_chat_history(make: Make) -> None:
    w = make(replies=("yes! friday works\nwhat time?",))
    w.client.history[ANNA.id] = [message(1, ANNA.id, "hey"), message(2, ANNA.id, "hi!", out=True)]

    async def body() -> None:
        await w.client.partner_says(ANNA, 3, "free on friday?")
        await w.client.partner_says(ANNA, 4, "for dinner")  # a burst: one reply, after the last one
        assert w.drafts() == []  # still waiting: the partner may write more
        await w.clock.advance(4.0)

    run(body)
    assert w.drafts() == [(ANNA.id, "yes! friday works\nwhat time?")]  # whole, for editing
    assert w.client.sent == [] and w.client.actions == []  # nothing sent without approval
    ((turns, partner),) = w.twin.asked
    assert partner == "Anna"
    assert [(t.speaker, t.text) for t in turns] == [
        ("partner", "hey"), ("me", "hi!"), ("partner", "free on friday?\nfor dinner")
    ]  # fmt: skip


@pytest.mark.parametrize(
    "chat",
    [
        types.Chat(
            id=500, title="Team", photo=types.ChatPhotoEmpty(), participants_count=5, date=None, version=1
        ),  # fmt: skip
        person(103, "SomeBot", bot=True),
        person(777000, "Telegram"),
        person(ME, "Me", is_self=True),
    ],
    ids=["group", "bot", "service", "saved-messages"],
)
def test_groups_bots_service_and_saved_messages_are_ignored(make: Make, chat: Any) -> None:
    w = make()

    async def body() -> None:
        m = message(1, getattr(chat, "id", 500), "hello")
        w.client.history[chat.id] = [m]
        await w.client.dispatch(FakeEvent(m, chat))
        await w.clock.advance(60)

    run(body)
    assert w.twin.asked == [] and w.client.requests == [] and w.client.sent == []


def test_an_auto_reply_chat_gets_a_delayed_send_with_typing(make: Make) -> None:
    w = make(replies=("omw\n5 min",), auto_reply=[ANNA.id], read_delay_s=5.0, chars_per_s=2.0,
             line_pause_s=1.0)  # fmt: skip

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "where are you?")
        await w.clock.advance(4.0)  # the debounce: the twin is asked
        assert len(w.twin.asked) == 1 and w.client.sent == []
        assert w.client.actions == [("typing", ANNA.id, 4.0)]
        await w.clock.advance(6.0)  # 5 s reading + 3 chars / 2 per s = 6.5 s: not yet
        assert w.client.sent == []
        await w.clock.advance(10.0)

    run(body)
    # separate messages, as the person writes: the second after its own typing pause (1 + 5/2 s)
    assert [(text, at) for _, text, at in w.client.sent] == [("omw", 10.5), ("5 min", 14.0)]
    assert [a for a, _, _ in w.client.actions] == ["typing", "cancel typing", "typing", "cancel typing"]
    assert w.drafts() == []
    assert not w.settings.feedback.exists()  # the twin's own words are no training label


def test_a_newer_partner_message_cancels_the_pending_auto_reply(make: Make) -> None:
    w = make(replies=("first answer", "second answer"), auto_reply=[ANNA.id])

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "are you coming?")
        await w.clock.advance(5.0)  # asked, typing...
        assert len(w.twin.asked) == 1 and w.client.actions[-1][0] == "typing"
        await w.client.partner_says(ANNA, 2, "never mind, I'll call")
        assert w.client.actions[-1][0] == "cancel typing"
        await w.clock.advance(120.0)

    run(body)
    assert w.client.texts_sent() == ["second answer"]  # the first never went out
    assert w.twin.asked[1][0][-1].text == "are you coming?\nnever mind, I'll call"


@pytest.mark.parametrize("how", ["sends", "types"])
def test_the_person_writing_themselves_cancels_the_auto_reply(make: Make, how: str) -> None:
    w = make(auto_reply=[ANNA.id])

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "lunch?")
        await w.clock.advance(5.0)
        if how == "sends":
            await w.client.i_send(ANNA, 2, "yes")
        else:
            await w.client.i_type(ANNA, "ye")
        await w.clock.advance(300.0)

    run(body)
    assert w.client.sent == []


def test_the_stop_word_pauses_everything_until_resumed(make: Make) -> None:
    w = make(auto_reply=[ANNA.id])

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "lunch?")
        await w.client.partner_says(BORIS, 1, "call me")
        await w.clock.advance(3.0)  # both still pending
        saved = person(ME, "Me", is_self=True)
        await w.client.dispatch(FakeEvent(message(9, ME, " /TwinStop ", out=True), saved))
        assert w.settings.pause_file.exists()  # survives a restart
        await w.clock.advance(300.0)
        await w.client.partner_says(BORIS, 2, "hello??")
        await w.clock.advance(300.0)
        assert w.client.sent == [] and w.drafts() == []
        await w.client.dispatch(FakeEvent(message(10, ME, "/twingo", out=True), saved))
        await w.client.partner_says(BORIS, 3, "still there?")
        await w.clock.advance(10.0)

    run(body)
    assert not w.settings.pause_file.exists()
    assert w.drafts() == [(BORIS.id, "sure, see you then")]
    assert any("PAUSED" in line for line in w.announced)


def test_a_paused_state_from_an_earlier_run_holds(make: Make, tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "paused").touch()
    w = make()

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(60.0)

    run(body)
    assert w.twin.asked == [] and w.drafts() == []


def test_rate_limits_hold_and_the_rest_become_drafts(make: Make) -> None:
    w = make(auto_reply=[ANNA.id, BORIS.id], per_chat_per_hour=1, global_per_hour=2, debounce_s=0.0)

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "one")
        await w.clock.advance(120.0)
        await w.client.partner_says(ANNA, 2, "two")  # over the per-chat limit: a draft
        await w.clock.advance(120.0)
        await w.client.partner_says(BORIS, 1, "three")  # second overall: sent
        await w.clock.advance(120.0)
        await w.client.i_send(BORIS, 2, "bye")
        await w.client.partner_says(BORIS, 3, "four")  # BORIS's own limit
        await w.clock.advance(120.0)
        await w.clock.advance(3600.0)  # an hour later, the limits are free again
        await w.client.partner_says(ANNA, 3, "five")
        await w.clock.advance(120.0)

    run(body)
    sent_to = [entity.id for entity, _, _ in w.client.sent]
    assert sent_to == [ANNA.id, BORIS.id, ANNA.id]
    assert [chat for chat, _ in w.drafts()] == [ANNA.id, BORIS.id]


def test_quiet_hours_make_drafts_instead_of_sends(make: Make) -> None:
    w = make(auto_reply=[ANNA.id], quiet_hours="11:30-13:00")  # the fake clock starts at 12:00

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "up?")
        await w.clock.advance(120.0)

    run(body)
    assert w.client.sent == [] and w.drafts() == [(ANNA.id, "sure, see you then")]


def test_the_record_of_an_edited_draft_appears_in_the_feedback_file(make: Make) -> None:
    w = make(replies=("sure, see you at 8",))
    w.client.history[ANNA.id] = [message(1, ANNA.id, "hey"), message(2, ANNA.id, "hi!", out=True)]

    async def body() -> None:
        await w.client.partner_says(ANNA, 3, "dinner tonight?")
        await w.clock.advance(5.0)
        await w.client.i_type(ANNA, "sure, see you at 9")  # editing the draft on the phone
        await w.client.i_send(ANNA, 4, "sure, see you at 9")
        await w.client.i_send(ANNA, 5, "bring wine")  # the burst goes on
        fixed = message(5, ANNA.id, "bring wine 🍷", out=True)
        fixed.edit_date = message(6, ANNA.id, "").date
        await w.client.dispatch(FakeEvent(fixed, ANNA))  # and a typo fixed right after sending
        assert not w.settings.feedback.exists()  # the person may still be writing
        await w.clock.advance(w.settings.feedback_window_s + 1)

    run(body)
    (record,) = read_feedback(w.settings.feedback)
    assert record.outcome == "edited" and record.source == "reply" and 0.5 <= record.similarity < 1
    assert record.response == "sure, see you at 9\nbring wine 🍷" and record.draft == "sure, see you at 8"
    assert record.instruction == "dinner tonight?" and record.partner == "Anna"
    assert [(t.speaker, t.text) for t in record.turns] == [("partner", "hey"), ("me", "hi!")]
    assert stat.S_IMODE(w.settings.feedback.stat().st_mode) == 0o600
    assert stat.S_IMODE(w.settings.feedback.parent.stat().st_mode) == 0o700


def test_outcomes_unchanged_replaced_discarded_superseded_and_stats(make: Make) -> None:
    w = make(replies=("ok 👍", "sounds good", "maybe later", "no idea", "see you"))

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "the usual?")
        await w.clock.advance(5.0)
        await w.client.i_send(ANNA, 2, " ok 👍 ")  # as is
        await w.client.partner_says(ANNA, 3, "and saturday?")  # the partner's answer closes the reply
        await w.clock.advance(5.0)
        await w.client.i_send(ANNA, 4, "can't, I'm away all weekend with the family")  # replaced
        await w.clock.advance(100.0)
        await w.client.partner_says(BORIS, 1, "coffee?")
        await w.clock.advance(5.0)
        await w.client.i_type(BORIS, "")  # cleared the draft, sent nothing
        await w.clock.advance(100.0)
        await w.client.partner_says(BORIS, 2, "hello?")
        await w.clock.advance(5.0)
        await w.client.partner_says(BORIS, 3, "??")  # a newer draft replaces the untouched one
        await w.clock.advance(5.0)

    run(body)
    outcomes = [r.outcome for r in read_feedback(w.settings.feedback)]
    assert outcomes == ["unchanged", "replaced", "discarded", "superseded"]
    stats = draft_stats(w.settings.feedback)
    assert stats["drafts"] == 4 and stats["sent"] == 2 and stats["unchanged"] == 1
    assert stats["unchanged_share"] == 0.25 and stats["unchanged_share_of_sent"] == 0.5


def test_a_draft_of_the_persons_own_is_never_overwritten(make: Make) -> None:
    w = make()
    w.client.drafts[ANNA.id] = "I was writing this myself"

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(10.0)

    run(body)
    assert w.drafts() == [] and w.client.drafts[ANNA.id] == "I was writing this myself"


def test_saved_mode_writes_to_saved_messages_with_a_link(make: Make) -> None:
    w = make(mode="saved")

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(10.0)

    run(body)
    ((entity, text, _),) = w.client.sent
    assert entity == "me" and text == "Twin's draft for Anna:\n\nsure, see you then"
    (link,) = w.client.history[ME][-1].entities
    assert isinstance(link, types.MessageEntityTextUrl) and link.url == "tg://user?id=101"
    assert text[link.offset : link.offset + link.length] == "Anna"
    assert w.drafts() == []


def test_saved_mode_keeps_the_rate_limits_and_drafts_past_them(make: Make) -> None:
    w = make(mode="saved", per_chat_per_hour=1, global_per_hour=2, debounce_s=0.0)
    w.client.faults["send_message"] = [errors.FloodWaitError(request=None, capture=30)]

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "one")  # a FloodWait first: waited out, then written
        await w.clock.advance(120.0)
        await w.client.partner_says(ANNA, 2, "two")  # over the per-chat limit: the chat's draft
        await w.clock.advance(120.0)
        await w.client.partner_says(BORIS, 1, "three")  # second overall: written
        await w.clock.advance(120.0)
        await w.client.partner_says(person(103, "Cleo"), 1, "four")  # over the global limit: a draft
        await w.clock.advance(3600.0)  # an hour later, the limits are free again
        await w.client.partner_says(ANNA, 3, "five")
        await w.clock.advance(120.0)

    run(body)
    saved = [text for entity, text, _ in w.client.sent if entity == "me"]
    assert len(saved) == 3 and len(w.client.sent) == 3 and 30 in w.clock.slept
    assert [chat for chat, _ in w.drafts()] == [ANNA.id, 103]
    assert w.replier.counts["saved: over the limit, drafted"] == 2


@pytest.mark.parametrize("mode", ["saved", "auto"])
def test_the_twins_words_arrive_as_written_not_as_markdown(make: Make, mode: str) -> None:
    reply = "edit __init__.py, pass **kwargs and see [the docs](http://example.org) `now`"
    zoe = person(105, "Zoë 😀 [x]", username="zoe")
    auto = [zoe.id] if mode == "auto" else []
    w = make(replies=(reply,), mode="saved" if mode == "saved" else "draft", auto_reply=auto)
    w.client.echo_sends = True  # the sent message comes back: with its text intact it is known as the twin's

    async def body() -> None:
        await w.client.partner_says(zoe, 1, "how do I do it?")
        await w.clock.advance(120.0)

    run(body)
    ((_, text, _),) = w.client.sent
    assert text.endswith(reply)
    if mode == "saved":
        (link,) = w.client.history[ME][-1].entities
        name = helpers.del_surrogate(helpers.add_surrogate(text)[link.offset : link.offset + link.length])
        assert name == "Zoë 😀 [x]" and link.url == "https://t.me/zoe"
    else:
        assert w.client.history[zoe.id][-1].entities is None and w.replier.counts["cancelled"] == 0


def test_flood_wait_is_waited_out_and_the_draft_still_made(make: Make) -> None:
    w = make()
    w.client.faults["SaveDraftRequest"] = [errors.FloodWaitError(request=None, capture=30)]
    w.client.faults["iter_messages"] = [ConnectionError("network down")]

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(100.0)

    run(body)
    assert w.drafts() == [(ANNA.id, "sure, see you then")]
    assert 30 in w.clock.slept and w.replier.actions.counts.flood_waits == 1
    assert w.replier.actions.counts.network_retries == 1


def test_dry_run_prints_and_touches_nothing(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    w = make(dry_run=True, replies=("omw",))
    w2 = make(dry_run=True, replies=("ok",), auto_reply=[BORIS.id])

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "where are you?")
        await w.clock.advance(10.0)
        await w.client.i_send(ANNA, 2, "omw")
        await w.clock.advance(1000.0)
        await w2.client.partner_says(BORIS, 1, "ping")
        await w2.clock.advance(10.0)
        stop = message(3, ME, "/twinstop", out=True)
        await w2.client.dispatch(FakeEvent(stop, person(ME, "Me", is_self=True)))

    with caplog.at_level("DEBUG"):
        run(body)
    assert w.client.requests == [] and w.client.sent == [] and w2.client.sent == []
    assert w2.client.actions == []
    assert any("would put this draft in the chat with Anna:\nomw" in line for line in w.announced)
    assert any("would send to Boris" in line and "ok" in line for line in w2.announced)
    assert not w.settings.feedback.exists() and not w2.settings.pause_file.exists()
    # content logging is off: no message or reply text in the log
    assert not any(word in caplog.text for word in ("where are you", "omw", "ping"))


def test_content_logging_shows_text_only_when_asked(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    w = make(log_content=True, replies=("a secret plan",))

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(10.0)

    with caplog.at_level("INFO"):
        run(body)
    assert "a secret plan" in caplog.text


def test_a_failing_twin_server_leaves_the_chat_alone(make: Make) -> None:
    from reply.twin import TwinServerError

    w = make()

    async def broken(turns: Any, partner: str) -> str:
        raise TwinServerError("cannot reach the twin server")

    w.replier.twin.suggest = broken  # type: ignore[method-assign]

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(10.0)
        await w.client.partner_says(ANNA, 2, "hi again")  # the listener still answers events
        await w.clock.advance(10.0)

    run(body)
    assert w.drafts() == [] and w.replier.counts["twin server errors"] == 2


def test_feedback_records_are_json_lines_with_the_flag(make: Make) -> None:
    w = make()

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(5.0)
        await w.client.i_send(ANNA, 2, "sure, see you then")
        await w.replier.close()  # shutting down records what was already sent

    run(body)
    (line,) = w.settings.feedback.read_text(encoding="utf-8").splitlines()
    obj = json.loads(line)
    assert obj["source"] == "reply" and obj["version"] == 1 and obj["outcome"] == "unchanged"
    assert obj["dialog_id"] == ANNA.id and obj["turns"] == []


def test_telegram_echoing_the_twin_draft_back_cancels_nothing(make: Make) -> None:
    w = make()
    w.client.echo_drafts = True

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(5.0)
        await w.client.i_send(ANNA, 2, "sure, see you then")
        await w.clock.advance(100.0)

    run(body)
    assert w.client.echoed == 1 and w.replier.counts["cancelled"] == 0
    assert [r.outcome for r in read_feedback(w.settings.feedback)] == ["unchanged"]


def test_telegram_down_for_good_gives_up_that_reply_and_keeps_listening(make: Make) -> None:
    w = make()
    w.client.faults["iter_messages"] = [ConnectionError("down")] * 7  # collect's 6 retries, then give up

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(1000.0)
        await w.client.partner_says(ANNA, 2, "hello?")  # the network is back
        await w.clock.advance(10.0)

    run(body)
    assert w.replier.counts["telegram errors"] == 1 and w.replier.actions.counts.network_retries == 6
    assert w.drafts() == [(ANNA.id, "sure, see you then")]


@dataclass
class Typing:
    """`events.UserUpdate.Event` as the handler reads it."""

    user_id: int
    typing: bool = True

    @property
    def chat_id(self) -> int:
        return self.user_id


def test_the_partner_still_typing_postpones_the_reply(make: Make) -> None:
    w = make(debounce_s=4.0)

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "so")
        await w.clock.advance(3.0)
        for callback, builder in w.client.handlers:
            if isinstance(builder, events.UserUpdate):
                await callback(Typing(ANNA.id))
                await callback(Typing(BORIS.id))  # no pending reply there: nothing happens
        await w.clock.advance(3.0)  # 6 s after the message, 3 s after the typing: still waiting
        assert w.twin.asked == []
        await w.client.partner_says(ANNA, 2, "about tomorrow")
        await w.clock.advance(4.0)

    run(body)
    assert len(w.twin.asked) == 1 and w.twin.asked[0][0][-1].text == "so\nabout tomorrow"
    assert w.drafts() == [(ANNA.id, "sure, see you then")]
    assert w.replier.waiting == {} and w.replier.tasks == {}


async def partner_types(w: Any, user_id: int) -> None:
    """Telegram's `UpdateUserTyping` for `user_id`, handed to the `events.UserUpdate` handlers."""
    for callback, builder in w.client.handlers:
        if isinstance(builder, events.UserUpdate):
            await callback(Typing(user_id))


def test_typing_that_never_stops_holds_the_reply_back_only_so_long(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    w = make(debounce_s=4.0, max_typing_wait_s=20.0)
    asked_at: list[float] = []

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "so")
        while w.clock.t < 100:  # a client stuck on "typing…": the update every 2 s, for ever
            await w.clock.advance(2.0)
            if w.twin.asked and not asked_at:
                asked_at.append(w.clock.t)
            await partner_types(w, ANNA.id)

    with caplog.at_level(logging.INFO):
        run(body)
    assert asked_at == [20.0] and len(w.twin.asked) == 1  # 20 s after the message, what was written so far
    assert w.twin.asked[0][0][-1].text == "so" and w.drafts() == [(ANNA.id, "sure, see you then")]
    assert w.replier.counts["typing cap reached"] == 1 and "--max-typing-wait-s" in caplog.text


def test_typing_renewed_every_5_s_is_still_typing(make: Make) -> None:
    """Telegram's clients repeat "typing…" about every 5 s and it lapses after 6 s: a debounce of 4 s
    between two updates is no sign that the partner has stopped."""
    w = make(debounce_s=4.0)

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "so")
        for _ in range(5):  # typing from 1 s to 21 s
            await w.clock.advance(1.0 if w.clock.t == 0 else 5.0)
            await partner_types(w, ANNA.id)
        await w.clock.advance(5.5)  # 26.5 s: the last update has not lapsed yet
        assert w.twin.asked == []
        await w.clock.advance(1.0)  # 27.5 s: it has (21 + 6)

    run(body)
    assert len(w.twin.asked) == 1 and w.replier.counts["typing cap reached"] == 0


def test_no_auto_reply_over_a_draft_of_the_persons_own(make: Make) -> None:
    w = make(auto_reply=[ANNA.id])
    w.client.drafts[ANNA.id] = "let me think"

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "so?")
        await w.clock.advance(300.0)

    run(body)
    assert w.client.sent == [] and w.drafts() == [] and w.client.drafts[ANNA.id] == "let me think"
