"""Who may call: API keys (``keys``, hashes only), the per-request check of key and scope
(``auth``) and per-key rate limits (``ratelimit``).

May import ``shared.clients`` and the root modules (settings, errors, logs, validation);
never ``shared.web`` or another domain package.
"""
