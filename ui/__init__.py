"""The `ui` stage: a Streamlit chat page that talks to the twin server over its OpenAI-style REST API.

`app.py` is the page (run it with `streamlit run ui/app.py` or `python -m ui`), `client.py` is the only
place that speaks HTTP, and `chat.py` holds the conversation as data (request messages, JSON export).
Nothing here imports another twin stage: the server is reached at `TWIN_API_URL` like any other client.
"""
