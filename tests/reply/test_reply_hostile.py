"""Odd and hostile situations for the listener: what Telegram, the partner and the person may throw at it.

Every case must end in a clear log line with the listener still answering the next message; message text
never reaches the log, and the twin only ever sees what training saw (scrubbed, clipped, cleaned).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from reply_fake import ANNA, BORIS, ME, T0, FakeClient, FakeEvent, Make, build_world, message, person, settle
from telethon import errors
from telethon.tl import functions, types

from prepare.prompt import MAX_TURN_CHARS
from prepare.records import Turn
from reply.conversation import MAX_MESSAGE_CHARS
from reply.listen import answer_chats

SAVED = person(ME, "Me", is_self=True)
SERVICE = person(777000, "Telegram", verified=True)


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Make:
    monkeypatch.delenv("TWIN_API_URL", raising=False)
    return lambda **kw: build_world(tmp_path, **kw)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def sticker(mid: int, peer: int) -> Any:
    document = types.Document(
        id=mid, access_hash=1, file_reference=b"", date=T0, mime_type="image/webp", size=1, dc_id=1,
        attributes=[types.DocumentAttributeSticker(alt="😀", stickerset=types.InputStickerSetEmpty())],
    )  # fmt: skip
    return types.Message(id=mid, peer_id=types.PeerUser(peer), date=T0 + timedelta(minutes=mid), message="",
                         media=types.MessageMediaDocument(document=document))  # fmt: skip


def photo(mid: int, peer: int, caption: str = "") -> Any:
    return types.Message(id=mid, peer_id=types.PeerUser(peer), date=T0 + timedelta(minutes=mid),
                         message=caption, media=types.MessageMediaPhoto())  # fmt: skip


def service(mid: int, peer: int) -> Any:
    return types.MessageService(id=mid, peer_id=types.PeerUser(peer), date=T0 + timedelta(minutes=mid),
                                action=types.MessageActionContactSignUp())  # fmt: skip


def forwarded(mid: int, peer: int) -> Any:
    m = message(mid, peer, "look at this")
    m.fwd_from = types.MessageFwdHeader(date=T0, from_name="Some Channel")
    return m


async def arrives(w: Any, chat: Any, m: Any) -> None:
    w.client.history.setdefault(chat.id, []).append(m)
    await w.client.dispatch(FakeEvent(m, chat))


# ---- what is never answered ---------------------------------------------------------------------------
class NoChat(FakeEvent):
    """An event whose chat Telethon cannot resolve (`get_chat` fails)."""

    async def get_chat(self) -> Any:
        raise ValueError("Could not find the input entity for PeerUser(user_id=777000)")


def test_login_codes_never_reach_the_twin_or_the_log(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    w = make(log_content=True)
    code = "Login code: 51842. Do not give this code to anyone"

    async def body() -> None:
        await arrives(w, SERVICE, message(1, SERVICE.id, code))
        m = message(2, SERVICE.id, code)
        await w.client.dispatch(NoChat(m, SERVICE))  # even when the chat cannot be resolved
        await w.clock.advance(60.0)
        await w.client.partner_says(ANNA, 1, "hi")  # still listening
        await w.clock.advance(10.0)

    with caplog.at_level(logging.INFO):
        run(body)
    assert [partner for _, partner in w.twin.asked] == ["Anna"]
    assert "51842" not in caplog.text and "777000" in caplog.text
    assert w.replier.counts["ignored: Telegram notices"] == 2


def test_an_unresolvable_chat_is_logged_and_the_listener_goes_on(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    w = make()

    async def body() -> None:
        await w.client.dispatch(NoChat(message(1, 555, "hello"), person(555, "Ghost")))
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(10.0)

    with caplog.at_level(logging.INFO):
        run(body)
    assert w.drafts() == [(ANNA.id, "sure, see you then")]
    assert "chat 555" in caplog.text and "ValueError" in caplog.text


@pytest.mark.parametrize("make_message", [sticker, photo, service, forwarded],
                         ids=["sticker", "media-only", "service", "forwarded"])  # fmt: skip
def test_messages_without_text_neither_ask_the_twin_nor_cancel(
    make: Make, make_message: Callable[[int, int], Any], caplog: pytest.LogCaptureFixture
) -> None:
    w = make(auto_reply=[ANNA.id])

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "are you coming?")
        await w.clock.advance(2.0)
        await arrives(w, ANNA, make_message(2, ANNA.id))  # mid-burst: the reply still comes on time
        await w.clock.advance(60.0)
        await arrives(w, ANNA, make_message(3, ANNA.id))  # after the reply: nothing to answer
        await w.clock.advance(60.0)

    with caplog.at_level(logging.INFO):
        run(body)
    assert len(w.twin.asked) == 1 and w.twin.asked[0][0][-1] == Turn("partner", "are you coming?")
    assert w.client.texts_sent() == ["sure, see you then"]
    assert "nothing for the twin to answer" in caplog.text


def test_a_caption_is_answered_like_text(make: Make) -> None:
    w = make()

    async def body() -> None:
        await arrives(w, ANNA, photo(1, ANNA.id, "my new flat!"))
        await w.clock.advance(10.0)

    run(body)
    assert w.twin.asked[0][0] == [Turn("partner", "my new flat!")]


# ---- pause and resume -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stop", "chat"),
    [
        ("\u200b/TwinStop\u200b", SAVED),  # a zero-width space pasted along
        ("／ｔｗｉｎｓｔｏｐ", SAVED),  # full-width, from a CJK keyboard
        ("/twinstop@SomeBot", SAVED),  # a command tapped in a menu
        ("/twinstop now please", SAVED),  # pausing is the safe direction: the first word is enough
        ("\n /twinstop\t", person(102, "Boris")),  # in another chat
        (
            "/twinstop",
            types.Chat(
                id=500, title="Team", photo=types.ChatPhotoEmpty(), participants_count=5, date=T0, version=1
            ),
        ),  # fmt: skip
    ],
    ids=["zero-width", "full-width", "at-bot", "with-words", "other-chat", "group"],
)
def test_the_stop_word_with_odd_spelling_pauses(make: Make, stop: str, chat: Any) -> None:
    w = make()

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.client.dispatch(FakeEvent(message(9, getattr(chat, "id", 500), stop, out=True), chat))
        await w.clock.advance(60.0)

    run(body)
    assert w.replier.paused and w.twin.asked == [] and w.drafts() == []


def test_resume_needs_the_word_alone_and_the_partner_cannot_pause(make: Make) -> None:
    w = make()

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "/twinstop")  # the partner's words are just words
        await w.clock.advance(10.0)
        assert not w.replier.paused
        await w.client.dispatch(FakeEvent(message(9, ME, "/twinstop", out=True), SAVED))
        await w.client.dispatch(FakeEvent(message(10, ME, "/twingo is how I resume", out=True), SAVED))
        assert w.replier.paused
        await w.client.dispatch(FakeEvent(message(11, ME, " /TWINGO\u200b ", out=True), SAVED))

    run(body)
    assert not w.replier.paused


def test_an_auto_reply_that_reads_like_the_stop_word_does_not_pause(make: Make) -> None:
    w = make(replies=("/twinstop",), auto_reply=[ANNA.id])
    w.client.echo_sends = True  # Telegram echoes the sent message back after the request returned

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "type /twinstop")
        await w.clock.advance(60.0)
        await w.client.partner_says(BORIS, 1, "hi")
        await w.clock.advance(60.0)

    run(body)
    assert not w.replier.paused and w.client.texts_sent() == ["/twinstop"]
    assert w.drafts() == [(BORIS.id, "/twinstop")]


def test_the_persons_own_words_equal_to_an_earlier_auto_reply_still_count(make: Make) -> None:
    w = make(replies=("ok", "ok", "sure"), auto_reply=[ANNA.id])
    w.client.echo_sends = True

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "coming?")
        await w.clock.advance(60.0)  # "ok" auto-sent and echoed
        await w.client.partner_says(ANNA, 2, "now?")
        await w.clock.advance(4.5)  # asked; typing "ok"
        await w.client.i_send(ANNA, 3, "ok")  # the person answers themselves: the auto-reply must stop
        await w.clock.advance(60.0)

    run(body)
    assert w.client.texts_sent() == ["ok"]


def test_a_pause_file_that_cannot_be_written_still_pauses(make: Make, tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should be")
    w = make(pause_file=tmp_path / "blocker" / "paused")

    async def body() -> None:
        await w.client.dispatch(FakeEvent(message(9, ME, "/twinstop", out=True), SAVED))
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(60.0)

    run(body)
    assert w.replier.paused and w.twin.asked == []


def test_typing_while_paused_starts_nothing(make: Make) -> None:
    w = make()

    class Typing:
        user_id = chat_id = ANNA.id
        typing = True

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(1.0)
        w.replier.pause()
        await w.replier.on_user_update(Typing())  # before the cancelled task has run its cleanup
        await w.clock.advance(60.0)

    run(body)
    assert w.twin.asked == [] and w.replier.tasks == {}


# ---- the partner changes their mind ------------------------------------------------------------------
def test_an_edit_by_the_partner_restarts_the_pending_reply(make: Make) -> None:
    w = make(replies=("first", "second"), auto_reply=[ANNA.id])

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "meet at 5?")
        await w.clock.advance(6.0)  # asked; typing
        fixed = message(1, ANNA.id, "meet at 6?")
        fixed.edit_date = T0 + timedelta(minutes=2)
        w.client.history[ANNA.id] = [fixed]
        await w.client.dispatch(FakeEvent(fixed, ANNA))
        await w.clock.advance(60.0)

    run(body)
    assert w.client.texts_sent() == ["second"]
    assert w.twin.asked[-1][0][-1] == Turn("partner", "meet at 6?")


def test_a_deleted_message_cancels_the_reply_to_it(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    w = make(auto_reply=[ANNA.id])

    class Deleted:
        """`events.MessageDeleted.Event` in a private chat: Telegram names no chat, only ids."""

        deleted_ids = [1]
        deleted_id = 1
        chat_id = None

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "I love you")
        await w.clock.advance(6.0)  # asked; typing
        w.client.history[ANNA.id] = []
        await w.replier.on_message_deleted(Deleted())
        await w.clock.advance(60.0)

    with caplog.at_level(logging.INFO):
        run(body)
    assert w.client.sent == [] and "deleted" in caplog.text


# ---- secrets, long and odd text ------------------------------------------------------------------------
def test_secrets_are_scrubbed_from_the_prompt_and_the_log(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    w = make(log_content=True, replies=("got it, card 4111 1111 1111 1111",))
    phone_name = person(103, "+44 7700 900123")

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "my card is 4111 1111 1111 1111")
        await w.client.partner_says(ANNA, 2, "and the wifi password: hunter2xyz")
        await w.client.partner_says(phone_name, 1, "hi, new number")
        await w.clock.advance(10.0)

    with caplog.at_level(logging.DEBUG):
        run(body)
    prompt = repr(w.twin.asked)
    assert "<CARD>" in prompt and "<PASSWORD>" in prompt
    assert "4111" not in prompt and "hunter2xyz" not in prompt and "7700" not in prompt
    assert "4111" not in caplog.text and "hunter2xyz" not in caplog.text and "7700" not in caplog.text


def test_a_huge_message_is_clipped_as_training_clips_it(make: Make) -> None:
    w = make()

    async def body() -> None:
        for i in range(1, 31):
            await w.client.partner_says(ANNA, i, "😀" * 4096)
        await w.clock.advance(10.0)

    run(body)
    ((turns, _),) = w.twin.asked
    assert len(turns[-1].text) <= MAX_TURN_CHARS and w.drafts()


def test_broken_unicode_is_repaired_before_the_server_sees_it(make: Make) -> None:
    w = make()

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "half a pair \ud83d here\x00")
        await w.clock.advance(10.0)

    run(body)
    ((turns, _),) = w.twin.asked
    turns[-1].text.encode("utf-8")  # no lone surrogate left
    assert turns[-1].text == "half a pair \ufffd here"


@pytest.mark.parametrize("reply", ["\u200b\u200d", "   \n\n", "\x00"])
def test_an_invisible_reply_makes_no_draft(make: Make, reply: str, caplog: pytest.LogCaptureFixture) -> None:
    w = make(replies=(reply,))

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(10.0)

    with caplog.at_level(logging.INFO):
        run(body)
    assert w.drafts() == [] and "the twin wrote nothing" in caplog.text


def test_a_reply_with_a_placeholder_is_a_draft_not_a_send(make: Make) -> None:
    w = make(replies=("sure, it's <PASSWORD>",), auto_reply=[ANNA.id])

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "what's the wifi password?")
        await w.clock.advance(60.0)

    run(body)
    assert w.client.sent == [] and w.drafts() == [(ANNA.id, "sure, it's <PASSWORD>")]


def test_an_overlong_line_goes_out_in_pieces_telegram_takes(make: Make) -> None:
    w = make(replies=("a" * 9000,), auto_reply=[ANNA.id], max_delay_s=1.0)

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "tell me everything")
        await w.clock.advance(60.0)

    run(body)
    sent = w.client.texts_sent()
    assert "".join(sent) == "a" * 9000 and all(len(t) <= MAX_MESSAGE_CHARS for t in sent)


# ---- Telegram's own trouble ------------------------------------------------------------------------
def test_a_flood_wait_of_a_day_gives_up_that_draft(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    w = make()
    w.client.faults["SaveDraftRequest"] = [errors.FloodWaitError(request=None, capture=86400)]

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(100.0)
        await w.client.partner_says(BORIS, 1, "hello")
        await w.clock.advance(10.0)

    with caplog.at_level(logging.INFO):
        run(body)
    assert 86400 not in w.clock.slept and w.drafts() == [(BORIS.id, "sure, see you then")]
    assert w.replier.counts["telegram errors"] == 1 and "FloodWait" in caplog.text


def test_flood_waits_without_end_give_up(make: Make) -> None:
    w = make()
    w.client.faults["SaveDraftRequest"] = [errors.FloodWaitError(request=None, capture=5)] * 100

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(1000.0)

    run(body)
    assert w.replier.counts["telegram errors"] == 1 and len(w.client.faults["SaveDraftRequest"]) > 80


@pytest.mark.parametrize(
    "error",
    [
        errors.UserIsBlockedError(request=None),
        errors.PeerIdInvalidError(request=None),
        errors.RPCError(request=None, message="SOMETHING_NEW", code=400),
    ],
    ids=["blocked", "peer-invalid", "unknown-rpc"],
)
def test_telegram_refusing_a_send_is_logged_and_the_listener_goes_on(
    make: Make, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    w = make(auto_reply=[ANNA.id])
    w.client.faults["send_message"] = [error]

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(60.0)
        await w.client.partner_says(BORIS, 1, "hello")
        await w.clock.advance(10.0)

    with caplog.at_level(logging.INFO):
        run(body)
    assert w.drafts() == [(BORIS.id, "sure, see you then")]
    assert f"chat {ANNA.id}: Telegram refused" in caplog.text and type(error).__name__ in caplog.text


@pytest.mark.parametrize(
    "error", [ConnectionError("connection reset"), TimeoutError()], ids=["reset", "timeout"]
)
@pytest.mark.parametrize("mode", ["auto", "saved"])
def test_a_send_lost_after_telegram_took_it_is_not_sent_twice(
    make: Make, error: Exception, mode: str
) -> None:
    w = make(replies=("omw\n5 min",), auto_reply=[ANNA.id] if mode == "auto" else [], mode="saved")
    w.client.faults_after["send_message"] = [error]  # the first message went out; its answer was lost
    w.client.echo_sends = True

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "where are you?")
        await w.clock.advance(120.0)

    run(body)
    expected = ["omw", "5 min"] if mode == "auto" else ["Twin's draft for Anna:\n\nomw\n5 min"]
    assert w.client.texts_sent() == expected and w.replier.actions.counts.resends_avoided == 1
    assert w.replier.counts["auto-replies" if mode == "auto" else "drafts"] == 1
    assert w.replier.counts["cancelled"] == 0 and not w.replier.paused


def test_a_send_lost_before_telegram_took_it_is_sent_again(make: Make) -> None:
    """The check looks only at messages newer than the reply's start: an older "ok" of the person's, or
    the reply's own first line, is no sign that a line went out."""
    w = make(replies=("ok\nok",), auto_reply=[ANNA.id])
    w.client.history[ANNA.id] = [message(1, ANNA.id, "ok", out=True)]
    w.client.faults["send_message"] = [ConnectionError("down"), None, ConnectionError("down")]

    async def body() -> None:
        await w.client.partner_says(ANNA, 2, "coming?")
        await w.clock.advance(120.0)

    run(body)
    assert w.client.texts_sent() == ["ok", "ok"] and w.replier.actions.counts.resends_avoided == 0
    assert w.replier.actions.counts.network_retries == 2


def test_a_session_logged_out_elsewhere_stops_the_listener(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    w = make(auto_reply=[ANNA.id])
    client = FakeClient(w.clock)  # a fresh client: `answer_chats` wires its own Replier to it
    client.faults["send_message"] = [errors.AuthKeyUnregisteredError(request=None)]
    announced: list[str] = []

    async def body() -> None:
        listening = asyncio.create_task(answer_chats(client, w.settings, w.twin, announced.append, w.clock))
        await settle()
        await client.partner_says(BORIS, 1, "coffee?")  # not auto-replied: a draft, before the send fails
        await client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(60.0)
        with pytest.raises(errors.AuthKeyUnregisteredError):
            await asyncio.wait_for(listening, timeout=2.0)
        await client.partner_says(BORIS, 2, "hello?")  # nothing listens any more
        await w.clock.advance(60.0)

    with caplog.at_level(logging.INFO):
        run(body)
    assert client.sent == [] and len(w.twin.asked) == 2 and "no longer accepts this session" in caplog.text
    assert [r.peer.id for r in client.requests if isinstance(r, functions.messages.SaveDraftRequest)] == [
        BORIS.id
    ]


def test_a_typing_indicator_that_fails_at_once_costs_nothing(make: Make) -> None:
    w = make(auto_reply=[ANNA.id])

    def broken(entity: Any, action: str) -> Any:
        raise ConnectionError("no typing today")

    w.client.action = broken  # type: ignore[method-assign]

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(60.0)

    run(body)
    assert w.client.texts_sent() == ["sure, see you then"]


def test_feedback_that_cannot_be_recorded_does_not_stop_the_listener(make: Make, tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("x")
    w = make(feedback=tmp_path / "blocker" / "feedback.jsonl")

    async def body() -> None:
        await w.client.partner_says(ANNA, 1, "hi")
        await w.clock.advance(5.0)
        await w.client.i_send(ANNA, 2, "sure, see you then")
        await w.client.partner_says(ANNA, 3, "great")  # closes the draft: the write fails
        await w.clock.advance(5.0)

    run(body)
    assert len(w.drafts()) == 2


# ---- many at once ----------------------------------------------------------------------------------------
class SlowTwin:
    """A twin that answers only when the test lets it, counting how many requests run at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.asked = 0
        self.go = asyncio.Event()

    async def suggest(self, turns: list[Turn], partner: str) -> str:
        self.asked += 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.go.wait()
            return f"hi {partner}"
        finally:
            self.running -= 1


def test_a_burst_from_many_chats_is_answered_a_few_at_a_time(make: Make) -> None:
    twin = SlowTwin()
    w = make(twin=twin)
    people = [person(1000 + i, f"P{i}") for i in range(40)]

    async def body() -> None:
        for p in people:
            for k in range(1, 4):  # a burst of three in each chat
                await w.client.partner_says(p, k, f"msg {k}")
        await w.clock.advance(5.0)
        assert 0 < twin.most <= w.settings.max_concurrent
        twin.go.set()
        for _ in range(20):
            await w.clock.advance(1.0)

    run(body)
    assert twin.asked == 40 and twin.most <= w.settings.max_concurrent
    assert sorted(chat for chat, _ in w.drafts()) == [p.id for p in people]


@pytest.mark.parametrize("size", [5_000, 200_000], ids=["long burst", "pasted book"])
def test_a_long_turns_kept_ends_are_scrubbed_and_its_question_survives(size: int) -> None:
    """A partner's turn longer than the clip keeps loses its middle, not its end: the question it ends with
    reaches the twin, and the secrets in both kept ends are scrubbed — also past the length that is
    scrubbed whole (a pasted book: its two ends alone, clipped from those ends)."""
    from reply.conversation import SCRUB_LIMIT, scrub_turn

    start = "my card is 4111 1111 1111 1111, anyway. "
    end = "call me on +44 7911 123456 — so what do you think?"
    text = start + "blah " * ((size - len(start) - len(end)) // 5) + end
    assert (len(text) > SCRUB_LIMIT) == (size > SCRUB_LIMIT)
    clipped = scrub_turn(Turn("partner", text)).text
    assert len(clipped) <= MAX_TURN_CHARS
    assert clipped.endswith("so what do you think?") and clipped.startswith("my card is")
    assert "4111" not in clipped and "7911" not in clipped and "123456" not in clipped, clipped
