"""``polysteer serve``: an OpenAI-compatible server whose requests each carry their own steering.

Import :func:`create_app` from :mod:`polysteer.modalities.text.serve.app` (FastAPI loads only then):
``create_app(model, tokenizer, ServeConfig(...), directions={...})``.
"""
