"""
A session engine whose every load takes half a second, long enough for a
client to leave while its connection is being signed in.
"""
import time

from django.contrib.sessions.backends.db import SessionStore as DatabaseStore

#: Seconds each load takes.
DELAY = 0.5


class SessionStore(DatabaseStore):
    def load(self):
        time.sleep(DELAY)
        return super().load()
