"""The chat page: you write as your chat partner, and your twin answers the way you would.

Run `make ui` or `python -m ui` (127.0.0.1 only; see `ui/access.py`). The history lives in
`st.session_state` and goes to the server as the OpenAI `messages` list on every turn; every HTTP call is in
`ui/client.py`. The twins come from the server's `GET /v1/models` (once per session, and again on **Check
server**); the sidebar picks one when there are several, and each twin keeps its own conversation. The
server's address and API key come from the environment (TWIN_API_URL, TWIN_API_KEY) and stay in this
Python process: no widget holds them, so the browser never receives the key, and nobody at the page can
point it (and the key) at another server.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import re
import sys
import time
from pathlib import Path

import streamlit as st
from streamlit_chat import message

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `streamlit run ui/app.py` puts ui/ on sys.path, not the repo root
    sys.path.insert(0, _ROOT)

from common.text import valid_unicode  # noqa: E402
from ui import access, chat, client  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 128
MAX_TOKENS_LIMIT = 2048
PARTNER_PLACEHOLDER = "Friend"  # what the server calls the partner when no name is given
REDRAW_S = 0.1  # a streamed reply is redrawn at most this often: each redraw sends all of it again
# (no bare strings at module level here: Streamlit's "magic" would draw them on the page)


def avatar(letter: str, color: str) -> str:
    """A round letter avatar as a data URI, so that no bubble asks a web service for a picture."""
    svg = (
        "<svg xmlns='http://www.w3.org/2000/svg' width='64' height='64'>"
        f"<circle cx='32' cy='32' r='32' fill='{color}'/>"
        "<text x='32' y='33' dominant-baseline='middle' text-anchor='middle' font-family='sans-serif' "
        f"font-size='30' fill='white'>{html.escape(letter)}</text></svg>"
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def check_access() -> None:
    """Render nothing for a browser that must not use the page (see `ui.access.refusal`)."""
    problem = access.refusal(
        st.context.headers, st.get_option("server.address"), os.environ.get(access.HOST_ENV)
    )
    if problem:
        st.error(problem)
        st.stop()


def load_server() -> client.ServerSettings:
    """Where the server is and its key, from the environment on every run; kept out of session state."""
    try:
        return client.ServerSettings.from_env()
    except ValueError as e:
        st.error(as_text(f"The page's settings are wrong: {e} Then restart the page.", strict=False))
        st.stop()


def for_page(text: str, server: client.ServerSettings) -> str:
    """`text` (an error message) for the page: the API key blanked should it ever be quoted, the
    server's address without its user:password@, and markdown in it (the server's words) escaped."""
    for url in (server.url, server.base_url):
        text = text.replace(url, shown_url(url))
    key = server.api_key.strip()
    return as_text(text.replace(key, "•••") if key else text, strict=False)


def as_code(text: str) -> str:
    """`text` as inline code when it can be (no backtick or line break in it), else as escaped text."""
    return f"`{text}`" if text and not re.search(r"[`\r\n]", text) else as_text(text)


def shown_url(url: str) -> str:
    """The server's address for the page, without a user:password@ it may carry."""
    scheme, sep, rest = url.partition("://")
    host, at, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{'/' if at else ''}{path}" if sep else url


def as_text(text: str, strict: bool = True) -> str:
    """`text` for a markdown element (bubble, error, caption), shown as the characters it is.

    Streamlit and streamlit-chat render markdown (links, images, math; HTML tags dropped), and replies,
    the server's error details and twin ids are not ours: escape what would make them anything but text,
    so that `![x](http://...)` loads nothing and `<script>` is shown, not swallowed. `strict=False` (for
    error messages) leaves `_` and backticks alone: ours say `TWIN_API_KEY` and `make serve`.
    Lone surrogates (half an emoji) become U+FFFD, which the browser can draw.
    """
    text = valid_unicode(text)
    text = re.sub(r"[\\*\[\]<>$|~_`]" if strict else r"[\\*\[\]<>$|~]", lambda m: "\\" + m[0], text)
    # block syntax at the start of a line: headings, lists, rules (quotes are escaped above)
    text = re.sub(r"(?m)^([ \t]*)([#+\-=])", r"\1\\\2", text)
    return re.sub(r"(?m)^([ \t]*\d+)([.)])", r"\1\\\2", text)


def init_state() -> None:
    """Defaults for the conversation and the sidebar's widgets."""
    state = st.session_state
    state.setdefault("history", [])  # the conversation with `talking_to`
    state.setdefault("histories", {})  # the other twins' conversations, put aside, by twin id
    state.setdefault("talking_to", None)
    state.setdefault("conversation", 0)
    state.setdefault("error", None)
    state.setdefault("partner", "")
    state.setdefault("temperature", DEFAULT_TEMPERATURE)
    state.setdefault("max_tokens", DEFAULT_MAX_TOKENS)


def new_conversation() -> None:
    st.session_state.history = []
    st.session_state.error = None
    st.session_state.conversation += 1


def ask_retry() -> None:
    st.session_state.retry = True


def forget_twins() -> None:
    """Make the next run ask the server for its twins again."""
    st.session_state.pop("twins", None)


def load_twins(server: client.ServerSettings) -> None:
    """Ask the server which twins it serves; keep the ids, or what went wrong, in the session."""
    state = st.session_state
    try:
        state.twins, state.twins_error = client.list_models(server), None
        return
    except client.TwinAPIError as e:
        problem = str(e)
    except Exception as e:  # a bug must not cost the page: say so and keep it alive
        log.exception("listing the twins failed")
        problem = f"Something went wrong ({type(e).__name__}: {e})."
    state.twins = []
    state.twins_error = (
        for_page(f"The page could not get the list of twins from the server. {problem}", server)
        + " Then press **Check server** in the sidebar to ask again."
    )


def choose_twin() -> str | None:
    """The twin to talk to: the sidebar's pick, else the server's default (its first). A twin other than
    the one the history is with puts that conversation aside and brings back this twin's own, so that
    one twin's replies are never sent to another as its own words."""
    state = st.session_state
    twins: list[str] = state.twins
    if not twins:
        return None
    if state.get("twin") not in twins:
        state.twin = twins[0]
    if state.twin != state.talking_to:
        if state.talking_to is not None:
            state.histories[state.talking_to] = state.history
        state.history = state.histories.pop(state.twin, [])
        state.talking_to = state.twin
        state.error = None
        state.conversation += 1
    return str(state.twin)


def check_server(server: client.ServerSettings) -> None:
    try:
        answer = client.check_health(server)
    except client.TwinAPIError as e:
        st.sidebar.error(for_page(str(e), server))
        return
    model, device = answer.get("model"), answer.get("device")
    where = f" (model: {model}{f' on {device}' if device else ''})" if model else ""
    st.sidebar.success(f"The server is up{where}.")


def sidebar(server: client.ServerSettings, twin: str | None) -> None:
    """Settings widgets; their values stay in `st.session_state` under their keys."""
    twins: list[str] = st.session_state.twins
    with st.sidebar:
        st.header("Settings")
        key_said = (
            "set (TWIN_API_KEY)"
            if server.api_key.strip()
            else "none (set TWIN_API_KEY if the server has one)"
        )
        twin_said = f"  \nTwin: {as_code(twin or '')}" if len(twins) == 1 else ""
        st.caption(
            f"Server: {as_code(shown_url(server.base_url))} (TWIN_API_URL)  \nAPI key: {key_said}{twin_said}"
        )
        if len(twins) > 1:
            st.selectbox("Twin", twins, key="twin", help="Who answers. Each twin keeps its own conversation.")
        st.text_input(
            "Partner's name",
            key="partner",
            placeholder=PARTNER_PLACEHOLDER,
            max_chars=128,
            help="Who you are playing. The name goes into the prompt, as in your training chats.",
        )
        st.slider("Temperature", 0.0, 2.0, step=0.05, key="temperature", help="Higher is more surprising.")
        st.number_input("Max tokens", 1, MAX_TOKENS_LIMIT, step=16, key="max_tokens", help="Longest reply.")
        st.button("New conversation", on_click=new_conversation)
        st.download_button(
            "Download conversation (JSON)",
            data=chat.export_conversation(
                st.session_state.history,
                st.session_state.partner,
                st.session_state.temperature,
                st.session_state.max_tokens,
                twin or "",
            ),
            file_name="twin-conversation.json",
            mime="application/json",
            disabled=not st.session_state.history,
            on_click="ignore",
        )
        if st.button("Check server", on_click=forget_twins, help="Also asks again which twins it serves."):
            check_server(server)


def draw_bubble(index: int, partner: str) -> None:
    turn = st.session_state.history[index]
    is_user = turn["role"] == "user"
    if is_user:
        logo = avatar((partner or PARTNER_PLACEHOLDER)[0].upper(), "#7c5cff")
    else:
        logo = avatar("T", "#ff6b4a")
    # as_text: streamlit-chat renders markdown; a bubble shows the words as they were written
    message(
        as_text(turn["content"]), is_user=is_user, logo=logo, key=f"c{st.session_state.conversation}-{index}"
    )


def reply(server: client.ServerSettings, twin: str) -> None:
    """Stream `twin`'s answer to the history; keep it on success, leave an error message otherwise."""
    state = st.session_state
    parts: list[str] = []
    placeholder = st.empty()
    try:
        with placeholder.container():
            st.caption("Your twin is typing…")
            shown, drawn = st.empty(), 0.0
            for piece in client.stream_reply(
                server,
                chat.request_messages(state.history, state.partner),
                temperature=float(state.temperature),
                max_tokens=int(state.max_tokens),
                model=twin,
            ):
                parts.append(piece)
                # not on every piece: each redraw sends the whole text to the browser again
                if time.monotonic() - drawn >= REDRAW_S:
                    shown.markdown(as_text("".join(parts)).replace("\n", "  \n"))
                    drawn = time.monotonic()
    except client.TwinAPIError as e:
        state.error = for_page(str(e), server)
        if e.status == 404:  # most likely the twin is gone from the server: list the twins again
            forget_twins()
            state.error += " Press **Check server** to see the twins the server serves now."
    except Exception as e:  # a bug must not cost the conversation: say so and keep the page alive
        log.exception("reply failed")
        state.error = for_page(
            f"Something went wrong while getting the reply ({type(e).__name__}: {e}).", server
        )
    else:
        text = valid_unicode("".join(parts)).strip()
        if text:
            state.history.append(chat.Message(role="assistant", content=text))
            st.rerun()  # redraw the streamed text as a chat bubble
        state.error = "The twin's reply was empty. Try again, or raise the temperature or max tokens."
    placeholder.empty()


def main() -> None:
    st.set_page_config(page_title="twin", page_icon="💬")
    check_access()
    server = load_server()
    init_state()
    state = st.session_state
    if not state.get("twins"):  # once per session, and until the server has answered
        load_twins(server)
    twin = choose_twin()
    sidebar(server, twin)
    partner = chat.clean_partner(state.partner)

    st.title("💬 twin")
    st.caption(
        f"You write as **{as_text(partner or PARTNER_PLACEHOLDER)}**; your twin answers the way you would."
    )
    for index in range(len(state.history)):
        draw_bubble(index, partner)

    if state.twins_error:
        st.error(state.twins_error)
    prompt = st.chat_input(f"Message from {partner or PARTNER_PLACEHOLDER}…", key="prompt", disabled=not twin)
    wanted = state.pop("retry", False)
    if prompt and prompt.strip():
        state.history.append(chat.Message(role="user", content=prompt.strip()))
        draw_bubble(len(state.history) - 1, partner)
        wanted = True
    if twin and wanted and state.history and state.history[-1]["role"] == "user":
        state.error = None
        reply(server, twin)
    # the last message may have no reply: it failed, or a rerun (another twin picked, a setting changed
    # while the reply streamed) cut it off; either way it can be asked for again
    unanswered = bool(twin and state.history and state.history[-1]["role"] == "user")
    if state.error:
        st.error(state.error)
    elif unanswered:
        st.info("Your last message has no reply yet: press **Retry**, or write another message.")
    if unanswered:
        st.button("Retry", on_click=ask_retry)


main()
