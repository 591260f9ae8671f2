"""The `ui` stage: a Streamlit chat page that talks to the twin server over its OpenAI-style REST API.

`app.py` is the page (run it with `python -m ui`, which keeps it to this machine), `client.py` is the only
place that speaks HTTP, `chat.py` holds the conversation as data (request messages, JSON export), and
`access.py` decides who may open the page.
Nothing here imports another twin stage: the server is reached at `TWIN_API_URL` like any other client.
"""
